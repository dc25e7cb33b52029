"""Measure with the configured backend, or fall back when its device cannot measure, so a sweep keeps going.

Only DeviceUnavailable falls back: a Jetson that is off or unreachable, an SSH session or trtexec run that
fails on it, a machine without the GPU or TensorRT that `tensorrt` needs. With `fallback: lut` the trial gets
a LUT prediction instead (source="predicted", backend="lut", so its metrics never land under the measured
backend's keys) and tags that say why, and that the table was measured on another device. Configuration
mistakes (a missing known_hosts or key file, a refused key, a wrong trtexec path, bad settings) are plain
UserErrors and end the run even with a fallback: every trial would hit them, and predicting would hide them.
"""

import sys

from torch import nn

from hybridsweep.errors import DeviceUnavailable, UserError
from hybridsweep.metrics.latency import LATENCY_BACKENDS, LatencyResult
from hybridsweep.metrics.latency.lut import DEFAULT_PROFILE

FALLBACKS = ("lut", "none")


def check_fallback(fallback: str | None) -> None:
    if fallback is not None and fallback not in FALLBACKS:
        raise UserError(f"latency.fallback={fallback!r} is invalid: use lut, none or null (no fallback)")


def measure_or_fallback(
    model: nn.Module, settings: dict, *, input_shape: tuple[int, ...]
) -> tuple[LatencyResult | None, dict[str, str]]:
    """`settings` is the latency config as a plain dict: `backend`, its settings, and optionally `fallback`
    ("lut", "none", or None for no fallback) with `fallback_profile` (default: the shipped CPU profile).

    Returns the result (None when the fallback is "none") and the fallback's tags ({} when none was used).
    Only a DeviceUnavailable while measuring falls back: bad settings (of the backend or of the fallback) fail
    at once, before measuring, and any other error while measuring (a plain UserError) ends the run too.
    """
    settings = dict(settings)
    backend_name = settings.pop("backend")
    fallback = settings.pop("fallback", None)
    fallback_profile = settings.pop("fallback_profile", None) or DEFAULT_PROFILE
    check_fallback(fallback)
    predictor = None
    if fallback == "lut":
        predictor = LATENCY_BACKENDS.build("lut", profile=fallback_profile, batch_size=settings.get("batch_size", 1))
    backend = LATENCY_BACKENDS.build(backend_name, **settings)
    try:
        return backend.measure(model, input_shape=tuple(input_shape)), {}
    except DeviceUnavailable as exc:
        if fallback is None:
            raise
        reason = " ".join(str(exc).split())
        tags = {"latency.fallback": fallback, "latency.error": reason}
        if predictor is None:
            print(f"warning: latency={backend_name} failed, no latency for this trial: {reason}", file=sys.stderr)
            return None, tags
        result = predictor.measure(model, input_shape=tuple(input_shape))
        tags["latency.fallback_note"] = (
            f"predicted by profile {result.facts['profile']} measured on {result.device} "
            f"({result.facts['profile_backend']}), not on the latency={backend_name} device"
        )
        print(
            f"warning: latency={backend_name} failed, using a lut prediction for {result.device} instead: {reason}",
            file=sys.stderr,
        )
        return result, tags
