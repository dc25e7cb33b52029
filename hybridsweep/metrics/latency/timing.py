"""The one measuring loop shared by the cpu, onnxruntime, cuda and tensorrt backends.

Warm-up runs come first (caches, allocator, cuDNN and TensorRT tactics). Then timed runs come in rounds until
the median of the last round is within `rel_tol` of the round before, or `max_runs` is reached. Statistics
cover every timed run, and whether the loop converged goes into the facts, so a noisy machine shows up in
the report instead of hiding in the numbers.
"""

import copy
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hybridsweep.metrics.latency.result import BackendSettings, LatencyResult, batch_shape, invalid


def measure_loop(
    time_once: Callable[[], float], *, warmup: int, round_runs: int, max_runs: int, rel_tol: float
) -> tuple[list[float], bool]:
    """Milliseconds of every timed run, and whether two consecutive round medians agreed within `rel_tol`."""
    for _ in range(warmup):
        time_once()
    samples: list[float] = []
    previous = None
    while len(samples) + round_runs <= max_runs:
        this_round = [time_once() for _ in range(round_runs)]
        samples.extend(this_round)
        median = statistics.median(this_round)
        if previous is not None and abs(median - previous) <= rel_tol * previous:
            return samples, True
        previous = median
    return samples, False


def summarize(
    samples_ms: list[float], *, backend: str, device: str, batch_size: int, facts: dict[str, str]
) -> LatencyResult:
    values = np.asarray(samples_ms, dtype=np.float64)
    return LatencyResult(
        median_ms=float(np.median(values)),
        p90_ms=float(np.percentile(values, 90)),
        mean_ms=float(values.mean()),
        std_ms=float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        runs=len(values),
        batch_size=batch_size,
        backend=backend,
        device=device,
        source="measured",
        facts=facts,
    )


def wall_clock(run: Callable[[], object]) -> Callable[[], float]:
    """Host time of one synchronous run, in ms: right for CPU work, which is done when `run` returns."""

    def time_once() -> float:
        start = time.perf_counter()
        run()
        return (time.perf_counter() - start) * 1e3

    return time_once


def cuda_events(run: Callable[[], object], stream: torch.cuda.Stream) -> Callable[[], float]:
    """GPU time of one run enqueued on `stream`, in ms, from CUDA events (a host timer sees the launch)."""
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)

    def time_once() -> float:
        start.record(stream)
        run()
        end.record(stream)
        end.synchronize()
        return start.elapsed_time(end)

    return time_once


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def inference_copy(
    model: nn.Module, device: str | torch.device, dtype: torch.dtype | None = None
) -> nn.Module:
    """An eval-mode copy on `device`, so measuring never moves, casts or switches the caller's model."""
    copied = copy.deepcopy(model).to(device)
    if dtype is not None:
        copied = copied.to(dtype)
    return copied.eval()


def random_input(
    shape: tuple[int, ...], device: str | torch.device = "cpu", dtype=torch.float32
) -> torch.Tensor:
    """A fixed random batch: latency must not depend on the data, but a seeded input keeps runs comparable."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)


@dataclass(frozen=True)
class TimedBackend(BackendSettings):
    """Settings every timed backend shares: the batch, and how long the loop runs."""

    batch_size: int = 1
    warmup: int = 10
    round_runs: int = 20
    max_runs: int = 1000
    rel_tol: float = 0.02

    def __post_init__(self):
        for setting in ("batch_size", "round_runs"):
            if getattr(self, setting) < 1:
                raise invalid(setting, getattr(self, setting), "use a positive integer")
        if self.warmup < 0:
            raise invalid("warmup", self.warmup, "use 0 or more warm-up runs")
        if self.max_runs < 2 * self.round_runs:
            needed = 2 * self.round_runs
            raise invalid(
                "max_runs",
                self.max_runs,
                f"the loop needs two rounds: use at least 2 x round_runs = {needed}",
            )
        if not 0 < self.rel_tol < 1:
            raise invalid("rel_tol", self.rel_tol, "use a fraction between 0 and 1, e.g. 0.02 for 2%")

    def batch_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return batch_shape(input_shape, self.batch_size)

    def timed(self, time_once: Callable[[], float], *, device: str, facts: dict[str, str]) -> LatencyResult:
        samples, converged = measure_loop(
            time_once,
            warmup=self.warmup,
            round_runs=self.round_runs,
            max_runs=self.max_runs,
            rel_tol=self.rel_tol,
        )
        facts = {**facts, "converged": "yes" if converged else f"no (stopped at max_runs={self.max_runs})"}
        return summarize(samples, backend=self.name, device=device, batch_size=self.batch_size, facts=facts)
