"""The contract of a latency backend: how it is built from settings, and the record it returns.

`source` is "measured" (timed on real hardware) or "predicted" (estimated, e.g. from a lookup table), so a
report can never pass an estimate off as a measurement. `facts` carries what makes a number reproducible
(device model, L4T release, TensorRT version, power mode, threads); it goes to the tracker as tags.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import ClassVar

from torch import nn

from hybridsweep.errors import UserError

SOURCES = ("measured", "predicted")


@dataclass(frozen=True)
class LatencyResult:
    """Latency of one forward pass of a batch, in milliseconds."""

    median_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float | None  # None where the tool reports no spread (trtexec's summary has none)
    runs: int
    batch_size: int
    backend: str
    device: str
    source: str
    facts: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"LatencyResult.source must be one of {SOURCES}, got {self.source!r}")

    def as_metrics(self, prefix: str = "latency") -> dict[str, float]:
        """Numbers for the tracker; a batch other than 1 gets its own keys, so both can be logged together."""
        base = f"{prefix}/{self.backend}" + ("" if self.batch_size == 1 else f"/batch{self.batch_size}")
        return {
            f"{base}/median_ms": self.median_ms,
            f"{base}/p90_ms": self.p90_ms,
            f"{base}/mean_ms": self.mean_ms,
        }

    def as_record(self) -> dict:
        """Plain values (for the cache): `from_record` rebuilds the result."""
        record = {f.name: getattr(self, f.name) for f in fields(self)}
        return record | {"facts": {str(k): str(v) for k, v in self.facts.items()}}

    @classmethod
    def from_record(cls, record: Mapping) -> "LatencyResult":
        return cls(**record)

    def as_tags(self) -> dict[str, str]:
        """How the numbers were obtained, as tracker tags: backend, device, source, and the facts."""
        tags = {"latency.backend": self.backend, "latency.device": self.device, "latency.source": self.source}
        tags.update({f"latency.{key}": str(value) for key, value in self.facts.items()})
        return tags


def invalid(setting: str, value: object, expected: str) -> UserError:
    """A one-line error for a bad `latency.<setting>` value that says what would be accepted."""
    return UserError(f"latency.{setting}={value!r} is invalid: {expected}")


@dataclass(frozen=True)
class BackendSettings:
    """Base of the backends: a frozen set of `latency.*` settings plus `measure`.

    Building through `from_settings` turns a misspelt setting into a one-line error listing the real ones,
    instead of a TypeError from deep inside a sweep.
    """

    name: ClassVar[str]

    @classmethod
    def from_settings(cls, **settings):
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise UserError(
                f"latency.{unknown[0]} is not a setting of latency={cls.name}; "
                f"its settings are: {', '.join(known)}"
            )
        return cls(**settings)

    def measure(self, model: nn.Module, *, input_shape: tuple[int, ...]) -> LatencyResult:
        """`input_shape` is one sample's (C, H, W); a backend prepends its own `latency.batch_size`."""
        raise NotImplementedError

    def measure_many(
        self, models: Mapping[str, nn.Module], *, input_shape: tuple[int, ...]
    ) -> dict[str, "LatencyResult"]:
        """One model after another: right for a dedicated device (a Jetson) or a prediction; the timed local
        backends override this with one interleaved pass, so load on this machine slows all models alike."""
        return {label: self.measure(model, input_shape=input_shape) for label, model in models.items()}
