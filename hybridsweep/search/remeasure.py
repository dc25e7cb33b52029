"""The final pass of a search: the front's candidates and the unpruned baseline, re-measured together.

Candidates are the trials of the first two non-dominated layers of each budget group (by the figures each trial
measured itself), so a re-measure can still reorder the front. Their saved models and the baseline are measured
in one interleaved pass (`hybridsweep.final_latency`); the figures go on each trial's MLflow run
(`latency/<backend>/final_ms`, `final/speedup`, ...) and into the study's user attributes `final_latency` and
`baseline` (a finished trial's own attributes cannot change), where `front_rows` reads them to draw the front.
`task=report` runs the same pass over several studies at once, so their fronts share one measurement.
"""

from __future__ import annotations

import sys

import optuna
from optuna.trial import FrozenTrial, TrialState

from hybridsweep.search.front import BASELINE_ATTR, FINAL_ATTR, losses, non_dominated

CANDIDATE_LAYERS = 2


def candidates(study: optuna.Study) -> list[FrozenTrial]:
    """The first CANDIDATE_LAYERS non-dominated layers of feasible complete trials, per budget group."""
    groups: dict[str, list[FrozenTrial]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if all(v <= 0 for v in t.constraints.values()):
            groups.setdefault(str(t.user_attrs.get("budget_group", "all")), []).append(t)
    chosen = []
    for members in groups.values():
        left = list(members)
        for _ in range(CANDIDATE_LAYERS):
            if not left:
                break
            flags = non_dominated([losses(t.values, study.directions) for t in left])
            chosen += [t for t, flag in zip(left, flags, strict=True) if flag]
            left = [t for t, flag in zip(left, flags, strict=True) if not flag]
    return chosen


def remeasure(studies: list[optuna.Study], cfg) -> dict | None:
    """Re-measure the candidates of `studies` and the baseline of `cfg` in one pass; record and log the figures.
    Returns the baseline record, or None when nothing could be measured (the per-trial figures then stand)."""
    from hybridsweep.config import to_plain
    from hybridsweep.final_latency import load_run_models, try_measure_final
    from hybridsweep.metrics.complexity import count
    from hybridsweep.tracking import Tracker
    from hybridsweep.train import resolve_device
    from hybridsweep.workbench import workbench

    if not cfg.tracking.enabled:
        print("search: tracking is off, so the trials' models cannot be fetched for a final latency pass; "
              "the per-trial latencies stand", file=sys.stderr)
        return None
    tracker = Tracker(str(cfg.tracking.uri))
    bench = workbench(cfg)
    ds = bench.dataset(cfg)
    device = resolve_device(cfg.device)
    base = bench.baseline(cfg, ds, device)
    owners = {t.user_attrs["mlflow_run_id"]: (study, t.number)
              for study in studies for t in candidates(study) if t.user_attrs.get("mlflow_run_id")}
    labels = {run_id: f"trial {number} of {study.study_name}" for run_id, (study, number) in owners.items()}
    models = load_run_models(tracker, labels, cfg.model, len(ds.classes))
    owners = {run_id: owner for run_id, owner in owners.items() if run_id in models}
    if not models:
        return None
    print(f"search: final latency pass: {len(models)} front candidates and the baseline, interleaved on "
          f"latency={cfg.latency.backend}")
    final = try_measure_final(models, base.model, to_plain(cfg.latency), ds.input_shape)
    if final is None:
        return None
    accuracy = bench.baseline_accuracy(cfg, ds, base, device)
    complexity = count(base.model, ds.input_shape)
    baseline = {"top1": accuracy.top1, "params": complexity.params, "flops": complexity.flops,
                "latency_ms": final.baseline.median_ms, "backend": final.baseline.backend,
                "load_avg": final.baseline.facts.get("load_avg", "unknown"),
                "statistic": final.baseline.facts.get("statistic", "")}
    per_study: dict[str, dict[str, float]] = {}
    for run_id, (study, number) in owners.items():
        per_study.setdefault(study.study_name, {})[str(number)] = final.result(run_id).median_ms
        tracker.update_run(run_id, final.metrics(run_id), final.tags(run_id))
    for study in studies:
        study.set_user_attr(BASELINE_ATTR, baseline)
        study.set_user_attr(FINAL_ATTR, per_study.get(study.study_name, {}))
    return baseline
