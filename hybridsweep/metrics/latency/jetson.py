"""Latency measured on an NVIDIA Jetson over SSH: export ONNX here, run the device's own trtexec there.

Our package cannot run on the TX2 (JetPack 4.6: Python 3.6, TensorRT 8.2), so the device needs only sshd and
trtexec. The ONNX file is copied over SFTP, trtexec builds and times an engine, and its performance summary is
parsed; the device's model, L4T release, power mode and TensorRT version go into the facts. `build_engine` runs
the same command with --saveEngine and copies the engine back (`task=export export.engine=jetson`).

The connection (known_hosts checked, keys only, argv quoted, never a shell string) is `ssh.RemoteHost`.

Results are cached by ONNX content + trtexec flags + host, and a per-host lock file keeps measurements on
one device one at a time from this machine: two engines timed at once would slow each other down.

Errors: a device that does not answer, an SSH session that breaks, a remote command that times out and a
trtexec run that fails or prints no summary raise DeviceUnavailable (a `latency.fallback` may absorb them);
configuration mistakes (known_hosts, host key, key file, refused key, trtexec not found, remote_dir, bad
settings) raise a plain UserError, which ends the run even with a fallback.
"""

import posixpath
import re
import shlex
import tempfile
from contextlib import closing, suppress
from dataclasses import asdict, dataclass
from pathlib import Path

import paramiko
import torch
from torch import nn

from hybridsweep.cache import Cache, digest, file_digest, file_lock
from hybridsweep.errors import DeviceUnavailable, UserError
from hybridsweep.export import export_onnx
from hybridsweep.metrics.latency.jetson_settings import JetsonSettings
from hybridsweep.metrics.latency.result import LatencyResult
from hybridsweep.metrics.latency.ssh import CommandTimeout, RemoteHost, ssh_target
from hybridsweep.metrics.latency.trtexec import (
    TrtexecOutputError,
    describe_output,
    parse_trtexec_summary,
    trtexec_command,
)

NAMESPACE = "latency-jetson"
# What each fact is read from on the device; any of them may be missing (not a Jetson, no dpkg, no nvpmodel).
FACT_COMMANDS = {
    "l4t": ["cat", "/etc/nv_tegra_release"],
    "device_model": ["cat", "/proc/device-tree/model"],
    "power_mode": ["nvpmodel", "-q"],
    "tensorrt": ["dpkg-query", "-W", "-f=${Version}", "tensorrt"],
}


@dataclass(frozen=True)
class JetsonLatency(JetsonSettings):
    """The backend: its settings and their checks are JetsonSettings'."""

    @property
    def target(self) -> str:
        return ssh_target(self.user, self.host, self.port)

    def measure(self, model: nn.Module, *, input_shape: tuple[int, ...]) -> LatencyResult:
        """Served from the cache when this model was measured with these flags on this host before."""
        cache = Cache(self.cache_dir)
        with tempfile.TemporaryDirectory(prefix="hybridsweep-jetson-") as tmp:
            onnx_path, opset = self._export(model, input_shape, Path(tmp))
            onnx_sha = file_digest(onnx_path)
            remote_onnx = posixpath.join(self.remote_dir, f"{onnx_sha[:24]}.onnx")
            argv = self._trtexec_argv(remote_onnx)

            def measure_on_device() -> dict:
                with file_lock(self._host_lock(cache)):
                    result = self._run_trtexec(onnx_path, remote_onnx, argv, opset)
                return asdict(result)

            record = cache.get_or_build(NAMESPACE, digest(onnx_sha, argv, self.host, self.port), measure_on_device)
        return LatencyResult(**record)

    def build_engine(self, model: nn.Module, *, input_shape: tuple[int, ...], out_path: Path) -> dict[str, str]:
        """Build `model`'s engine on the device with its own trtexec (an engine runs only on the TensorRT and
        GPU that built it) and copy it to `out_path`. Returns the device's facts, with the engine's median
        latency there (`device_median_ms`), since trtexec times what it builds."""
        with tempfile.TemporaryDirectory(prefix="hybridsweep-jetson-") as tmp:
            onnx_path, opset = self._export(model, input_shape, Path(tmp))
            remote_onnx = posixpath.join(self.remote_dir, f"{file_digest(onnx_path)[:24]}.onnx")
            remote_engine = remote_onnx.removesuffix(".onnx") + ".engine"
            argv = [*self._trtexec_argv(remote_onnx), f"--saveEngine={remote_engine}"]
            with file_lock(self._host_lock(Cache(self.cache_dir))):
                result = self._run_trtexec(onnx_path, remote_onnx, argv, opset, fetch=(remote_engine, out_path))
        return {**result.facts, "device_median_ms": f"{result.median_ms:.4g}"}

    def _export(self, model: nn.Module, input_shape: tuple[int, ...], folder: Path) -> tuple[Path, int]:
        opset = self.opset or (13 if self.trt_major == 8 else 17)
        # TensorRT 11 has no --fp16: networks are strongly typed, so FP16 must be in the ONNX file itself.
        onnx_dtype = torch.float16 if self.precision == "fp16" and self.trt_major >= 11 else torch.float32
        path = export_onnx(model, folder / "model.onnx", input_shape=input_shape, batch_size=self.batch_size,
                           opset=opset, dynamic_batch=False, dtype=onnx_dtype)
        return path, opset

    def _trtexec_argv(self, remote_onnx: str) -> list[str]:
        return trtexec_command(self.trtexec, remote_onnx, precision=self.precision, workspace_mb=self.workspace_mb,
                               trt_major=self.trt_major, warmup_ms=self.warmup_ms, duration_s=self.duration_s,
                               iterations=self.iterations)

    def _host_lock(self, cache: Cache) -> Path:
        """One measurement or build on a device at a time from this machine."""
        return cache.root / NAMESPACE / f"host-{digest(self.host, self.port)}.lock"

    def _run_trtexec(self, onnx_path: Path, remote_onnx: str, argv: list[str], opset: int,
                     fetch: tuple[str, Path] | None = None) -> LatencyResult:
        """Copy the ONNX file, run `argv`, read the summary; `fetch` (remote, local) copies a file trtexec wrote
        back here and removes it there, also when trtexec exited with an error after writing it."""
        with closing(self._connect()) as device:
            try:
                status, output = self._copy_and_run(device, onnx_path, remote_onnx, argv)
                facts = self._device_facts(device) if status == 0 else {}
                if status == 0 and fetch is not None:
                    device.fetch(*fetch)
                elif fetch is not None:
                    with suppress(DeviceUnavailable, paramiko.SSHException, OSError):  # trtexec's error is the one
                        self._run(device, ["rm", "-f", fetch[0]], "connect_timeout_s")
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

    def _connect(self) -> RemoteHost:
        return RemoteHost.connect(
            self.host,
            port=self.port,
            user=self.user,
            key_file=self.key_file,
            known_hosts=self.known_hosts,
            timeout_s=self.connect_timeout_s,
        )

    def _copy_and_run(self, device: RemoteHost, onnx_path: Path, remote_onnx: str, argv: list[str]) -> tuple[int, str]:
        status, output = self._run(device, ["mkdir", "-p", self.remote_dir], "connect_timeout_s")
        if status != 0:
            raise UserError(
                f"latency.remote_dir: cannot create {self.remote_dir} on {self.target}: {describe_output(output)}"
            )
        with device.uploaded(onnx_path, remote_onnx):
            return self._run(device, argv, "timeout_s", pty=True)

    def _run(self, device: RemoteHost, argv: list[str], setting: str, pty: bool = False) -> tuple[int, str]:
        """Exit status and combined output of `argv` on the device, within the `latency.<setting>` seconds."""
        timeout_s = getattr(self, setting)
        try:
            return device.run(argv, timeout_s, pty=pty)
        except CommandTimeout:
            raise DeviceUnavailable(
                f"latency.{setting}: {argv[0]} did not finish on {self.target} within {timeout_s:g} s; "
                f"raise latency.{setting} or check the device"
            ) from None

    def _device_facts(self, device: RemoteHost) -> dict[str, str]:
        """What makes a Jetson number reproducible; each fact is optional (a missing one is left out)."""
        facts = {}
        for fact, argv in FACT_COMMANDS.items():
            try:
                status, output = self._run(device, argv, "connect_timeout_s")
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
