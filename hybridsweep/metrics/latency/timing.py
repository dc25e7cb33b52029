"""The one measuring loop shared by the cpu, onnxruntime, cuda and tensorrt backends.

Other work on the machine can only slow a run down, never speed it up. So timed runs come in rounds, and the
figure kept is the median of the fastest round: load inflates the plain median, much less this one. Several
models are measured interleaved (round 1 of each, then round 2 of each, ...), so a busy spell slows all of
them alike instead of one model's whole measurement. Rounds go on until the two fastest round medians agree
within `rel_tol` (at least `min_rounds`), or `max_runs` per model is reached. `converged` says yes only when
those rounds agreed and the p90 of all runs stays within `P90_FACTOR` of the kept median; the load average
during the measurement goes into the facts, so a noisy machine shows in the report instead of in the numbers.
"""

import copy
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hybridsweep.metrics.latency.result import BackendSettings, LatencyResult, invalid
from hybridsweep.shapes import batch_shape

P90_FACTOR = 1.5  # converged needs p90(all runs) <= P90_FACTOR x the kept median
STATISTIC = "median of the fastest round"


def load_average() -> float | None:
    """The 1-minute load average (None where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _rounds_agree(rounds: list[list[float]], rel_tol: float) -> bool:
    if len(rounds) < 2:
        return False
    best, second = sorted(statistics.median(r) for r in rounds)[:2]
    return second - best <= rel_tol * best


def measure_rounds(
    timers: Mapping[str, Callable[[], float]],
    *,
    warmup: int,
    round_runs: int,
    max_runs: int,
    rel_tol: float,
    min_rounds: int = 3,
) -> dict[str, list[list[float]]]:
    """Milliseconds of every timed run, per label and per round, the labels' rounds interleaved (the order
    rotates each round, so no model always runs right after another)."""
    labels = list(timers)
    for label in labels:
        for _ in range(warmup):
            timers[label]()
    rounds: dict[str, list[list[float]]] = {label: [] for label in labels}
    done = 0
    while (done + 1) * round_runs <= max_runs:
        shift = done % len(labels)
        for label in labels[shift:] + labels[:shift]:
            rounds[label].append([timers[label]() for _ in range(round_runs)])
        done += 1
        if done >= max(min_rounds, 2) and all(_rounds_agree(rounds[label], rel_tol) for label in labels):
            break
    return rounds


def summarize(
    rounds: list[list[float]],
    *,
    rel_tol: float,
    backend: str,
    device: str,
    batch_size: int,
    facts: dict[str, str],
) -> LatencyResult:
    values = np.asarray([v for r in rounds for v in r], dtype=np.float64)
    kept = min(statistics.median(r) for r in rounds)
    p90 = float(np.percentile(values, 90))
    if not _rounds_agree(rounds, rel_tol):
        converged = f"no (the two fastest of {len(rounds)} rounds differ by more than {rel_tol:.0%})"
    elif p90 > P90_FACTOR * kept:
        converged = f"no (p90 is {p90 / kept:.1f}x the median, over {P90_FACTOR:g}x: other work slowed runs)"
    else:
        converged = "yes"
    load = load_average()
    facts = {
        **facts,
        "statistic": f"{STATISTIC} of {len(rounds)} rounds x {len(rounds[0])} runs",
        "plain_median_ms": f"{float(np.median(values)):.4f}",
        "converged": converged,
        "load_avg": "unknown" if load is None else f"{load:.2f}",
    }
    return LatencyResult(
        median_ms=float(kept),
        p90_ms=p90,
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
    """Settings every timed backend shares: the batch, and how long the loop runs. A backend implements
    `timers`, which prepares one timing function per model; measuring one model or several is shared here."""

    batch_size: int = 1
    warmup: int = 10
    round_runs: int = 20
    min_rounds: int = 3
    max_runs: int = 1000
    rel_tol: float = 0.02

    def __post_init__(self):
        for setting in ("batch_size", "round_runs", "min_rounds"):
            if getattr(self, setting) < 1:
                raise invalid(setting, getattr(self, setting), "use a positive integer")
        if self.warmup < 0:
            raise invalid("warmup", self.warmup, "use 0 or more warm-up runs")
        if self.max_runs < max(2, self.min_rounds) * self.round_runs:
            rounds = max(2, self.min_rounds)
            raise invalid(
                "max_runs",
                self.max_runs,
                f"the loop needs {rounds} rounds: use at least {rounds} x round_runs = {rounds * self.round_runs}",
            )
        if not 0 < self.rel_tol < 1:
            raise invalid("rel_tol", self.rel_tol, "use a fraction between 0 and 1, e.g. 0.02 for 2%")

    def batch_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return batch_shape(input_shape, self.batch_size)

    def timers(
        self, models: Mapping[str, nn.Module], input_shape: tuple[int, ...]
    ) -> AbstractContextManager[tuple[dict[str, Callable[[], float]], str, dict[str, str]]]:
        """A context yielding (a timing function per label, the device's name, facts); it releases on exit."""
        raise NotImplementedError

    def measure(self, model: nn.Module, *, input_shape: tuple[int, ...]) -> LatencyResult:
        return self.measure_many({"model": model}, input_shape=input_shape)["model"]

    def measure_many(
        self, models: Mapping[str, nn.Module], *, input_shape: tuple[int, ...]
    ) -> dict[str, LatencyResult]:
        """Every model in one interleaved pass: what a front's points and its baseline are compared by."""
        with self.timers(models, tuple(input_shape)) as (timers, device, facts):
            rounds = measure_rounds(
                timers,
                warmup=self.warmup,
                round_runs=self.round_runs,
                max_runs=self.max_runs,
                rel_tol=self.rel_tol,
                min_rounds=self.min_rounds,
            )
        interleaved = {"interleaved_with": str(len(models) - 1)} if len(models) > 1 else {}
        return {
            label: summarize(
                rounds[label],
                rel_tol=self.rel_tol,
                backend=self.name,
                device=device,
                batch_size=self.batch_size,
                facts={**facts, **interleaved},
            )
            for label in models
        }
