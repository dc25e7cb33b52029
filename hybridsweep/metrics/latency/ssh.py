"""An SSH connection to a measuring device: connect with keys only, copy a file over, run a command there.

What is generic about talking to a board over paramiko, apart from what the jetson backend runs on it.

Safety: host keys are checked against a known_hosts file and an unknown host is refused (never added); only
keys authenticate (no password or keyboard-interactive prompt can stall a sweep); a command is an argv list
quoted with shlex.join, so no setting is ever spliced into a shell string.

Errors name the `latency.*` settings the connection is configured with: a mistake (known_hosts, host key, key
file, refused key) is a plain UserError, a device that does not answer is DeviceUnavailable, and a command
that outlives its time raises CommandTimeout for the caller to word.
"""

import getpass
import shlex
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from pathlib import Path

import paramiko
from paramiko.auth_strategy import AuthStrategy, InMemoryPrivateKey

from hybridsweep.errors import DeviceUnavailable, UserError

DEFAULT_KEYS = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")


def ssh_target(user: str | None, host: str, port: int) -> str:
    """user@host:port as messages show it; no user means this machine's user name."""
    return f"{user or getpass.getuser()}@{host}:{port}"


class CommandTimeout(Exception):
    """A remote command did not finish in time; its channel is closed (with a pty, that hangs the command up)."""


class RejectUnknownHost(paramiko.RejectPolicy):
    """Refuse a host missing from known_hosts, with a message that says how to verify and add it."""

    def __init__(self, known_hosts: Path):
        self.known_hosts = known_hosts

    def missing_host_key(self, client, hostname, key):
        raise UserError(
            f"latency.known_hosts: {hostname} is not in {self.known_hosts} (its {key.get_name()} key has "
            f"fingerprint {key.fingerprint}); check that fingerprint on the device (ssh-keygen -lf "
            f"/etc/ssh/ssh_host_*_key.pub), then add the host, e.g. with ssh-keyscan, to {self.known_hosts}"
        )


class KeysOnly(AuthStrategy):
    """Offer the given private keys and nothing else."""

    def __init__(self, username: str, keys: list[paramiko.PKey]):
        super().__init__(ssh_config=None)
        self.username = username
        self.keys = keys

    def get_sources(self):
        for key in self.keys:
            yield InMemoryPrivateKey(self.username, key)


def private_keys(key_file: str | None) -> list[paramiko.PKey]:
    """`key_file`'s key, or without one: ssh-agent keys, then ~/.ssh/id_ed25519, id_ecdsa, id_rsa."""
    if key_file:
        path = Path(key_file).expanduser()
        if not path.is_file():
            raise UserError(
                f"latency.key_file: {path} does not exist; point it at the private key whose public "
                "half is in ~/.ssh/authorized_keys on the device"
            )
        try:
            return [paramiko.PKey.from_path(path)]
        except paramiko.PasswordRequiredException:
            raise UserError(
                f"latency.key_file: {path} is encrypted; add it to ssh-agent (ssh-add {path}) and leave "
                "latency.key_file unset"
            ) from None
        except (paramiko.SSHException, ValueError, OSError) as exc:
            raise UserError(f"latency.key_file: cannot read {path} as a private key ({exc})") from None
    keys = list(paramiko.Agent().get_keys())
    for name in DEFAULT_KEYS:
        path = Path(name).expanduser()
        if path.is_file():
            try:
                keys.append(paramiko.PKey.from_path(path))
            except paramiko.PasswordRequiredException:
                continue  # an encrypted key can still be offered through the agent
    if not keys:
        raise UserError(
            "latency.key_file: not set, and there is no ssh-agent key nor ~/.ssh/id_ed25519, id_ecdsa "
            "or id_rsa; create a key (ssh-keygen -t ed25519), install it on the device (ssh-copy-id), "
            "or set latency.key_file"
        )
    return keys


class RemoteHost:
    """One open SSH connection: `RemoteHost.connect(...)` opens it, `close()` (or `contextlib.closing`) ends it."""

    def __init__(self, client: paramiko.SSHClient, target: str):
        self.client, self.target = client, target

    @classmethod
    def connect(
        cls, host: str, *, port: int, user: str | None, key_file: str | None, known_hosts: str, timeout_s: float
    ) -> "RemoteHost":
        """Log in with keys only, trusting the host only through `known_hosts`; `timeout_s` bounds each step."""
        target = ssh_target(user, host, port)
        known_hosts_path = Path(known_hosts).expanduser()
        if not known_hosts_path.is_file():
            raise UserError(
                f"latency.known_hosts: {known_hosts_path} does not exist; create it with the device's host key "
                "(verify the fingerprint on the device) or point latency.known_hosts at your known_hosts file"
            )
        keys = private_keys(key_file)
        client = paramiko.SSHClient()
        client.load_host_keys(str(known_hosts_path))
        client.set_missing_host_key_policy(RejectUnknownHost(known_hosts_path))
        username = user or getpass.getuser()
        try:
            client.connect(
                host,
                port=port,
                username=username,
                timeout=timeout_s,
                banner_timeout=timeout_s,
                auth_timeout=timeout_s,
                auth_strategy=KeysOnly(username, keys),
            )
        except BaseException as exc:
            client.close()
            if isinstance(exc, UserError | KeyboardInterrupt):
                raise
            raise _connect_error(exc, target, known_hosts_path, timeout_s) from exc
        return cls(client, target)

    def close(self) -> None:
        self.client.close()

    def run(self, argv: list[str], timeout_s: float, pty: bool = False) -> tuple[int, str]:
        """Exit status and combined output of `argv` on the device; CommandTimeout past `timeout_s` seconds.

        With a pty, closing the channel on a timeout hangs up the remote command instead of leaving it on.
        """
        deadline = time.monotonic() + timeout_s
        with closing(self.client.get_transport().open_session(timeout=timeout_s)) as channel:
            if pty:
                channel.get_pty(width=240)
            channel.set_combine_stderr(True)
            channel.exec_command(shlex.join(argv))
            chunks = []
            try:
                while data := _recv(channel, deadline):
                    chunks.append(data)
                if not channel.status_event.wait(max(deadline - time.monotonic(), 1.0)):
                    raise TimeoutError
            except TimeoutError:
                raise CommandTimeout(f"{argv[0]} did not finish on {self.target} within {timeout_s:g} s") from None
            return channel.recv_exit_status(), b"".join(chunks).decode("utf-8", "replace")

    @contextmanager
    def uploaded(self, local_path: Path, remote_path: str) -> Iterator[None]:
        """`local_path` copied to `remote_path` over SFTP for the duration of the block, removed after it."""
        with closing(self.client.open_sftp()) as sftp:
            sftp.put(str(local_path), remote_path)
            try:
                yield
            finally:
                with suppress(OSError, paramiko.SSHException):
                    sftp.remove(remote_path)

    def fetch(self, remote_path: str, local_path: Path) -> None:
        """`remote_path` copied here over SFTP, then removed there."""
        with closing(self.client.open_sftp()) as sftp:
            try:
                sftp.get(remote_path, str(local_path))
            finally:
                with suppress(OSError, paramiko.SSHException):
                    sftp.remove(remote_path)


def _recv(channel: paramiko.Channel, deadline: float) -> bytes:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    channel.settimeout(remaining)
    return channel.recv(1 << 16)


def _connect_error(exc: BaseException, target: str, known_hosts: Path, timeout_s: float) -> BaseException:
    if isinstance(exc, paramiko.BadHostKeyException):
        return UserError(
            f"latency.known_hosts: {target} presented a host key ({exc.key.fingerprint}) that "
            f"differs from the one in {known_hosts}; if the device was reinstalled, verify the new key "
            "on it and replace the entry, otherwise this may not be your device"
        )
    if isinstance(exc, paramiko.AuthenticationException):
        return UserError(
            f"latency.key_file: {target} refused the key(s); add the public key to "
            "~/.ssh/authorized_keys on the device, or set latency.user and latency.key_file"
        )
    if isinstance(exc, TimeoutError):
        return DeviceUnavailable(
            f"latency.host: no answer from {target} within latency.connect_timeout_s="
            f"{timeout_s:g} s; check latency.host, latency.port and that the device is on"
        )
    if isinstance(exc, OSError):
        return DeviceUnavailable(
            f"latency.host: cannot reach {target} ({exc}); check latency.host and latency.port, "
            "and that the device is on and runs sshd"
        )
    if isinstance(exc, paramiko.SSHException):
        return UserError(f"latency.host: SSH to {target} failed ({exc}); check latency.host and latency.port")
    return exc
