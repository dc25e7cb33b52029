"""Screening in a real search (ResNet-20, real CIFAR-10 JPEGs, one fine-tune step): each fine-tuned trial is
chosen from K screened plans; the others stay in the study as PRUNED trials with their scores and the reason."""

import optuna
import pytest
from optuna.trial import TrialState

from hybridsweep.errors import UserError
from hybridsweep.search import run_search
from hybridsweep.search.screen import ABN, LATENCY, MODEL, SCREENED_OUT, counted
from hybridsweep.search.storage import open_storage
from tests.helpers import cheap_real_overrides, compose_config

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]


def _args(shared_data, cache, root, *extra):
    return [
        *cheap_real_overrides(shared_data, cache, train=256, test=100, steps=1),
        f"paths.output_dir={root}/out",
        f"tracking.uri=sqlite:///{root}/mlflow.db",
        f"search.storage=sqlite:///{root}/optuna.db",
        "search=random",
        "search.criteria=[l1]",
        "search.orders=[layer_first]",
        "search.budgets=[0.5]",
        "search.lr=null",
        *extra,
    ]


def test_a_screened_search_fine_tunes_one_plan_in_k_and_records_the_rest(shared_data, test_cache, tmp_path,
                                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = _args(shared_data, test_cache, tmp_path, "search.n_trials=2", "search.study_name=screened",
                 "search.screen.candidates=4", "search.screen.test_images=100")
    run_search(compose_config(*args), args)
    study = optuna.load_study(study_name="screened", storage=open_storage(f"sqlite:///{tmp_path}/optuna.db"))
    tuned = [t for t in study.trials if counted(t)]
    out = [t for t in study.trials if SCREENED_OUT in t.user_attrs]
    assert len(tuned) == 2 and all(t.state == TrialState.COMPLETE for t in tuned)
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    assert len(study.trials) % 4 == 0 and len(out) == len(study.trials) - 2  # every batch: one plan in four
    for t in out:
        assert t.state == TrialState.PRUNED and 0 <= t.user_attrs[ABN] <= 100 and t.user_attrs[LATENCY] > 0
        assert t.user_attrs[SCREENED_OUT].startswith(  # the reason shows the scores it was screened out with
            f"adaptive-BN top-1 {t.user_attrs[ABN]:.2f}%, {t.user_attrs[LATENCY]:.2f} ms: ")
        reason = t.user_attrs[SCREENED_OUT]
        assert ("was fine-tuned instead" in reason or "no plan of its batch" in reason
                or "already fine-tuned" in reason)
    for t in tuned:
        assert 0 <= t.user_attrs[ABN] <= 100 and 0 < t.values[0] <= 100  # top-1 in percent; 0: a broken evaluation
    assert len({t.user_attrs[MODEL] for t in tuned}) == len(tuned)  # no pruned model is fine-tuned twice
    twins = [t for t in out if "already fine-tuned" in t.user_attrs[SCREENED_OUT]]
    by_number = {t.number: t for t in tuned}
    for t in twins:  # the trial it names was fine-tuned from the very same pruned model
        number = int(t.user_attrs[SCREENED_OUT].split("as trial ")[1].split(",")[0])
        assert by_number[number].user_attrs[MODEL] == t.user_attrs[MODEL]


@pytest.fixture
def fine_tunes_fail(tmp_path, monkeypatch):
    """Every fine-tune fails; the screening before it runs for real."""
    import hybridsweep.trial

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hybridsweep.trial, "run_trial", broken)


def test_fine_tuned_trials_failing_in_a_row_stop_a_screened_search(shared_data, test_cache, tmp_path,
                                                                    fine_tunes_fail):
    """Screened-out plans in between do not reset the count of failures in a row."""
    args = _args(shared_data, test_cache, tmp_path, "search.n_trials=3", "search.study_name=failing",
                 "search.screen.candidates=2", "search.screen.test_images=100", "search.max_consecutive_failures=2")
    with pytest.raises(UserError, match=r"search: 2 trials failed in a row, .* with RuntimeError: out of memory"):
        run_search(compose_config(*args), args)
    study = optuna.load_study(study_name="failing", storage=open_storage(f"sqlite:///{tmp_path}/optuna.db"))
    assert len(study.trials) == 4  # two batches of two, one fine-tune failed in each
    assert sorted(t.state.name for t in study.trials) == ["FAIL", "FAIL", "PRUNED", "PRUNED"]


def test_without_the_failure_guard_a_screened_search_whose_fine_tunes_all_fail_still_ends(
        shared_data, test_cache, tmp_path, fine_tunes_fail):
    """`max_consecutive_failures=0` turns the guard off: a failure then counts toward search.n_trials instead of
    being replaced, so the run ends after n_trials fine-tunes, failed or not (it used to loop for ever)."""
    args = _args(shared_data, test_cache, tmp_path, "search.n_trials=2", "search.study_name=unguarded",
                 "search.screen.candidates=2", "search.screen.test_images=100", "search.max_consecutive_failures=0")
    run_search(compose_config(*args), args)
    study = optuna.load_study(study_name="unguarded", storage=open_storage(f"sqlite:///{tmp_path}/optuna.db"))
    assert sorted(t.state.name for t in study.trials) == ["FAIL", "FAIL", "PRUNED", "PRUNED"]


def test_too_many_bn_images_is_one_line_before_any_trial(shared_data, test_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = _args(shared_data, test_cache, tmp_path, "search.n_trials=1", "search.study_name=toomany",
                 "screen.bn_images=100000")
    with pytest.raises(UserError, match=r"^screen\.bn_images=100000 is larger than the train split \(256 images\)"):
        run_search(compose_config(*args), args)
    assert optuna.get_all_study_summaries(open_storage(f"sqlite:///{tmp_path}/optuna.db")) == []


def test_a_latency_threshold_screens_out_plans_by_predicted_latency_before_fine_tuning(
        shared_data, test_cache, tmp_path, monkeypatch):
    """search.screen.latency=lut with search.max_latency_ms, one plan per trial: a plan whose predicted latency
    breaks the threshold is recorded PRUNED with the reason and never fine-tuned. The same seed samples the same
    plans, so a first study without a binding threshold tells which plans the second one must skip."""
    monkeypatch.chdir(tmp_path)
    common = ("search.screen.latency=lut", "search.screen.test_images=100", "search.seed=7")
    loose = _args(shared_data, test_cache, tmp_path, "search.n_trials=3", "search.study_name=loose",
                  "search.max_latency_ms=1000", *common)
    run_search(compose_config(*loose), loose)
    storage = open_storage(f"sqlite:///{tmp_path}/optuna.db")
    first = optuna.load_study(study_name="loose", storage=storage).trials
    assert [t.state for t in first] == [TrialState.COMPLETE] * 3  # nothing gated, nothing screened out by rank
    predicted = [t.user_attrs[LATENCY] for t in first]
    assert all(t.user_attrs["screen/latency_source"] == "predicted" for t in first)
    assert not any(ABN in t.user_attrs for t in first)  # one plan a batch: nothing to rank, no accuracy measured
    threshold = sorted(predicted)[1]  # the median plan stays, the slowest is skipped
    # what the second study's length rests on: three distinct figures, the slowest not last (else it stops at 2)
    assert len(set(predicted)) == 3 and predicted.index(max(predicted)) < 2

    tight = _args(shared_data, test_cache, tmp_path, "search.n_trials=2", "search.study_name=tight",
                  f"search.max_latency_ms={threshold!r}", *common)
    run_search(compose_config(*tight), tight)
    second = optuna.load_study(study_name="tight", storage=storage).trials
    assert [t.params for t in second] == [t.params for t in first]  # the same plans, in the same order
    for t, ms in zip(second, predicted, strict=True):
        if ms <= threshold:
            assert t.state == TrialState.COMPLETE and SCREENED_OUT not in t.user_attrs
        else:
            assert t.state == TrialState.PRUNED and "mlflow_run_id" not in t.user_attrs  # never fine-tuned
            assert t.user_attrs[SCREENED_OUT].endswith(
                f"{ms:.2f} ms: its predicted (latency=lut) latency breaks search.max_latency_ms={threshold:g}")


def test_a_latency_threshold_no_plan_meets_stops_the_search(shared_data, test_cache, tmp_path, monkeypatch):
    import hybridsweep.search.screen

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hybridsweep.search.screen, "MAX_BLOCKED", 3)
    args = _args(shared_data, test_cache, tmp_path, "search.n_trials=2", "search.study_name=unreachable",
                 "search.screen.latency=lut", "search.screen.test_images=100", "search.max_latency_ms=0.001")
    with pytest.raises(UserError, match=r"the last 3 plans could not add anything to the study: 3 broke "
                                        r"search.max_latency_ms=0.001 \(the fastest [\d.]+ ms\); raise"):
        run_search(compose_config(*args), args)
    study = optuna.load_study(study_name="unreachable", storage=open_storage(f"sqlite:///{tmp_path}/optuna.db"))
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 3


def test_a_search_never_fine_tunes_the_same_pruned_model_twice(shared_data, test_cache, tmp_path, monkeypatch):
    """Without screening (one plan per trial): depth shares this close remove the same blocks and solve to the
    same width, so every plan after the first is the model trial 0 fine-tuned. Each is PRUNED before its
    fine-tune, naming trial 0, does not count toward n_trials, and after MAX_BLOCKED of them the search stops
    with one line instead of sampling forever."""
    import hybridsweep.search.screen

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hybridsweep.search.screen, "MAX_BLOCKED", 3)
    args = _args(shared_data, test_cache, tmp_path, "search.n_trials=2", "search.study_name=twins",
                 "search.depth_share=[0.5,0.5001]")
    with pytest.raises(UserError, match=r"the last 3 plans could not add anything to the study: 3 were models the "
                                        r"study had already fine-tuned; the sampler keeps proposing"):
        run_search(compose_config(*args), args)
    study = optuna.load_study(study_name="twins", storage=open_storage(f"sqlite:///{tmp_path}/optuna.db"))
    first, *twins = study.trials
    assert first.state == TrialState.COMPLETE and len(twins) == 3
    for t in twins:
        assert t.state == TrialState.PRUNED and t.user_attrs[MODEL] == first.user_attrs[MODEL]
        assert t.user_attrs[SCREENED_OUT] == "the same pruned model and recipe as trial 0, already fine-tuned"
        assert "finetuned/top1" not in t.user_attrs  # stopped before evaluating or fine-tuning
        assert t.user_attrs["mlflow_run_id"] is None  # its run logged nothing worth keeping: in MLflow's trash
    assert sum(counted(t) for t in study.trials) == 1
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("twins").experiment_id],
                              filter_string="tags.`hybridsweep.kind` = 'trial'")
    assert [r.info.run_id for r in runs] == [first.user_attrs["mlflow_run_id"]]

    # the stop counts twins of this run only: a rerun tries MAX_BLOCKED more plans before it stops again
    with pytest.raises(UserError, match=r"the last 3 plans could not add anything"):
        run_search(compose_config(*args), args)
    again = optuna.load_study(study_name="twins", storage=open_storage(f"sqlite:///{tmp_path}/optuna.db"))
    assert len(again.trials) == 7 and sum(counted(t) for t in again.trials) == 1


def test_a_plan_whose_model_was_screened_before_takes_its_scores(shared_data, test_cache, tmp_path, monkeypatch):
    """Depth shares this close prune to one model: the batch's first plan is screened, the other three take its
    scores instead of re-estimating BatchNorm and measuring again."""
    import hybridsweep.trial

    monkeypatch.chdir(tmp_path)
    calls = []
    real = hybridsweep.trial.adaptive_bn
    monkeypatch.setattr(hybridsweep.trial, "adaptive_bn", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    args = _args(shared_data, test_cache, tmp_path, "search.n_trials=1", "search.study_name=repeats",
                 "search.depth_share=[0.5,0.5001]", "search.screen.candidates=4", "search.screen.test_images=100")
    run_search(compose_config(*args), args)
    study = optuna.load_study(study_name="repeats", storage=open_storage(f"sqlite:///{tmp_path}/optuna.db"))
    first, *repeats = study.trials
    assert len(repeats) == 3 and first.state == TrialState.COMPLETE and "screen/scores_of" not in first.user_attrs
    for t in repeats:
        assert t.user_attrs["screen/scores_of"] == first.number and t.user_attrs[MODEL] == first.user_attrs[MODEL]
        assert (t.user_attrs[ABN], t.user_attrs[LATENCY]) == (first.user_attrs[ABN], first.user_attrs[LATENCY])
    assert len(calls) == 2  # one screen, one fine-tuned trial: the repeats measured nothing
