"""The figures a front is drawn from: every candidate and the unpruned baseline, re-measured together.

A trial's own latency was taken whenever that trial ended, at whatever load the machine had then. Before a
front is drawn (at the end of a search, on `task=report`, and by an experiment), the candidates' saved models
and the baseline are measured again in one interleaved pass on the same backend, so load slows all of them
alike. Each architecture is measured once (several trials can reach the same shapes). The figures are logged on
each trial's run as `latency/<backend>/final_ms`, with `final/speedup` and `final/latency_reduction_pct`
against the baseline, and tags that say how they were taken.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from hybridsweep.errors import DeviceUnavailable, UserError
from hybridsweep.metrics.complexity import architecture_signature
from hybridsweep.metrics.latency import LATENCY_BACKENDS, LatencyResult


@dataclass(frozen=True)
class FinalLatency:
    arch_of: dict[str, str]  # label -> architecture signature
    by_arch: dict[str, LatencyResult]  # one measurement per architecture
    baseline: LatencyResult

    def result(self, label: str) -> LatencyResult:
        return self.by_arch[self.arch_of[label]]

    def metrics(self, label: str) -> dict[str, float]:
        result = self.result(label)
        batch = "" if result.batch_size == 1 else f"/batch{result.batch_size}"
        return {
            f"latency/{result.backend}{batch}/final_ms": result.median_ms,
            f"baseline/latency/{result.backend}{batch}/final_ms": self.baseline.median_ms,
            "final/speedup": self.baseline.median_ms / result.median_ms,
            "final/latency_reduction_pct": 100.0 * (1 - result.median_ms / self.baseline.median_ms),
        }

    def tags(self, label: str) -> dict[str, str]:
        result = self.result(label)
        return {
            "latency.final.statistic": result.facts.get("statistic", result.source),
            "latency.final.converged": result.facts.get("converged", "n/a"),
            "latency.final.load_avg": result.facts.get("load_avg", "unknown"),
            "latency.final.pass": f"one interleaved pass over {len(self.by_arch)} architectures, "
                                  "the baseline's among them",
            "latency.final.source": result.source,
        }


def measure_final(
    models: Mapping[str, nn.Module], baseline: nn.Module, settings: dict, input_shape: tuple[int, ...]
) -> FinalLatency:
    """`settings` is the latency config as a plain dict (backend + its settings; fallback keys are ignored:
    a final figure is measured or it is not given)."""
    from hybridsweep.config import backend_settings

    backend = LATENCY_BACKENDS.build(settings["backend"], **backend_settings(settings))
    base_arch = architecture_signature(baseline)
    arch_of = {label: architecture_signature(model) for label, model in models.items()}
    unique = {base_arch: baseline} | {arch: models[label] for label, arch in arch_of.items() if arch != base_arch}
    results = backend.measure_many(unique, input_shape=tuple(input_shape))
    return FinalLatency(arch_of, results, results[base_arch])


def try_measure_final(
    models: Mapping[str, nn.Module], baseline: nn.Module, settings: dict, input_shape: tuple[int, ...]
) -> FinalLatency | None:
    """`measure_final`, or None with one warning line when the backend cannot measure now (device gone): the
    per-trial figures stay in place and nothing finished is lost."""
    try:
        return measure_final(models, baseline, settings, input_shape)
    except DeviceUnavailable as exc:
        print(f"warning: the final latency pass could not measure ({exc}); the per-trial latencies stand",
              file=sys.stderr)
        return None


def load_run_models(tracker, runs: Mapping[str, str], model_cfg, num_classes: int) -> dict[str, nn.Module]:
    """The saved pruned model of each run (`runs`: run id -> what to call it in a warning); a run without a
    readable model is left out with one warning line."""
    from hybridsweep.artifacts import load_pruned
    from hybridsweep.baseline import build_architecture

    models = {}
    for run_id, label in runs.items():
        try:
            models[run_id], _ = load_pruned(build_architecture(model_cfg, num_classes), tracker.download_model(run_id))
        except (UserError, OSError) as exc:
            print(f"warning: {label}: no model to re-measure ({exc})", file=sys.stderr)
    return models
