"""The early-stop rule after a trial's first fine-tune epoch, and `stop`, on in-memory studies (the evaluation of
the model is replaced by a fixed top-1: no model is trained)."""

from types import SimpleNamespace

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState, create_trial

import hybridsweep.train
from hybridsweep.search.objective import EarlyStop, stop

CFG = OmegaConf.create({"device": "cpu", "finetune": {"eval_batch_size": 100}})


class Bench:
    """The one workbench method the rule calls."""

    def dataset(self, cfg):
        return "test set"


def peer(top1: float, group: str = "0.5", state=TrialState.COMPLETE):
    return create_trial(state=state, values=[top1, 1.0] if state == TrialState.COMPLETE else None,
                        user_attrs={"budget_group": group, "epoch1/top1": top1})


def study_with(*peers):
    study = optuna.create_study(storage=None, directions=["maximize", "minimize"])
    for t in peers:
        study.add_trial(t)
    return study


def epoch_end(monkeypatch, study, rule: EarlyStop, top1: float, group: str = "0.5"):
    """The rule's hook for a new trial whose model scores `top1`; returns (hook, the trial, what it reported)."""
    monkeypatch.setattr(hybridsweep.train, "evaluate", lambda model, ds, **kw: SimpleNamespace(top1=top1))
    trial, reported = study.ask(), []
    return rule.hook(study, trial, CFG, Bench(), group, reported.append), trial, reported


FOUR_PEERS = [peer(80.0), peer(75.0), peer(72.0), peer(60.0)]


def test_a_trial_far_below_the_best_peer_after_epoch_one_is_pruned(monkeypatch):
    hook, trial, reported = epoch_end(monkeypatch, study_with(*FOUR_PEERS), EarlyStop(enabled=True), 69.9)
    with pytest.raises(optuna.TrialPruned, match=r"top-1 after epoch 1 is 69\.90%, more than 10 points below the "
                                                 r"best of 4 finished trials with budget 0\.5 \(80\.00%\)"):
        hook(1, model=None)
    assert trial.user_attrs["epoch1/top1"] == 69.9  # recorded first: later trials compare with it
    assert reported == [{"early_stop/epoch1_top1": 69.9}]


def test_exactly_margin_below_the_best_goes_on(monkeypatch):
    hook, trial, _ = epoch_end(monkeypatch, study_with(*FOUR_PEERS), EarlyStop(enabled=True), 70.0)
    hook(1, model=None)
    assert trial.user_attrs["epoch1/top1"] == 70.0


def test_only_finished_peers_of_the_same_budget_count(monkeypatch):
    """Three complete peers of budget 0.5: fewer than min_peers, whatever other budgets and pruned trials say."""
    study = study_with(*FOUR_PEERS[:3], peer(99.0, group="0.75"), peer(99.0, state=TrialState.PRUNED))
    hook, _, _ = epoch_end(monkeypatch, study, EarlyStop(enabled=True), 10.0)
    hook(1, model=None)
    hook, _, _ = epoch_end(monkeypatch, study, EarlyStop(enabled=True, min_peers=3), 69.0)
    with pytest.raises(optuna.TrialPruned, match=r"best of 3 finished trials with budget 0\.5 \(80\.00%\)"):
        hook(1, model=None)


def test_margin_and_min_peers_are_settings(monkeypatch):
    hook, _, _ = epoch_end(monkeypatch, study_with(peer(80.0)), EarlyStop(enabled=True, margin=0.5, min_peers=1),
                           79.4)
    with pytest.raises(optuna.TrialPruned, match="more than 0.5 points below the best of 1 finished trials"):
        hook(1, model=None)


def test_other_epochs_are_not_checked(monkeypatch):
    monkeypatch.setattr(hybridsweep.train, "evaluate", lambda *a, **kw: pytest.fail("evaluated after epoch 2"))
    study, reported = study_with(*FOUR_PEERS), []
    trial = study.ask()
    EarlyStop(enabled=True).hook(study, trial, CFG, Bench(), "0.5", reported.append)(2, model=None)
    assert "epoch1/top1" not in trial.user_attrs and reported == []


def test_the_rule_is_off_by_default():
    assert EarlyStop() == EarlyStop(enabled=False, margin=10.0, min_peers=4)


def test_stop_ends_optimize_after_the_current_trial_and_is_harmless_outside_it():
    study = study_with()
    stop(study)  # outside Optuna's loop (the screened search): nothing to stop, no error

    def objective(trial):
        if trial.number == 2:
            stop(study)
        return 0.0, 0.0

    study.optimize(objective, n_trials=10)
    assert len(study.trials) == 3 and all(t.state == TrialState.COMPLETE for t in study.trials)
