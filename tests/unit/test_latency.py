"""Latency backends on a small real network, the shared measuring loop and ONNX export; no timing asserts."""

import hashlib
import importlib.util
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from hybridsweep.errors import DeviceUnavailable, UserError
from hybridsweep.export import OnnxMismatchError, check_onnx, export_onnx
from hybridsweep.metrics.latency import LATENCY_BACKENDS, LatencyResult, measure_latency
from hybridsweep.metrics.latency.timing import P90_FACTOR, measure_rounds, summarize

SAMPLE = (3, 32, 32)
QUICK = {"warmup": 2, "round_runs": 5, "max_runs": 40}  # a short loop: these tests check behaviour, not speed


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


def assert_sane(result: LatencyResult, backend: str, batch_size: int = 1) -> None:
    assert result.backend == backend and result.source == "measured"
    assert result.batch_size == batch_size
    assert 0 < result.median_ms <= result.p90_ms
    assert result.mean_ms > 0 and result.std_ms > 0  # timed runs never all take the same nanoseconds
    assert 3 * QUICK["round_runs"] <= result.runs <= QUICK["max_runs"]
    assert result.device
    assert_converged_means_it(result)


def assert_converged_means_it(result: LatencyResult) -> None:
    """`converged` follows timing.py's rule, whichever way this machine's load made it go."""
    converged, ratio = result.facts["converged"], result.p90_ms / result.median_ms
    if converged == "yes":
        assert ratio <= P90_FACTOR
    elif converged.startswith("no (p90"):
        assert ratio > P90_FACTOR and converged.startswith(f"no (p90 is {ratio:.1f}x the median")
    else:  # the loop ends before max_runs only once the two fastest rounds agree
        assert converged.startswith(f"no (the two fastest of {result.runs // QUICK['round_runs']} rounds differ")
        assert result.runs + QUICK["round_runs"] > QUICK["max_runs"]


@pytest.mark.parametrize("backend", ["cpu", "onnxruntime"])
def test_cpu_backends_measure(backend):
    model = small_net().train()
    result = measure_latency(model, backend, input_shape=SAMPLE, **QUICK)
    assert_sane(result, backend)
    assert result.facts["threads"] == "1"
    assert model.training  # the caller's model is measured through a copy, left as it was


@pytest.mark.parametrize("backend", ["cpu", "onnxruntime"])
def test_configured_batch(backend):
    result = measure_latency(small_net(), backend, input_shape=SAMPLE, batch_size=4, **QUICK)
    assert_sane(result, backend, batch_size=4)
    assert set(result.as_metrics()) == {
        f"latency/{backend}/batch4/median_ms",
        f"latency/{backend}/batch4/p90_ms",
        f"latency/{backend}/batch4/mean_ms",
    }


def test_cpu_restores_the_thread_count():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        measure_latency(small_net(), "cpu", input_shape=SAMPLE, threads=1, **QUICK)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_metrics_and_tags():
    result = LatencyResult(
        median_ms=1.0,
        p90_ms=1.5,
        mean_ms=1.1,
        std_ms=0.2,
        runs=40,
        batch_size=1,
        backend="jetson",
        device="NVIDIA Jetson TX2",
        source="measured",
        facts={"l4t": "R32.7.1", "power_mode": "MAXN"},
    )
    assert result.as_metrics() == {
        "latency/jetson/median_ms": 1.0,
        "latency/jetson/p90_ms": 1.5,
        "latency/jetson/mean_ms": 1.1,
    }
    assert result.as_tags() == {
        "latency.backend": "jetson",
        "latency.device": "NVIDIA Jetson TX2",
        "latency.source": "measured",
        "latency.l4t": "R32.7.1",
        "latency.power_mode": "MAXN",
    }
    with pytest.raises(ValueError, match="source"):
        LatencyResult(1.0, 1.0, 1.0, 0.0, 1, 1, "cpu", "x", source="guessed")


LOOP = {"warmup": 0, "round_runs": 5, "rel_tol": 0.02}


def summary(rounds, rel_tol=0.02):
    return summarize(rounds, rel_tol=rel_tol, backend="cpu", device="test", batch_size=1, facts={})


def test_loop_stops_once_the_fastest_rounds_agree():
    rounds = measure_rounds({"m": lambda: 1.0}, max_runs=100, **LOOP)
    assert len(rounds["m"]) == 3  # min_rounds
    assert summary(rounds["m"]).facts["converged"] == "yes"


def test_loop_stops_at_max_runs_when_it_never_settles():
    times = iter(float(2**i) for i in range(1000))  # every run twice as slow as the last: no two rounds agree
    rounds = measure_rounds({"m": lambda: next(times)}, max_runs=23, **LOOP)
    assert [len(r) for r in rounds["m"]] == [5, 5, 5, 5]
    assert summary(rounds["m"]).facts["converged"].startswith("no (the two fastest")


def test_models_are_interleaved_round_by_round_in_rotating_order():
    calls = []
    timers = {name: (lambda name=name: calls.append(name) or 1.0) for name in "abc"}
    rounds = measure_rounds(timers, warmup=0, round_runs=2, max_runs=100, rel_tol=0.02)
    assert {len(r) for r in rounds.values()} == {3}
    firsts = [calls[i] for i in range(0, len(calls), 2 * 3)]  # the first model of each round
    assert firsts == ["a", "b", "c"]


def test_kept_statistic_ignores_slowed_rounds_and_says_so():
    quiet, busy = [1.0] * 5, [3.0] * 5
    result = summary([busy, quiet, busy, quiet, busy, busy, busy])  # other work slowed most rounds
    assert result.median_ms == 1.0  # the fastest round's median
    assert float(result.facts["plain_median_ms"]) == 3.0  # what a plain median would have reported
    assert result.facts["converged"].startswith("no (p90 is 3.0x the median")
    assert result.facts["statistic"] == "median of the fastest round of 7 rounds x 5 runs"
    assert result.facts["load_avg"]


def test_unknown_backend_lists_the_names():
    with pytest.raises(UserError, match="choose one of: cpu, cuda, jetson, lut, onnxruntime, tensorrt"):
        measure_latency(small_net(), "cpuu", input_shape=SAMPLE)


def test_unknown_or_bad_setting_names_it():
    with pytest.raises(UserError, match=r"latency\.thread is not a setting of latency=cpu; .*threads"):
        LATENCY_BACKENDS.build("cpu", thread=2)
    with pytest.raises(UserError, match=r"latency\.max_runs=10 .*at least 3 x round_runs = 60"):
        LATENCY_BACKENDS.build("onnxruntime", round_runs=20, max_runs=10)
    with pytest.raises(UserError, match=r"latency\.threads"):
        LATENCY_BACKENDS.build("cpu", threads=0)
    with pytest.raises(UserError, match=r"latency\.host is not set"):
        LATENCY_BACKENDS.build("jetson")


def test_jetson_without_paramiko_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "paramiko", None)  # makes `import paramiko` fail as if not installed
    monkeypatch.delitem(sys.modules, "hybridsweep.metrics.latency.jetson", raising=False)
    with pytest.raises(UserError, match=r"latency=jetson needs paramiko: pip install hybridsweep\[jetson\]"):
        LATENCY_BACKENDS.build("jetson", host="jetson.local")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_tensorrt_missing_says_how_to_install():
    with pytest.raises(  # an absent runtime, like an absent GPU: a latency.fallback may stand in
        DeviceUnavailable, match=r"latency=tensorrt needs TensorRT: pip install hybridsweep\[tensorrt\]"
    ):
        measure_latency(small_net(), "tensorrt", input_shape=SAMPLE)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present; test_cuda_measures covers it")
def test_cuda_without_gpu_says_so():
    with pytest.raises(DeviceUnavailable, match="latency=cuda needs a CUDA GPU"):
        measure_latency(small_net(), "cuda", input_shape=SAMPLE)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_measures(precision):
    model = small_net()
    result = measure_latency(model, "cuda", input_shape=SAMPLE, precision=precision, **QUICK)
    assert_sane(result, "cuda")
    assert result.facts["precision"] == precision
    assert next(model.parameters()).device.type == "cpu"  # the caller's model stayed where it was


def test_export_matches_pytorch(tmp_path):
    model = small_net()
    path = export_onnx(model, tmp_path / "net.onnx", input_shape=SAMPLE, opset=13)
    assert check_onnx(model, path, atol=1e-4) <= 1e-4


def test_export_is_deterministic(tmp_path):
    first = export_onnx(small_net(), tmp_path / "a.onnx", input_shape=SAMPLE)
    second = export_onnx(small_net(), tmp_path / "b.onnx", input_shape=SAMPLE)
    assert hashlib.sha256(first.read_bytes()).digest() == hashlib.sha256(second.read_bytes()).digest()


def test_export_batch_axis(tmp_path):
    dynamic = export_onnx(small_net(), tmp_path / "dynamic.onnx", input_shape=SAMPLE)
    session = ort.InferenceSession(str(dynamic), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {"input": np.zeros((3, *SAMPLE), dtype=np.float32)})
    assert output.shape == (3, 10)
    static = export_onnx(
        small_net(), tmp_path / "static.onnx", input_shape=SAMPLE, batch_size=4, dynamic_batch=False
    )
    session = ort.InferenceSession(str(static), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [4, *SAMPLE]


def test_check_onnx_catches_a_mismatch(tmp_path):
    path = export_onnx(small_net(seed=0), tmp_path / "net.onnx", input_shape=SAMPLE)
    with pytest.raises(OnnxMismatchError, match="differ by up to"):
        check_onnx(small_net(seed=1), path)
