"""Which trial `task=export` deploys (`search/pick.py`): the rules on a study built in memory."""

import warnings

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from hybridsweep.errors import UserError
from hybridsweep.search.front import FINAL_ATTR
from hybridsweep.search.pick import candidates, parse_rule, pick

NAMES = ["finetuned/top1", "latency/cpu/median_ms"]


def trial(top1, ms, group="0.5", arch=None, feasible=True, state=TrialState.COMPLETE, **attrs):
    return create_trial(
        state=state, values=[top1, ms] if state == TrialState.COMPLETE else None,
        user_attrs={"budget_group": group, "arch": arch or f"{top1}-{ms}", **attrs},
        constraints={"flops_budget": -0.01 if feasible else 0.2},
    )


def make_study(*trials, names=NAMES):
    study = optuna.create_study(study_name="s", directions=["maximize", "minimize"][: len(names)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(names)
    for t in trials:
        study.add_trial(t)
    return study


@pytest.fixture
def study():
    # a front from fast and inaccurate to slow and accurate, over two budgets
    return make_study(
        trial(80.0, 1.0),  # 0: fastest
        trial(86.0, 2.0),  # 1
        trial(89.0, 2.5),  # 2
        trial(90.0, 5.0),  # 3: most accurate
        trial(85.0, 4.0),  # 4: dominated by 2
        trial(99.0, 0.5, feasible=False),  # 5: would dominate all, but breaks its budget
        trial(88.0, 1.5, group="0.75"),  # 6: the knee (scaled top-1 0.8 + speed 0.875, the largest sum)
        trial(0, 0, state=TrialState.FAIL, error="RuntimeError: out of memory"),  # 7
        trial(0, 0, state=TrialState.PRUNED, screened_out="adaptive-BN top-1 40.00%, 2.00 ms: dominated"),  # 8
    )


def test_candidates_are_the_feasible_fronts_of_all_budgets_thinned_to_the_undominated(study):
    # trial 6 (88%, 1.5 ms, budget 0.75) dominates trial 1 (86%, 2.0 ms) of budget 0.5: across budgets, 1 goes
    assert sorted(r["trial"] for r in candidates(study)) == [0, 2, 3, 6]


@pytest.mark.parametrize("rule,expected", [("max_top1", 3), ("fastest", 0), ("knee", 6), ("trial:4", 4)])
def test_each_rule_picks_its_trial(study, rule, expected):
    assert pick(study, rule).row["trial"] == expected


def test_the_knee_is_the_point_farthest_beyond_the_chord_of_the_front():
    # ends (70, 1) and (90, 9); (88, 3) lies far beyond the chord; (80, 4) is dominated by it
    study = make_study(trial(70.0, 1.0), trial(80.0, 4.0), trial(88.0, 3.0), trial(90.0, 9.0))
    assert pick(study, "knee").row["trial"] == 2
    # two points: each end scores 1; the tie goes to the higher top-1
    assert pick(make_study(trial(70.0, 1.0), trial(90.0, 9.0)), "knee").row["trial"] == 1


def test_a_latency_cap_narrows_the_candidates_first(study):
    assert pick(study, "max_top1", max_latency_ms=2.5).row["trial"] == 2
    assert pick(study, "knee", max_latency_ms=1.2).row["trial"] == 0
    with pytest.raises(UserError, match=r"no front trial of study s is that fast; the fastest is trial 0 at 1.000 ms"):
        pick(study, "knee", max_latency_ms=0.9)


def test_the_final_pass_latency_is_the_one_compared(study):
    study.set_user_attr(FINAL_ATTR, {"0": 3.0, "2": 2.5, "3": 5.0, "6": 1.5})  # trial 0 was slower than it looked
    assert pick(study, "fastest").row["trial"] == 6


@pytest.mark.parametrize("rule,message", [
    ("trial:7", r"trial 7 of study s is FAIL, so it has no fine-tuned model to export \(RuntimeError: out of mem"),
    ("trial:8", r"trial 8 of study s is PRUNED, .*\(adaptive-BN top-1 40.00%"),
    ("trial:42", r"study s has no trial 42 \(it has trials 0 to 8\)"),
])
def test_a_trial_without_a_model_says_why(study, rule, message):
    with pytest.raises(UserError, match=message):
        pick(study, rule)


def test_a_study_without_a_feasible_trial_or_a_latency_objective_says_so():
    with pytest.raises(UserError, match=r"study s has no complete feasible trial to export \(1 COMPLETE, 1 FAIL\)"):
        pick(make_study(trial(90.0, 1.0, feasible=False), trial(0, 0, state=TrialState.FAIL)), "knee")
    accuracy_only = make_study(create_trial(values=[90.0], user_attrs={"budget_group": "0.5"},
                                            constraints={"flops_budget": -0.01}), names=["finetuned/top1"])
    assert pick(accuracy_only, "knee").row["trial"] == 0
    with pytest.raises(UserError, match=r"pick=fastest: study s has no latency objective"):
        pick(accuracy_only, "fastest")


def test_a_trial_number_and_a_latency_cap_are_not_combined(study):
    with pytest.raises(UserError, match=r"pick=trial:2 names one trial, and pick.max_latency_ms narrows the front"):
        pick(study, "trial:2", max_latency_ms=3.0)


@pytest.mark.parametrize("rule", ["best", "trial:", "trial:-1", "trial:x", ""])
def test_an_unknown_rule_lists_the_rules(rule):
    with pytest.raises(UserError, match=r"choose one of: knee, max_top1, fastest, trial:N"):
        parse_rule(rule)
