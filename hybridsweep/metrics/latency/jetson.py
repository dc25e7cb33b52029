"""Latency measured on an NVIDIA Jetson over SSH: export ONNX here, run the device's own trtexec there.

Our package cannot run on the TX2 (JetPack 4.6: Python 3.6, TensorRT 8.2), so the device needs only sshd and
trtexec. The ONNX file is copied over SFTP, trtexec builds and times an engine, and its performance summary is
parsed; the device's model, L4T release, power mode and TensorRT version go into the facts.

Safety: host keys are checked against a known_hosts file and an unknown host is refused (never added);
only keys authenticate (no password or keyboard-interactive prompt can stall a sweep); the remote command is
an argv list quoted with shlex.join, so no setting is ever spliced into a shell string.

Results are cached by ONNX content + trtexec flags + host, and a per-host lock file keeps measurements on
one device one at a time from this machine: two engines timed at once would slow each other down.

Errors: a device that does not answer, an SSH session that breaks, a remote command that times out and a
trtexec run that fails or prints no summary raise DeviceUnavailable (a `latency.fallback` may absorb them);
configuration mistakes (known_hosts, host key, key file, refused key, trtexec not found, remote_dir, bad
settings) raise a plain UserError, which ends the run even with a fallback.
"""

import getpass
import posixpath
import re
import shlex
import tempfile
import time
from contextlib import closing, suppress
from dataclasses import asdict, dataclass
from pathlib import Path

import paramiko
import torch
from paramiko.auth_strategy import AuthStrategy, InMemoryPrivateKey
from torch import nn

from hybridsweep.cache import Cache, digest, file_digest, file_lock
from hybridsweep.errors import DeviceUnavailable, UserError
from hybridsweep.export import export_onnx
from hybridsweep.metrics.latency.jetson_settings import JetsonSettings
from hybridsweep.metrics.latency.result import LatencyResult, batch_shape
from hybridsweep.metrics.latency.trtexec import (
    TrtexecOutputError,
    describe_output,
    parse_trtexec_summary,
    trtexec_command,
)

NAMESPACE = "latency-jetson"
DEFAULT_KEYS = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")
# What each fact is read from on the device; any of them may be missing (not a Jetson, no dpkg, no nvpmodel).
FACT_COMMANDS = {
    "l4t": ["cat", "/etc/nv_tegra_release"],
    "device_model": ["cat", "/proc/device-tree/model"],
    "power_mode": ["nvpmodel", "-q"],
    "tensorrt": ["dpkg-query", "-W", "-f=${Version}", "tensorrt"],
}


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


@dataclass(frozen=True)
class JetsonLatency(JetsonSettings):
    """The backend: its settings and their checks are JetsonSettings'."""

    @property
    def target(self) -> str:
        return f"{self.user or getpass.getuser()}@{self.host}:{self.port}"

    def measure(self, model: nn.Module, *, input_shape: tuple[int, ...]) -> LatencyResult:
        """Served from the cache when this model was measured with these flags on this host before."""
        opset = self.opset or (13 if self.trt_major == 8 else 17)
        # TensorRT 11 has no --fp16: networks are strongly typed, so FP16 must be in the ONNX file itself.
        onnx_dtype = torch.float16 if self.precision == "fp16" and self.trt_major >= 11 else torch.float32
        cache = Cache(self.cache_dir)
        with tempfile.TemporaryDirectory(prefix="hybridsweep-jetson-") as tmp:
            onnx_path = export_onnx(
                model,
                Path(tmp) / "model.onnx",
                input_shape=batch_shape(input_shape, self.batch_size),
                opset=opset,
                dynamic_batch=False,
                dtype=onnx_dtype,
            )
            onnx_sha = file_digest(onnx_path)
            remote_onnx = posixpath.join(self.remote_dir, f"{onnx_sha[:24]}.onnx")
            argv = trtexec_command(
                self.trtexec,
                remote_onnx,
                precision=self.precision,
                workspace_mb=self.workspace_mb,
                trt_major=self.trt_major,
                warmup_ms=self.warmup_ms,
                duration_s=self.duration_s,
                iterations=self.iterations,
            )

            def measure_on_device() -> dict:
                with file_lock(cache.root / NAMESPACE / f"host-{digest(self.host, self.port)}.lock"):
                    result = self._run_trtexec(onnx_path, remote_onnx, argv, opset)
                return asdict(result)

            record = cache.get_or_build(NAMESPACE, digest(onnx_sha, argv, self.host, self.port), measure_on_device)
        return LatencyResult(**record)

    def _run_trtexec(self, onnx_path: Path, remote_onnx: str, argv: list[str], opset: int) -> LatencyResult:
        with closing(self._connect()) as client:
            try:
                status, output = self._copy_and_run(client, onnx_path, remote_onnx, argv)
                facts = self._device_facts(client) if status == 0 else {}
            except PermissionError as exc:  # SFTP refused the write: remote_dir belongs to someone else
                raise UserError(
                    f"latency.remote_dir: cannot write {remote_onnx} on {self.target} ({exc}); set "
                    "latency.remote_dir to a folder the SSH user may write to"
                ) from exc
            except (paramiko.SSHException, OSError) as exc:
                raise DeviceUnavailable(
                    f"latency.host: the SSH session with {self.target} failed while measuring ({exc}); "
                    "check the device and latency.remote_dir, then run again"
                ) from exc
        if status == 127:
            raise UserError(
                f"latency.trtexec: {self.trtexec} not found on {self.target}; set latency.trtexec to "
                "trtexec's path there (JetPack: /usr/src/tensorrt/bin/trtexec)"
            )
        if status == 126:  # the shell found the path but cannot execute it: a folder or a non-executable file
            raise UserError(
                f"latency.trtexec: {self.trtexec} on {self.target} cannot be executed "
                f"({describe_output(output)}); set latency.trtexec to trtexec's path there "
                "(JetPack: /usr/src/tensorrt/bin/trtexec)"
            )
        if status != 0:
            raise DeviceUnavailable(
                f"latency.trtexec: trtexec exited with status {status} on {self.target} "
                f"({describe_output(output)}); check latency.precision, latency.trt_major and latency.opset"
            )
        try:
            summary = parse_trtexec_summary(output)
        except TrtexecOutputError as exc:
            raise DeviceUnavailable(f"latency.trtexec: {self.trtexec} on {self.target}: {exc}") from exc
        facts = {
            "host": f"{self.host}:{self.port}",
            "precision": self.precision,
            "opset": str(opset),
            "trtexec_flags": shlex.join(argv[2:]),
            **facts,
        }
        return summary.to_result(
            backend=self.name,
            device=facts.get("device_model", self.host),
            batch_size=self.batch_size,
            facts=facts,
        )

    def _copy_and_run(
        self, client: paramiko.SSHClient, onnx_path: Path, remote_onnx: str, argv: list[str]
    ) -> tuple[int, str]:
        status, output = self._run(client, ["mkdir", "-p", self.remote_dir], "connect_timeout_s")
        if status != 0:
            raise UserError(
                f"latency.remote_dir: cannot create {self.remote_dir} on {self.target}: {describe_output(output)}"
            )
        with closing(client.open_sftp()) as sftp:
            sftp.put(str(onnx_path), remote_onnx)
            try:
                return self._run(client, argv, "timeout_s", pty=True)
            finally:
                with suppress(OSError, paramiko.SSHException):
                    sftp.remove(remote_onnx)

    def _private_keys(self) -> list[paramiko.PKey]:
        if self.key_file:
            path = Path(self.key_file).expanduser()
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

    def _connect(self) -> paramiko.SSHClient:
        known_hosts = Path(self.known_hosts).expanduser()
        if not known_hosts.is_file():
            raise UserError(
                f"latency.known_hosts: {known_hosts} does not exist; create it with the device's host key "
                "(verify the fingerprint on the device) or point latency.known_hosts at your known_hosts file"
            )
        keys = self._private_keys()
        client = paramiko.SSHClient()
        client.load_host_keys(str(known_hosts))
        client.set_missing_host_key_policy(RejectUnknownHost(known_hosts))
        user = self.user or getpass.getuser()
        try:
            client.connect(
                self.host,
                port=self.port,
                username=user,
                timeout=self.connect_timeout_s,
                banner_timeout=self.connect_timeout_s,
                auth_timeout=self.connect_timeout_s,
                auth_strategy=KeysOnly(user, keys),
            )
        except BaseException as exc:
            client.close()
            if isinstance(exc, UserError | KeyboardInterrupt):
                raise
            raise self._connect_error(exc, known_hosts) from exc
        return client

    def _connect_error(self, exc: BaseException, known_hosts: Path) -> BaseException:
        if isinstance(exc, paramiko.BadHostKeyException):
            return UserError(
                f"latency.known_hosts: {self.target} presented a host key ({exc.key.fingerprint}) that "
                f"differs from the one in {known_hosts}; if the device was reinstalled, verify the new key "
                "on it and replace the entry, otherwise this may not be your device"
            )
        if isinstance(exc, paramiko.AuthenticationException):
            return UserError(
                f"latency.key_file: {self.target} refused the key(s); add the public key to "
                "~/.ssh/authorized_keys on the device, or set latency.user and latency.key_file"
            )
        if isinstance(exc, TimeoutError):
            return DeviceUnavailable(
                f"latency.host: no answer from {self.target} within latency.connect_timeout_s="
                f"{self.connect_timeout_s:g} s; check latency.host, latency.port and that the device is on"
            )
        if isinstance(exc, OSError):
            return DeviceUnavailable(
                f"latency.host: cannot reach {self.target} ({exc}); check latency.host and latency.port, "
                "and that the device is on and runs sshd"
            )
        if isinstance(exc, paramiko.SSHException):
            return UserError(f"latency.host: SSH to {self.target} failed ({exc}); check latency.host and latency.port")
        return exc

    def _run(self, client: paramiko.SSHClient, argv: list[str], setting: str, pty: bool = False) -> tuple[int, str]:
        """Exit status and combined output of `argv` on the device, within the `latency.<setting>` seconds.

        With a pty, closing the channel on a timeout hangs up the remote command instead of leaving it on.
        """
        timeout_s = getattr(self, setting)
        deadline = time.monotonic() + timeout_s
        with closing(client.get_transport().open_session(timeout=timeout_s)) as channel:
            if pty:
                channel.get_pty(width=240)
            channel.set_combine_stderr(True)
            channel.exec_command(shlex.join(argv))
            chunks = []
            try:
                while data := self._recv(channel, deadline):
                    chunks.append(data)
                if not channel.status_event.wait(max(deadline - time.monotonic(), 1.0)):
                    raise TimeoutError
            except TimeoutError:
                raise DeviceUnavailable(
                    f"latency.{setting}: {argv[0]} did not finish on {self.target} within {timeout_s:g} s; "
                    f"raise latency.{setting} or check the device"
                ) from None
            return channel.recv_exit_status(), b"".join(chunks).decode("utf-8", "replace")

    @staticmethod
    def _recv(channel: paramiko.Channel, deadline: float) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        channel.settimeout(remaining)
        return channel.recv(1 << 16)

    def _device_facts(self, client: paramiko.SSHClient) -> dict[str, str]:
        """What makes a Jetson number reproducible; each fact is optional (a missing one is left out)."""
        facts = {}
        for fact, argv in FACT_COMMANDS.items():
            try:
                status, output = self._run(client, argv, "connect_timeout_s")
            except (UserError, paramiko.SSHException, OSError):
                continue
            if status == 0 and (value := _read_fact(fact, output)):
                facts[fact] = value
        return facts


def _read_fact(fact: str, output: str) -> str | None:
    text = output.replace("\x00", "").strip()
    if fact == "l4t" and (match := re.search(r"R(\d+) \(release\), REVISION: ([\d.]+)", text)):
        return f"R{match[1]}.{match[2]}"
    if fact == "power_mode" and (match := re.search(r"NV Power Mode:\s*(\S+)", text)):
        return match[1]
    first_line = text.splitlines()[0].strip() if text else ""
    return first_line or None
