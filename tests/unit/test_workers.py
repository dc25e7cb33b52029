"""A dead worker's trial is queued to run again once, an interrupted one whenever it is stopped
(`search/workers.py`)."""

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from hybridsweep.search.study import queue_stopped
from hybridsweep.search.workers import RETRY_OF, queue_again


def dead(study, **user_attrs):
    study.add_trial(create_trial(state=TrialState.FAIL, params={"depth_share": 0.4},
                                 distributions={"depth_share": FloatDistribution(0, 1)}, user_attrs=user_attrs))
    return study.get_trials(deepcopy=False)[-1]


def test_a_dead_trial_runs_again_first_once():
    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = dead(study)
    assert queue_again(study, trial)
    assert not queue_again(study, trial)  # a fellow worker found it dead too: queued once
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert [t.user_attrs for t in waiting] == [{RETRY_OF: trial.number}]
    retry = study.ask()
    assert retry.params == {} and retry.suggest_float("depth_share", 0, 1) == 0.4  # the sampler's choice kept
    assert retry.user_attrs[RETRY_OF] == trial.number


def test_a_retry_or_a_plan_only_being_screened_is_not_queued():
    study = optuna.create_study(directions=["maximize", "minimize"])
    assert not queue_again(study, dead(study, **{RETRY_OF: 0}))
    assert not queue_again(study, dead(study, screening=True))
    assert not study.get_trials(deepcopy=False, states=(TrialState.WAITING,))


def test_a_plan_stopped_by_ctrl_c_is_queued_even_when_it_was_a_retry():
    """The stop was not the plan's fault: unlike a dead worker's retry, it runs again however often it is stopped."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    dead(study)
    retry = dead(study, **{RETRY_OF: 0})
    assert not queue_again(study, retry)
    assert queue_again(study, retry, interrupted=True)
    assert not queue_again(study, retry, interrupted=True)  # queued once per stopped trial
    assert not queue_again(study, dead(study, screening=True), interrupted=True)
    study.add_trial(create_trial(values=[88.0, 6.7], params={"depth_share": 0.4},
                                 distributions={"depth_share": FloatDistribution(0, 1)}))
    assert not queue_again(study, study.trials[-1], interrupted=True)  # it completed before the stop


@pytest.mark.parametrize("stop_at", [0, 1, 2])
def test_a_grid_search_stopped_mid_trial_runs_the_point_on_resume(stop_at):
    """Optuna's GridSampler counts a failed trial's point as visited: without the queued plan, a grid search
    resumed after Ctrl-C would end with that point never run; and a retry without the point's `grid_id` broke
    GridSampler's bookkeeping (KeyError) when it finished with one point left."""
    grid = {"depth_share": [0.0, 0.5, 1.0]}
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(grid, seed=0))

    def objective(trial):
        x = trial.suggest_categorical("depth_share", grid["depth_share"])
        if trial.number == stop_at:
            raise KeyboardInterrupt
        return x

    with pytest.raises(KeyboardInterrupt):
        study.optimize(objective)
    queue_stopped(study, stop_at)  # what the search does as the stop unwinds
    study.optimize(objective)  # the resume
    done = [t.params["depth_share"] for t in study.get_trials(states=(TrialState.COMPLETE,))]
    assert sorted(done) == grid["depth_share"]
    assert study.trials[stop_at].params["depth_share"] in done


def test_a_queued_retry_is_fine_tuned_without_screening_in_a_screened_search(tmp_path, monkeypatch):
    """The retried plan was screened and chosen before: a new batch of candidates could screen it out, and a stop
    while it was screened again would lose it (a plan being screened is not queued)."""
    from hybridsweep.search import screen
    from hybridsweep.search.progress import AfterTrial

    study = optuna.create_study(directions=["maximize", "minimize"])
    assert queue_again(study, dead(study, **{screen.ABN: 71.5, screen.LATENCY: 6.1}), interrupted=True)

    def never(self, trial):
        raise AssertionError("a retry was screened again")

    monkeypatch.setattr(screen.Screener, "__init__", lambda self, settings, objective: None)
    monkeypatch.setattr(screen.Screener, "score", never)
    monkeypatch.setattr(AfterTrial, "publish", lambda self, study: [])

    class Objective:
        fatal = max_latency_ms = None

        def __call__(self, trial):
            return 88.0, trial.suggest_float("depth_share", 0, 1) + 6.0

    screen.optimize_screened(study, Objective(), screen.ScreenSettings(candidates=4),
                             AfterTrial(None, tmp_path, max_failures=5, n_trials=1))
    assert [(t.state, t.values) for t in study.trials] == [(TrialState.FAIL, None), (TrialState.COMPLETE, [88.0, 6.4])]
    assert study.trials[1].user_attrs == {screen.ABN: 71.5, screen.LATENCY: 6.1, RETRY_OF: 0}


def test_a_retry_sets_its_own_constraints():
    """A trial stopped after `set_constraint` (a stop or a kill between its objectives and its end): the retry
    must not inherit the figures, since Optuna then ignores the retry's own ("already set")."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.add_trial(create_trial(state=TrialState.FAIL, params={"depth_share": 0.4},
                                 distributions={"depth_share": FloatDistribution(0, 1)},
                                 system_attrs={"constraints:latency": 5.0, "grid_id": 2}))
    assert queue_again(study, study.trials[0], interrupted=True)
    retry = study.ask()
    copied = study.trials[1].system_attrs
    assert "constraints:latency" not in copied and copied["grid_id"] == 2
    retry.set_constraint("latency", -1.0)
    study.tell(retry, [88.0, 6.0])
    assert study.trials[1].system_attrs["constraints:latency"] == -1.0


class Lock:
    held = False

    def __call__(self):
        return self

    def __enter__(self):
        assert not self.held
        self.held = True

    def __exit__(self, *exc):
        self.held = False


def test_workers_finishing_together_look_for_dead_trials_under_the_study_lock(tmp_path, monkeypatch):
    """Two workers' after-trial checks finding one dead trial would both queue its plan without the lock."""
    from hybridsweep.search import progress

    lock, seen = Lock(), []
    monkeypatch.setattr(progress, "fail_dead_trials", lambda study, tracker: seen.append(lock.held) or [])
    monkeypatch.setattr(progress.AfterTrial, "publish", lambda self, study: [])
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.add_trial(create_trial(values=[88.0, 6.7]))
    after = progress.AfterTrial(None, tmp_path, max_failures=5, n_trials=2, lock=lock)
    after(study, study.get_trials(deepcopy=False)[-1])
    assert seen == [True] and not lock.held
