"""The final pass: one interleaved measurement per architecture, the baseline's among them."""

import copy

import pytest

from hybridsweep.errors import DeviceUnavailable, UserError
from hybridsweep.final_latency import measure_final, try_measure_final
from hybridsweep.metrics.complexity import architecture_signature
from tests.unit.test_latency import QUICK, SAMPLE, small_net

SETTINGS = {"backend": "cpu", "fallback": "lut", **QUICK}


def test_one_measurement_per_architecture_and_the_baseline_shared():
    base = small_net(0)
    retrained = small_net(1)  # other weights, same shapes: the baseline's architecture
    narrow = copy.deepcopy(base)
    narrow[-1] = type(narrow[-1])(16, 5)  # another architecture
    same_as_narrow = copy.deepcopy(narrow)
    assert architecture_signature(retrained) == architecture_signature(base)
    assert architecture_signature(narrow) != architecture_signature(base)
    final = measure_final({"a": retrained, "b": narrow, "c": same_as_narrow}, base, SETTINGS, SAMPLE)
    assert len(final.by_arch) == 2
    assert final.result("a") is final.baseline  # the unpruned architecture is the baseline's own figure
    assert final.result("b") is final.result("c")
    m = final.metrics("b")
    assert m["latency/cpu/final_ms"] == final.result("b").median_ms
    assert m["final/speedup"] == pytest.approx(final.baseline.median_ms / final.result("b").median_ms)
    tags = final.tags("b")
    assert tags["latency.final.pass"] == "one interleaved pass over 2 architectures, the baseline's among them"
    assert tags["latency.final.statistic"].startswith("median of the fastest round")
    assert final.result("b").facts["interleaved_with"] == "1"


def test_a_device_that_cannot_be_reached_leaves_the_trial_figures(unreachable_jetson, capsys):
    assert try_measure_final({"a": small_net()}, small_net(), unreachable_jetson, SAMPLE) is None
    assert "the per-trial latencies stand" in capsys.readouterr().err


def test_a_configuration_mistake_in_the_final_pass_is_raised(unreachable_jetson, tmp_path):
    settings = {**unreachable_jetson, "known_hosts": str(tmp_path / "missing")}
    with pytest.raises(UserError, match=r"^latency\.known_hosts") as raised:
        try_measure_final({"a": small_net()}, small_net(), settings, SAMPLE)
    assert not isinstance(raised.value, DeviceUnavailable)


def test_a_search_measures_the_same_complete_trials_once(monkeypatch, capsys):
    """Two workers finishing together, or a rerun of a finished study, do not re-measure the same front."""
    import optuna
    from optuna.trial import create_trial

    import hybridsweep.search.remeasure
    from hybridsweep.search.study import final_pass
    from hybridsweep.tracking import Tracker

    calls = []
    monkeypatch.setattr(hybridsweep.search.remeasure, "remeasure", lambda studies, cfg: calls.append(1) or {})
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.add_trial(create_trial(values=[90.0, 2.0]))
    final_pass(study, None, Tracker.disabled())
    final_pass(study, None, Tracker.disabled())
    assert len(calls) == 1 and "already measured these trials" in capsys.readouterr().out
    study.add_trial(create_trial(values=[80.0, 1.0]))  # a new trial: a new pass
    final_pass(study, None, Tracker.disabled())
    assert len(calls) == 2
