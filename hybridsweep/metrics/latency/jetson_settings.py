"""The `latency=jetson` settings, apart from the backend (jetson.py): that one needs paramiko, an optional extra,
while the config schema and the check of command-line keys are built from these fields on every machine."""

from dataclasses import dataclass

from hybridsweep.errors import UserError
from hybridsweep.metrics.latency.result import BackendSettings, invalid
from hybridsweep.metrics.latency.trtexec import check_trtexec_settings


@dataclass(frozen=True)
class JetsonSettings(BackendSettings):
    name = "jetson"
    host: str | None = None  # required: the Jetson's address
    port: int = 22
    user: str | None = None  # None: this machine's user name
    key_file: str | None = None  # None: ssh-agent keys, then ~/.ssh/id_ed25519, id_ecdsa, id_rsa
    known_hosts: str = "~/.ssh/known_hosts"  # the device's host key must be in it; unknown hosts are refused
    trtexec: str = "/usr/src/tensorrt/bin/trtexec"
    remote_dir: str = "/tmp/hybridsweep"
    precision: str = "fp16"  # fp16 | fp32
    workspace_mb: int = 1024
    trt_major: int = 8  # TensorRT major version on the device: 8 (JetPack 4.6/5), 10, 11
    opset: int | None = None  # None: 13 for TensorRT 8 (its ONNX parser stops there), 17 after
    batch_size: int = 1
    warmup_ms: int = 500
    duration_s: int = 5
    iterations: int = 100
    timeout_s: float = 900.0  # the whole trtexec run: engine building on a TX2 takes minutes
    connect_timeout_s: float = 15.0
    cache_dir: str = "~/.cache/hybridsweep"  # results cached by ONNX content + flags + host

    def __post_init__(self):
        if not self.host:
            raise UserError("latency.host is not set; set latency.host=<address of the Jetson>")
        if not 0 < self.port < 65536:
            raise invalid("port", self.port, "use the device's SSH port, 22 unless changed")
        check_trtexec_settings(precision=self.precision, workspace_mb=self.workspace_mb, trt_major=self.trt_major)
        for setting in ("batch_size", "duration_s", "iterations", "timeout_s", "connect_timeout_s"):
            if getattr(self, setting) <= 0:
                raise invalid(setting, getattr(self, setting), "use a positive number")
