"""A dead worker's trial is queued to run again once (`search/workers.py`)."""

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from hybridsweep.search.workers import RETRY_OF, _queue_again


def dead(study, **user_attrs):
    study.add_trial(create_trial(state=TrialState.FAIL, params={"depth_share": 0.4},
                                 distributions={"depth_share": FloatDistribution(0, 1)}, user_attrs=user_attrs))
    return study.get_trials(deepcopy=False)[-1]


def test_a_dead_trial_runs_again_first_once():
    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = dead(study)
    assert _queue_again(study, trial)
    assert not _queue_again(study, trial)  # a fellow worker found it dead too: queued once
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert [t.user_attrs for t in waiting] == [{RETRY_OF: trial.number}]
    retry = study.ask()
    assert retry.params == {} and retry.suggest_float("depth_share", 0, 1) == 0.4  # the sampler's choice kept
    assert retry.user_attrs[RETRY_OF] == trial.number


def test_a_retry_or_a_plan_only_being_screened_is_not_queued():
    study = optuna.create_study(directions=["maximize", "minimize"])
    assert not _queue_again(study, dead(study, **{RETRY_OF: 0}))
    assert not _queue_again(study, dead(study, screening=True))
    assert not study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
