"""The screening benchmark's clock (benchmarks/search_efficiency.py): busy seconds to a hypervolume, without the
downtime between the runs of a resumed study."""

import importlib.util
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "search_efficiency.py"
T0 = datetime(2026, 12, 6, 5, 0)
NAMES, REFERENCE = ("top1", "ms"), [80.0, 10.0]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("search_efficiency", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def add(study, state, start: float, end: float, values=None) -> None:
    trial = create_trial(state=state, values=values)
    trial.datetime_start, trial.datetime_complete = at(start), at(end)
    study.add_trial(trial)


@pytest.fixture
def resumed_study():
    """A screened study killed (SIGKILL) while fine-tuning trial 3 at minute 15 and resumed at minute 120, when
    trial 3 was told FAIL: its span runs through the downtime."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    add(study, TrialState.COMPLETE, 0, 10, [88.0, 8.0])
    add(study, TrialState.PRUNED, 10, 11)  # two screened-out plans of one batch, scored together
    add(study, TrialState.PRUNED, 10.5, 11)
    add(study, TrialState.FAIL, 11, 120)
    add(study, TrialState.COMPLETE, 120, 130, [89.0, 6.0])
    rows = [{"trial": 0, "top1": 88.0, "ms": 8.0, "feasible": True},
            {"trial": 4, "top1": 89.0, "ms": 6.0, "feasible": True}]
    return study, rows


WINDOWS = [[at(0).isoformat(), at(15).isoformat()], [at(120).isoformat(), at(130).isoformat()]]


def test_downtime_between_runs_is_not_busy(bench, resumed_study):
    study, rows = resumed_study
    both = 9.0 * 4.0  # trial 4 dominates trial 0: [80, 89] x [6, 10]
    # 10 (trial 0) + 1 (the batch, overlapping spans once) + 4 (trial 3 until the kill) + 10 (trial 4)
    assert bench.seconds_to_reach(study, rows, NAMES, REFERENCE, both, WINDOWS) == 25 * 60
    assert bench.seconds_to_reach(study, rows, NAMES, REFERENCE, both, []) == 130 * 60  # an older ledger


def test_only_the_trials_finished_by_the_first_reaching_one_count(bench, resumed_study):
    study, rows = resumed_study
    assert bench.seconds_to_reach(study, rows, NAMES, REFERENCE, 8.0 * 2.0, WINDOWS) == 10 * 60
    assert bench.seconds_to_reach(study, rows, NAMES, REFERENCE, 36.1, WINDOWS) is None


def test_busy_seconds_counts_overlaps_once(bench):
    spans = [(at(0), at(4)), (at(2), at(6)), (at(3), at(5)), (at(10), at(11))]
    assert bench.busy_seconds(spans, []) == 7 * 60
    assert bench.busy_seconds(spans, [(at(1), at(3)), (at(10.5), at(20))]) == 2.5 * 60


def test_a_ledger_keeps_the_window_of_each_run(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "run_search", lambda cfg, overrides: "study")
    monkeypatch.setattr(bench, "compose_trial_config", lambda overrides: None)
    ledger = tmp_path / "seconds-x.json"
    ledger.write_text('{"wall_s": 5.0, "cpu_s": 4.0, "done": false}')  # written before windows were kept
    _, spent = bench.timed_search([], ledger)
    saved = bench.read_ledger(ledger)
    assert saved == spent and saved["done"] and saved["wall_s"] >= 5.0 and saved["cpu_s"] >= 4.0
    assert len(saved["windows"]) == 1
    start, end = map(datetime.fromisoformat, saved["windows"][0])
    assert start <= end <= datetime.now()
    bench.timed_search([], ledger)  # done: loaded, not run again, nothing added
    assert bench.read_ledger(ledger) == saved
