"""Which trials of a study are on its Pareto front, as rows: the table, the plots and MLflow's tags all read these.

A study's front is computed per budget group (a list of budgets gives one front per budget) from its complete,
feasible trials (every `trial.set_constraint` value <= 0), one trial per architecture. Once the final latency
pass has run (`remeasure.py`), the front is taken among the re-measured trials with their final figures, and the
unpruned baseline (measured in the same pass) is a row of its own. `hypervolume` scores a front for the
search-efficiency benchmark.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

PLAN_KEYS = ("budget", "depth_share", "order", "criterion", "finetune_lr")
FINAL_ATTR = "final_latency"  # study user attr: {trial number: re-measured latency (ms)}
BASELINE_ATTR = "baseline"  # study user attr: the unpruned model's top1, params, flops, latency_ms


def objective_names(study: optuna.Study) -> list[str]:
    return list(study.metric_names or [f"objective{i}" for i in range(len(study.directions))])


# a constraint's name (`trial.set_constraint`, see objective.py) -> what an infeasible trial breaks
CONSTRAINT_LABELS = {"flops_budget": "FLOP budget", "max_latency_ms": "latency threshold",
                     "min_top1": "top-1 threshold"}


def is_feasible(trial: FrozenTrial) -> bool:
    return all(v <= 0 for v in trial.constraints.values())


def violated(trial: FrozenTrial) -> list[str]:
    """The names of the constraints a trial breaks (value > 0), in the order they were set."""
    return [name for name, v in trial.constraints.items() if v > 0]


def violation(trial: FrozenTrial) -> float:
    """How far a trial is from feasible: the sum of its positive constraint values (0 when feasible)."""
    return sum(max(v, 0.0) for v in trial.constraints.values())


def closest_infeasible(study: optuna.Study) -> FrozenTrial | None:
    """When no complete trial is feasible, the one with the smallest total violation; None otherwise."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not trials or any(is_feasible(t) for t in trials):
        return None
    return min(trials, key=lambda t: (violation(t), t.number))


def losses(values: Sequence[float], directions: Sequence[StudyDirection]) -> tuple[float, ...]:
    return tuple(-v if d == StudyDirection.MAXIMIZE else v for v, d in zip(values, directions, strict=True))


def non_dominated(points: Sequence[Sequence[float]]) -> list[bool]:
    """For loss vectors (lower is better): True where no other point dominates."""
    flags = []
    for i, p in enumerate(points):
        dominated = any(
            all(a <= b for a, b in zip(q, p, strict=True)) and any(a < b for a, b in zip(q, p, strict=True))
            for j, q in enumerate(points)
            if j != i
        )
        flags.append(not dominated)
    return flags


def front_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per complete trial, with `pareto` set for the trials on their budget group's front. After the
    final latency pass, the front is taken among the re-measured trials with their final figures; trials of an
    architecture that another trial of the study already reached with a better first objective never join it."""
    names = objective_names(study)
    final = {int(k): v for k, v in (study.user_attrs.get(FINAL_ATTR) or {}).items()}
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best_of_arch: dict[str, FrozenTrial] = {}
    for t in trials:
        arch = t.user_attrs.get("arch")
        if arch and (arch not in best_of_arch or losses(t.values, study.directions)[0]
                     < losses(best_of_arch[arch].values, study.directions)[0]):
            best_of_arch[arch] = t

    def values(t: FrozenTrial) -> list[float]:
        out = list(t.values)
        if final and len(out) > 1:
            out[1] = final[t.number]  # the latency objective comes second
        return out

    groups: dict[str, list[FrozenTrial]] = {}
    for t in trials:
        distinct = best_of_arch.get(t.user_attrs.get("arch"), t) is t
        if distinct and is_feasible(t) and (not final or t.number in final):
            groups.setdefault(str(t.user_attrs.get("budget_group", "all")), []).append(t)
    on_front: set[int] = set()
    for members in groups.values():
        flags = non_dominated([losses(values(t), study.directions) for t in members])
        on_front |= {t.number for t, flag in zip(members, flags, strict=True) if flag}
    rows = []
    for t in trials:
        plan = t.user_attrs.get("plan", {})
        row: dict[str, Any] = {
            "study": study.study_name,
            "trial": t.number,
            "budget_group": str(t.user_attrs.get("budget_group", "all")),
            "pareto": t.number in on_front,
            "feasible": is_feasible(t),
            "violates": " ".join(violated(t)),  # constraint names, "" when feasible
        }
        row |= dict(zip(names, t.values, strict=True))
        row["final_latency_ms"] = final.get(t.number)
        row |= {key: plan.get(key, t.params.get(key)) for key in PLAN_KEYS}
        row |= {
            "flops_ratio": t.user_attrs.get("flops_ratio"),
            "blocks_removed": t.user_attrs.get("blocks_removed"),
            "channel_ratio": t.user_attrs.get("channel_ratio"),
            "arch": t.user_attrs.get("arch"),
            "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
        }
        rows.append(row)
    rows.sort(key=lambda r: (r["study"], r["budget_group"], [r[n] for n in names]))
    return rows


def baseline_row(study: optuna.Study) -> dict[str, Any] | None:
    """The unpruned model as a row of the front's table (after the final pass), or None before it."""
    base = study.user_attrs.get(BASELINE_ATTR)
    if not base:
        return None
    names = objective_names(study)
    known = {"finetuned/top1": base["top1"], "params": base["params"], "flops": base["flops"]}
    row: dict[str, Any] = {"study": study.study_name, "trial": "baseline (unpruned)", "budget_group": "1",
                           "pareto": False, "feasible": True}
    row |= {n: (base["latency_ms"] if n.startswith("latency/") else known.get(n)) for n in names}
    row |= {"final_latency_ms": base["latency_ms"], "flops_ratio": 1.0, "blocks_removed": 0, "channel_ratio": 0.0}
    return row


def reference_past(points: Sequence[tuple[float, float]]) -> list[float]:
    """A reference point just past the worst of (top-1, latency) points: 1 point of top-1 below, 5% slower. The
    screen ranks plans and the benchmarks compare fronts against it."""
    return [min(top1 for top1, _ in points) - 1.0, max(ms for _, ms in points) * 1.05]


def hypervolume(rows: Sequence[dict], names: Sequence[str], directions: Sequence[StudyDirection],
                reference: Sequence[float]) -> float:
    """Hypervolume of the feasible rows' objective values against `reference` (in objective units; for a
    maximised objective the reference is its lower bound)."""
    import numpy as np

    # Optuna has no public hypervolume function (5.0: only plot_hypervolume_history draws one), and its private
    # WFG is exact for any number of objectives, which the search allows (accuracy, latency, params, flops).
    from optuna._hypervolume import compute_hypervolume

    ref = np.asarray(losses(reference, directions), dtype=float)
    points = [losses([r[n] for n in names], directions) for r in rows if r["feasible"]]
    points = [p for p in points if all(a < b for a, b in zip(p, ref, strict=True)) and all(map(math.isfinite, p))]
    if not points:
        return 0.0
    return float(compute_hypervolume(np.asarray(points, dtype=float), ref))
