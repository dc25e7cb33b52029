"""Latency backends behind one registry: `latency=<name>` picks one, `latency.<setting>=...` configures it.

Measured backends: cpu (PyTorch eager), onnxruntime, cuda (PyTorch on a GPU), tensorrt (local GPU) and jetson
(ssh + the device's trtexec). Every result says whether it was measured or predicted, on which device and how.
"""

from torch import nn

from hybridsweep.errors import UserError
from hybridsweep.metrics.latency.cpu import CpuLatency
from hybridsweep.metrics.latency.cuda import CudaLatency
from hybridsweep.metrics.latency.jetson_settings import JetsonSettings
from hybridsweep.metrics.latency.lut import LutLatency
from hybridsweep.metrics.latency.onnxrt import OnnxRuntimeLatency
from hybridsweep.metrics.latency.result import BackendSettings, LatencyResult
from hybridsweep.metrics.latency.tensorrt import TensorRTLatency
from hybridsweep.metrics.latency.trtexec import TrtexecOutputError, parse_trtexec_summary, trtexec_command
from hybridsweep.registry import Registry

__all__ = [
    "BACKEND_SETTINGS",
    "LATENCY_BACKENDS",
    "BackendSettings",
    "LatencyResult",
    "LutLatency",
    "TrtexecOutputError",
    "measure_latency",
    "parse_trtexec_summary",
    "trtexec_command",
]


def _jetson(**settings) -> BackendSettings:
    """Imported on use: paramiko comes with the optional [jetson] extra."""
    try:
        from hybridsweep.metrics.latency.jetson import JetsonLatency
    except ImportError as exc:
        if exc.name != "paramiko":
            raise
        raise UserError("latency=jetson needs paramiko: pip install hybridsweep[jetson]") from exc
    return JetsonLatency.from_settings(**settings)


# Each backend's settings dataclass: its fields are the `latency.*` settings, with their types and defaults, from
# which the config schema of conf/latency/<name>.yaml is built (hybridsweep.config.latency_schemas).
BACKEND_SETTINGS: dict[str, type[BackendSettings]] = {
    "cpu": CpuLatency,
    "onnxruntime": OnnxRuntimeLatency,
    "cuda": CudaLatency,
    "tensorrt": TensorRTLatency,
    "jetson": JetsonSettings,
    "lut": LutLatency,
}
LATENCY_BACKENDS: Registry[BackendSettings] = Registry("latency backend", "latency")
LATENCY_BACKENDS.register("cpu")(CpuLatency.from_settings)
LATENCY_BACKENDS.register("onnxruntime")(OnnxRuntimeLatency.from_settings)
LATENCY_BACKENDS.register("cuda")(CudaLatency.from_settings)
LATENCY_BACKENDS.register("tensorrt")(TensorRTLatency.from_settings)
LATENCY_BACKENDS.register("jetson")(_jetson)
LATENCY_BACKENDS.register("lut")(LutLatency.from_settings)


def measure_latency(
    model: nn.Module, backend_name: str, *, input_shape: tuple[int, ...], **settings
) -> LatencyResult:
    """Build backend `backend_name` from `settings` and measure `model` on one sample shape (C, H, W)."""
    return LATENCY_BACKENDS.build(backend_name, **settings).measure(model, input_shape=tuple(input_shape))
