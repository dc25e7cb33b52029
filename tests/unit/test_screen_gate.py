"""What screening drops before ranking (`search/screen.py`): a pruned model the study already fine-tuned, and a
plan over the latency threshold; the digest that tells two pruned models apart; and when a search run has spent
its trials."""

import optuna
import pytest
import torch
from optuna.trial import TrialState, create_trial

from hybridsweep.search.screen import (
    ABN,
    LATENCY,
    MODEL,
    SCREENED_OUT,
    ScreenSettings,
    _choose,
    _gate,
    blocked_message,
    screen_key,
)
from hybridsweep.trial import pruned_model_digest
from tests.helpers import compose_config
from tests.unit.test_latency import small_net


def test_the_digest_changes_with_the_weights_the_recipe_and_the_seed():
    cfg = compose_config("+criterion=l1")
    net = small_net(0)
    same = pruned_model_digest(small_net(0), cfg)
    assert pruned_model_digest(net, cfg) == same
    assert pruned_model_digest(net, compose_config("+criterion=l1", "finetune.lr=0.02")) != same
    assert pruned_model_digest(net, compose_config("+criterion=l1", "seed=1")) != same
    assert pruned_model_digest(net, compose_config("+criterion=l1", "screen.finetune_from_adaptive_bn=false")) != same
    with torch.no_grad():
        next(net.parameters())[0].add_(1e-3)  # one weight: another model, another result
    assert pruned_model_digest(net, cfg) != same


def test_a_model_screened_another_way_has_another_screen_key():
    """Scores are reused only under the same key: a resumed study timing latency with other settings, or ranking
    on other test images, measures the model again."""
    screened, cpu = ScreenSettings(candidates=4), {"backend": "cpu", "threads": 1, "batch_size": 1}
    key = screen_key("d", screened, cpu)
    assert screen_key("d", ScreenSettings(candidates=4), dict(cpu)) == key
    assert screen_key("e", screened, cpu) != key
    assert screen_key("d", screened, {**cpu, "threads": 2}) != key
    assert screen_key("d", screened, {**cpu, "backend": "onnxruntime"}) != key
    assert screen_key("d", ScreenSettings(candidates=4, test_images=500), cpu) != key
    assert screen_key("d", ScreenSettings(candidates=1), cpu) != key  # a latency gate only: no accuracy


@pytest.fixture
def study():
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.add_trial(create_trial(values=[88.0, 6.7], user_attrs={MODEL: "tuned"}))  # trial 0, fine-tuned
    return study


def ask(study, digest):
    trial = study.ask()
    trial.set_user_attr(MODEL, digest)
    return trial


def test_a_model_already_fine_tuned_and_a_plan_over_the_threshold_are_screened_out(study):
    twin, slow, fresh = ask(study, "tuned"), ask(study, "slow"), ask(study, "fresh")
    asked, told = [twin, slow, fresh], []
    slow.set_user_attr("screen/latency_source", "predicted")
    kept, dropped = _gate(study, [(twin, 73.3, 6.7), (slow, 75.0, 9.0), (fresh, 70.0, 5.0)], 8.0, asked,
                          lambda s, frozen: told.append(frozen.number))
    assert [t for t, _, _ in kept] == [fresh] and asked == [fresh] and told == [twin.number, slow.number]
    assert dropped == [("duplicate", 6.7), ("slow", 9.0)]
    trials = study.get_trials(deepcopy=False)
    assert trials[twin.number].state == TrialState.PRUNED
    assert trials[twin.number].user_attrs[SCREENED_OUT] == (
        "adaptive-BN top-1 73.30%, 6.70 ms: the same pruned model and recipe as trial 0, already fine-tuned")
    assert trials[slow.number].user_attrs[SCREENED_OUT].endswith(
        "9.00 ms: its predicted (latency=lut) latency breaks search.max_latency_ms=8")


def test_without_a_threshold_only_the_twin_goes(study):
    twin, slow = ask(study, "tuned"), ask(study, "slow")
    kept, dropped = _gate(study, [(twin, 73.3, 6.7), (slow, 75.0, 9.0)], None, [twin, slow],
                          lambda s, frozen: None)
    assert [t for t, _, _ in kept] == [slow] and dropped == [("duplicate", 6.7)]


class OneFront:
    """A search space whose plans all share one front (a FLOP budget range)."""

    def suggest(self, trial):
        return {}

    def budget_group(self, plan):
        return "all"


def test_of_the_plans_that_could_join_the_front_the_one_adding_most_is_fine_tuned(study):
    study.add_trial(create_trial(values=[88.5, 6.0], user_attrs={ABN: 70.0, LATENCY: 6.0, "budget_group": "all"}))
    objective = type("Objective", (), {"space": OneFront()})()
    a, b, c = study.ask(), study.ask(), study.ask()
    scored = [(a, 71.0, 6.5), (b, 80.0, 5.0), (c, 60.0, 7.0)]  # a joins by a sliver, b dominates, c cannot join
    chosen, reason = _choose(study, objective, scored, force=False)
    assert chosen is b
    assert reason == f"trial {b.number} was fine-tuned instead (it could join the front and adds the most to it)"
    assert _choose(study, objective, [(a, 71.0, 6.5), (c, 60.0, 7.0)], force=False)[0] is a
    assert _choose(study, objective, [(c, 60.0, 7.0), (a, 65.0, 6.5)], force=False) is None  # none can join
    assert _choose(study, objective, [(c, 60.0, 7.0), (a, 65.0, 6.5)], force=True)[0] is a  # the best top-1


def test_the_stop_message_says_what_blocked_the_plans():
    assert blocked_message([("slow", 9.0), ("slow", 8.5)], 8.0) == (
        "search: the last 2 plans could not add anything to the study: 2 broke search.max_latency_ms=8 (the "
        "fastest 8.50 ms); raise search.max_latency_ms or lower search.budgets so that plans are smaller")
    assert "1 was a model the study had already fine-tuned; the sampler keeps proposing" in blocked_message(
        [("duplicate", 6.7)], None)


@pytest.mark.parametrize("guard", [0, 2])
def test_a_run_ends_at_the_total_of_fine_tuned_trials_and_a_failing_run_ends_too(tmp_path, guard):
    """Twins and screened-out plans never count toward search.n_trials. A failure is replaced while the failure
    guard is on (and trips it when in a row); with the guard off (`max_consecutive_failures=0`) it counts toward
    the total, so a run whose every trial fails still ends."""
    from hybridsweep.search.progress import AfterTrial

    study = optuna.create_study(directions=["maximize", "minimize"])
    after = AfterTrial(None, tmp_path, max_failures=guard, n_trials=3)

    def add(**kwargs):
        study.add_trial(create_trial(**kwargs))
        after.record(study.get_trials(deepcopy=False)[-1])
        return after.finished(study)

    assert not add(values=[88.0, 6.7])
    assert not add(state=TrialState.PRUNED, user_attrs={SCREENED_OUT: "the same pruned model as trial 0"})
    assert not add(state=TrialState.PRUNED, user_attrs={SCREENED_OUT: "no plan of its batch could join the front"})
    assert not add(state=TrialState.FAIL)
    assert add(state=TrialState.FAIL)  # guard 2: two in a row; no guard: 1 fine-tuned + 2 failed = 3
    assert after.failed_here == 2


def test_with_the_guard_a_finished_trial_breaks_the_row_and_failures_are_replaced(tmp_path):
    from hybridsweep.search.progress import AfterTrial

    study = optuna.create_study(directions=["maximize", "minimize"])
    after = AfterTrial(None, tmp_path, max_failures=2, n_trials=2)
    for kwargs in [{"state": TrialState.FAIL}, {"values": [88.0, 6.7]}, {"state": TrialState.FAIL}]:
        study.add_trial(create_trial(**kwargs))
        after.record(study.get_trials(deepcopy=False)[-1])
        assert not after.finished(study)
    study.add_trial(create_trial(values=[87.0, 6.0]))
    after.record(study.get_trials(deepcopy=False)[-1])
    assert after.finished(study) and after.failures == []


def test_a_surplus_trial_ends_the_run(tmp_path):
    """Another worker is fine-tuning the study's last trial: the plan this run chose is failed as surplus, and the
    run ends rather than screening more batches while it waits (the screened loop runs outside Optuna's)."""
    from hybridsweep.search.progress import AfterTrial

    study = optuna.create_study(directions=["maximize", "minimize"])
    after = AfterTrial(None, tmp_path, max_failures=5, n_trials=2)
    study.add_trial(create_trial(values=[88.0, 6.7]))
    after.record(study.get_trials(deepcopy=False)[-1])
    assert not after.finished(study)
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"surplus": True}))
    after.record(study.get_trials(deepcopy=False)[-1])
    assert after.finished(study) and after.failures == [] and after.failed_here == 0
