"""The `lut` latency backend: a prediction from a calibrated profile (source="predicted"), never a measurement.

It stands in where measuring is slow or the device is out of reach (a sweep's screen, a fallback when the
Jetson does not answer); the result names the profile and the device the table was measured on. See
`profile.py` for how the prediction is made and `hybridsweep.calibration` for how a profile is built.
"""

from dataclasses import dataclass

from torch import nn

from hybridsweep.metrics.latency.profile import load_profile
from hybridsweep.metrics.latency.result import BackendSettings, LatencyResult, invalid

DEFAULT_PROFILE = "cpu-resnet-1thread"


@dataclass(frozen=True)
class LutLatency(BackendSettings):
    """Predicts from a calibrated profile; the result says predicted, and on which device the table was measured."""

    name = "lut"
    profile: str = DEFAULT_PROFILE
    batch_size: int = 1

    def __post_init__(self):
        table = load_profile(self.profile)
        if self.batch_size != table.batch_size:
            raise invalid(
                "batch_size",
                self.batch_size,
                f"profile {table.name!r} was measured at batch {table.batch_size}; use that or calibrate another",
            )

    def measure(self, model: nn.Module, *, input_shape: tuple[int, ...]) -> LatencyResult:
        return load_profile(self.profile).predict(model, input_shape)
