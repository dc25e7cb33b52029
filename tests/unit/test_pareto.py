"""Pareto fronts: non-domination, and which trials of a study join their budget group's front (in memory)."""

import warnings

import optuna
import pytest
from optuna.study import StudyDirection
from optuna.trial import TrialState, create_trial

from hybridsweep.search.front import FINAL_ATTR, front_rows, losses, non_dominated

NAMES = ["finetuned/top1", "latency/cpu/median_ms"]


@pytest.mark.parametrize(
    "points,expected",
    [
        ([(0, 0), (1, 1), (0, 1), (1, 0)], [True, False, False, False]),
        ([(-90, 5), (-85, 3), (-80, 4), (-90, 5)], [True, True, False, True]),  # equal points do not dominate
        ([(1, 2, 3)], [True]),
        ([], []),
    ],
)
def test_non_dominated(points, expected):
    assert non_dominated(points) == expected


def test_losses_negate_what_is_maximised():
    assert losses((90.0, 5.0), [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]) == (-90.0, 5.0)


def trial(top1, ms, group, arch, over_budget=False, state=TrialState.COMPLETE):
    return create_trial(
        state=state, values=[top1, ms] if state == TrialState.COMPLETE else None,
        user_attrs={"budget_group": group, "arch": arch, "plan": {"budget": float(group), "order": "layer_first"}},
        constraints={"flops_budget": 0.1 if over_budget else -0.01},
    )


@pytest.fixture
def study():
    study = optuna.create_study(storage=None, study_name="s", directions=["maximize", "minimize"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(NAMES)
    for t in [
        trial(90, 5.0, "0.5", "A"),
        trial(85, 3.0, "0.5", "B"),
        trial(80, 4.0, "0.5", "C"),  # dominated by trial 1
        trial(80, 4.0, "0.75", "D"),  # the same figures, but its own budget's front
        trial(95, 1.0, "0.5", "E", over_budget=True),  # would dominate everything: infeasible
        trial(89, 4.5, "0.5", "A"),  # not dominated, but architecture A already reached 90%
        trial(0, 0, "0.5", "F", state=TrialState.FAIL),
        trial(0, 0, "0.5", "G", state=TrialState.PRUNED),
    ]:
        study.add_trial(t)
    return study


def test_each_budget_group_has_its_own_front_of_feasible_distinct_architectures(study):
    rows = front_rows(study)
    assert {r["trial"]: r["pareto"] for r in rows} == {0: True, 1: True, 2: False, 3: True, 4: False, 5: False}
    assert [r["trial"] for r in rows if not r["feasible"]] == [4]
    row = next(r for r in rows if r["trial"] == 1)
    assert (row["finetuned/top1"], row["latency/cpu/median_ms"], row["budget_group"], row["budget"]) == (
        85, 3.0, "0.5", 0.5)
    assert row["final_latency_ms"] is None


def test_after_the_final_pass_the_front_is_drawn_from_the_remeasured_trials(study):
    study.set_user_attr(FINAL_ATTR, {"0": 6.0, "1": 3.0, "2": 2.0})  # JSON keys, as a real storage keeps them
    rows = {r["trial"]: r for r in front_rows(study)}
    # trial 2 is now faster than trial 1; trial 3 was not re-measured
    assert {n: r["pareto"] for n, r in rows.items()} == {0: True, 1: True, 2: True, 3: False, 4: False, 5: False}
    assert rows[2]["final_latency_ms"] == 2.0 and rows[2]["latency/cpu/median_ms"] == 4.0  # per-trial figure kept


def test_rows_name_the_constraints_an_infeasible_trial_breaks_and_the_closest_is_the_least_violating():
    from hybridsweep.search.front import closest_infeasible
    from hybridsweep.search.plots import infeasible_reason

    study = optuna.create_study(storage=None, study_name="t", directions=["maximize", "minimize"])
    for constraints in ({"flops_budget": -0.01, "max_latency_ms": 0.5, "min_top1": 2.0},
                        {"flops_budget": 0.1, "max_latency_ms": 0.2},
                        {"flops_budget": -0.01, "max_latency_ms": -0.1}):
        study.add_trial(create_trial(state=TrialState.COMPLETE, values=[80, 1.0], constraints=constraints,
                                     user_attrs={"budget_group": "0.5"}))
    rows = {r["trial"]: r for r in front_rows(study)}
    assert [rows[n]["violates"] for n in range(3)] == ["max_latency_ms min_top1", "flops_budget max_latency_ms", ""]
    assert infeasible_reason(rows[0]) == "breaks the latency threshold, top-1 threshold"
    assert infeasible_reason({"feasible": False}) == "breaks the FLOP budget"  # rows of older studies
    assert closest_infeasible(study) is None  # trial 2 is feasible
    lone = optuna.create_study(storage=None, directions=["maximize", "minimize"])
    for t in study.trials[:2]:
        lone.add_trial(t)
    assert closest_infeasible(lone).number == 1  # 0.3 over in all, against 2.5
