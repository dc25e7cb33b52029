"""The lut predictor: shipped profile, pruned models, profile files, fallback, and a tiny calibration."""

import copy
import errno
import importlib.util
import json
import re
from dataclasses import replace

import pytest
import torch

from hybridsweep.calibration import calibrate
from hybridsweep.errors import DeviceUnavailable, UserError
from hybridsweep.metrics.complexity import count
from hybridsweep.metrics.latency import LATENCY_BACKENDS, measure_latency
from hybridsweep.metrics.latency.fallback import measure_or_fallback
from hybridsweep.metrics.latency.lut import DEFAULT_PROFILE
from hybridsweep.metrics.latency.profile import FORMAT, Profile, load_profile, model_shapes, profile_path
from hybridsweep.models import build_model
from hybridsweep.pruning.criteria import CRITERIA
from hybridsweep.pruning.plan import apply_plan, plan_from_ratios

SHAPE = (3, 32, 32)


@pytest.fixture(scope="module")
def resnet56():
    torch.manual_seed(0)
    return build_model("resnet56", num_classes=100).eval()


def pruned(model, channel_ratio, layer_ratio, **options):
    copied = copy.deepcopy(model)
    scores = CRITERIA.build("l1", seed=0).scores(copied, None)
    apply_plan(copied, plan_from_ratios(copied, channel_ratio, layer_ratio, **options), scores, SHAPE)
    return copied


def test_shipped_profile_predicts_resnet56(resnet56):
    result = measure_latency(resnet56, "lut", input_shape=SHAPE)
    profile = load_profile(DEFAULT_PROFILE)
    assert result.source == "predicted" and result.backend == "lut"
    assert result.device == profile.device and result.facts["profile"] == DEFAULT_PROFILE
    assert result.median_ms > 0 and result.p90_ms >= result.median_ms  # a p90 is never below the median
    assert result.as_tags()["latency.source"] == "predicted"


def test_pruning_lowers_the_prediction(resnet56):
    lut = LATENCY_BACKENDS.build("lut")
    full = lut.measure(resnet56, input_shape=SHAPE).median_ms
    width = lut.measure(pruned(resnet56, 0.3, 0.0, round_to=8), input_shape=SHAPE)
    deep = lut.measure(pruned(resnet56, 0.0, 0.8), input_shape=SHAPE).median_ms
    assert width.source == "predicted" and 0 < width.median_ms < full
    assert 0 < deep < 0.5 * full


def test_shapes_are_read_from_the_pruned_modules(resnet56):
    """The table terms' MACs add up to the exact count: every conv, at its real width and resolution, is seen."""
    for model in (resnet56, pruned(resnet56, 0.37, 0.3, order="channel_first"), pruned(resnet56, 0.5, 0.2, round_to=8)):
        shapes = model_shapes(model, SHAPE, "fp32")
        assert sum(s.macs for s in shapes) == count(model, SHAPE).macs
        assert [s.kind for s in shapes].count("basic_proj") == 2


def test_missing_shapes_are_interpolated_between_neighbours():
    profile = load_profile(DEFAULT_PROFILE)
    identity = sorted(
        (e for e in profile.entries if e.shape.kind == "basic" and e.shape.resolution == 8), key=lambda e: e.shape.macs
    )
    below, missing, above = identity[10:13]
    thinned = replace(profile, entries=tuple(e for e in profile.entries if e is not missing))
    (median, _, _), interpolated = thinned.lookup(missing.shape)
    assert interpolated
    assert min(below.median_ms, above.median_ms) <= median <= max(below.median_ms, above.median_ms)


def test_profile_round_trips_through_json(tmp_path):
    profile = load_profile(DEFAULT_PROFILE)
    again = Profile.from_json(profile.to_json())
    assert again == profile
    path = tmp_path / "copy.json"
    path.write_text(profile.to_json())
    model = build_model("resnet20", num_classes=100)
    assert load_profile(str(path)).predict(model, SHAPE) == profile.predict(model, SHAPE)


def test_bad_profiles_name_the_setting(tmp_path):
    garbled = tmp_path / "garbled.json"
    garbled.write_text("{not json")
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({**json.loads(profile_path(DEFAULT_PROFILE).read_text()), "format": FORMAT + 1}))
    truncated = tmp_path / "truncated.json"
    truncated.write_text(json.dumps({"format": FORMAT, "name": "x"}))
    for profile, reason in [
        (str(tmp_path / "absent.json"), "does not exist"),
        ("no-such-shipped-profile", "does not exist"),
        (str(garbled), "not a latency profile"),
        (str(newer), f"format {FORMAT + 1}"),
        (str(truncated), "not a valid latency profile"),
    ]:
        with pytest.raises(UserError, match=rf"^latency\.profile.*{reason}"):
            LATENCY_BACKENDS.build("lut", profile=profile)


def test_profile_must_match_batch_and_model():
    with pytest.raises(UserError, match=r"latency\.batch_size=8"):
        LATENCY_BACKENDS.build("lut", batch_size=8)
    lut = LATENCY_BACKENDS.build("lut")
    with pytest.raises(UserError, match=r"latency\.profile.*not MobileNetV2"):
        lut.measure(build_model("mobilenetv2", num_classes=10), input_shape=SHAPE)
    with pytest.raises(UserError, match=r"latency\.profile.*64x64"):
        lut.measure(build_model("resnet20", num_classes=10), input_shape=(3, 64, 64))


def test_fallback_predicts_when_the_device_fails(unreachable_jetson, capsys):
    model = build_model("resnet20", num_classes=100)
    result, tags = measure_or_fallback(model, {**unreachable_jetson, "fallback": "lut"}, input_shape=SHAPE)
    assert result.source == "predicted" and result.backend == "lut" and result.median_ms > 0
    assert tags["latency.fallback"] == "lut"
    assert tags["latency.error"].startswith("latency.host: cannot reach") and "\n" not in tags["latency.error"]
    assert "not on the latency=jetson device" in tags["latency.fallback_note"]
    warning = capsys.readouterr().err
    assert warning.startswith("warning: latency=jetson failed") and warning.count("\n") == 1

    result, tags = measure_or_fallback(model, {**unreachable_jetson, "fallback": "none"}, input_shape=SHAPE)
    assert result is None and tags["latency.fallback"] == "none"


def test_without_fallback_the_error_propagates(unreachable_jetson):
    model = build_model("resnet20", num_classes=100)
    for settings in (unreachable_jetson, {**unreachable_jetson, "fallback": None}):
        with pytest.raises(DeviceUnavailable, match=r"^latency\.host: cannot reach"):
            measure_or_fallback(model, settings, input_shape=SHAPE)
    with pytest.raises(UserError, match=r"latency\.fallback='cpu'"):
        measure_or_fallback(model, {**unreachable_jetson, "fallback": "cpu"}, input_shape=SHAPE)


def fake_device(monkeypatch, answer=None):
    """Stand in for the jetson backend's SSH side: connecting always works, and running trtexec answers
    `answer`, an (exit status, output) pair or an exception to raise. Returns the jetson module."""
    jetson = pytest.importorskip("hybridsweep.metrics.latency.jetson")

    class Client:
        def close(self):
            pass

    def copy_and_run(self, client, onnx_path, remote_onnx, argv):
        if isinstance(answer, BaseException):
            raise answer
        return answer

    monkeypatch.setattr(jetson.JetsonLatency, "_connect", lambda self: Client())
    monkeypatch.setattr(jetson.JetsonLatency, "_device_facts", lambda self, client: {})
    if answer is not None:
        monkeypatch.setattr(jetson.JetsonLatency, "_copy_and_run", copy_and_run)
    return jetson


def assert_mistake_not_fallback(settings: dict, message: str, capsys) -> None:
    """With `fallback: lut`, a configuration mistake still ends the run: a plain UserError naming the
    setting, and no prediction (nor its warning) in its place."""
    model = build_model("resnet20", num_classes=100)
    with pytest.raises(UserError, match=message) as caught:
        measure_or_fallback(model, {**settings, "fallback": "lut"}, input_shape=SHAPE)
    assert type(caught.value) is UserError, f"a configuration mistake must not be a {type(caught.value).__name__}"
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("setting", ["known_hosts", "key_file"])
def test_a_missing_ssh_file_is_a_mistake_not_a_fallback(unreachable_jetson, tmp_path, capsys, setting):
    # The host is unreachable too: only checking the file before connecting gives a UserError here.
    settings = {**unreachable_jetson, setting: str(tmp_path / "no-such-file")}
    assert_mistake_not_fallback(settings, rf"^latency\.{setting}: \S*no-such-file does not exist", capsys)


def test_a_key_file_that_is_no_key_is_a_mistake_not_a_fallback(unreachable_jetson, tmp_path, capsys):
    not_a_key = tmp_path / "id_ed25519.pub"
    not_a_key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA user@host\n")
    settings = {**unreachable_jetson, "key_file": str(not_a_key)}
    assert_mistake_not_fallback(settings, r"^latency\.key_file: cannot read \S*id_ed25519\.pub", capsys)


@pytest.mark.parametrize(
    ("status", "output", "message"),
    [
        (127, "sh: 1: /opt/trt/trtexec: not found", r"^latency\.trtexec: /opt/trt/trtexec not found on "),
        (126, "sh: 1: /opt/trt/trtexec: Permission denied", r"^latency\.trtexec: /opt/trt/trtexec on .* cannot be"),
    ],
)
def test_a_wrong_trtexec_path_is_a_mistake_not_a_fallback(
    unreachable_jetson, monkeypatch, capsys, status, output, message
):
    fake_device(monkeypatch, (status, output))
    assert_mistake_not_fallback({**unreachable_jetson, "trtexec": "/opt/trt/trtexec"}, message, capsys)


def test_an_unusable_remote_dir_is_a_mistake_not_a_fallback(unreachable_jetson, monkeypatch, capsys):
    jetson = fake_device(monkeypatch)
    refused = (1, "mkdir: cannot create directory '/proc/x': No such file or directory")
    monkeypatch.setattr(jetson.JetsonLatency, "_run", lambda self, client, argv, setting, pty=False: refused)
    settings = {**unreachable_jetson, "remote_dir": "/proc/x"}
    assert_mistake_not_fallback(settings, r"^latency\.remote_dir: cannot create /proc/x on ", capsys)

    fake_device(monkeypatch, PermissionError(errno.EACCES, "Permission denied"))  # exists, but not ours
    assert_mistake_not_fallback(settings, r"^latency\.remote_dir: cannot write /proc/x/\w+\.onnx on ", capsys)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ((1, "[E] Engine set up failed"), r"latency\.trtexec: trtexec exited with status 1 on .*Engine set up"),
        ((0, "&&&& PASSED TensorRT.trtexec"), r"latency\.trtexec: /opt/trt/trtexec on .*Performance summary"),
        (ConnectionResetError(errno.ECONNRESET, "reset"), r"latency\.host: the SSH session with .* failed"),
        ("ssh", r"latency\.host: the SSH session with .* failed while measuring \(Server connection dropped"),
    ],
)
def test_a_failed_remote_run_falls_back(unreachable_jetson, monkeypatch, capsys, answer, reason):
    if answer == "ssh":
        answer = pytest.importorskip("paramiko").SSHException("Server connection dropped: ")
    fake_device(monkeypatch, answer)
    model = build_model("resnet20", num_classes=100)
    settings = {**unreachable_jetson, "trtexec": "/opt/trt/trtexec"}
    result, tags = measure_or_fallback(model, {**settings, "fallback": "lut"}, input_shape=SHAPE)
    assert result.source == "predicted" and result.backend == "lut"
    assert tags["latency.fallback"] == "lut" and re.match(reason, tags["latency.error"])
    assert capsys.readouterr().err.startswith("warning: latency=jetson failed, using a lut prediction")
    with pytest.raises(DeviceUnavailable, match=reason):  # the same failure without a fallback
        measure_or_fallback(model, settings, input_shape=SHAPE)


@pytest.mark.parametrize(
    ("backend", "reason"),
    [
        pytest.param(
            "cuda",
            r"latency=cuda needs a CUDA GPU",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present"),
        ),
        pytest.param(
            "tensorrt",
            r"latency=tensorrt needs TensorRT",
            marks=pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is here"),
        ),
    ],
)
def test_a_missing_gpu_or_tensorrt_falls_back(backend, reason, capsys):
    model = build_model("resnet20", num_classes=100)
    result, tags = measure_or_fallback(model, {"backend": backend, "fallback": "lut"}, input_shape=SHAPE)
    assert result.source == "predicted" and tags["latency.fallback"] == "lut"
    assert re.match(reason, tags["latency.error"])


def test_fallback_is_unused_when_measuring_works():
    model = build_model("resnet20", num_classes=10)
    settings = {"backend": "cpu", "warmup": 1, "round_runs": 2, "max_runs": 6, "fallback": "lut"}
    result, tags = measure_or_fallback(model, settings, input_shape=SHAPE)
    assert result.source == "measured" and tags == {}


def test_tiny_calibration_writes_a_loadable_profile(tmp_path):
    out = calibrate(
        "cpu",
        {"threads": 1, "warmup": 1, "round_runs": 2, "max_runs": 6},
        model_name="resnet20",
        num_classes=10,
        input_shape=SHAPE,
        out_path=tmp_path / "tiny.json",
        ratios=[0.0, 0.5],
        round_tos=[None],
        whole_models=2,
        progress=False,
    )
    profile = load_profile(str(out))
    assert (profile.name, profile.backend, profile.batch_size) == ("tiny", "cpu", 1)
    assert len(profile.correction.models) == 2 and profile.meta["calibration_s"] > 0
    model = pruned(build_model("resnet20", num_classes=10), 0.5, 0.0)
    measured = {e.shape for e in (*profile.entries, *profile.stem, *profile.head)}
    assert set(model_shapes(model, SHAPE, "fp32")) <= measured
    result = LATENCY_BACKENDS.build("lut", profile=str(out)).measure(model, input_shape=SHAPE)
    assert result.source == "predicted" and result.median_ms > 0 and result.facts["interpolated"] == "0"
