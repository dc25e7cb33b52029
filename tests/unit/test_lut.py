"""The lut predictor: shipped profile, pruned models, profile files, fallback, and a tiny calibration."""

import copy
import json
from dataclasses import replace

import pytest
import torch

from hybridsweep.errors import UserError
from hybridsweep.metrics.complexity import count
from hybridsweep.metrics.latency import LATENCY_BACKENDS, measure_latency
from hybridsweep.metrics.latency.fallback import measure_or_fallback
from hybridsweep.metrics.latency.lut import (
    DEFAULT_PROFILE,
    FORMAT,
    Profile,
    calibrate,
    load_profile,
    model_shapes,
    profile_path,
)
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
    apply_plan(copied, plan_from_ratios(copied, channel_ratio, layer_ratio, **options), scores)
    return copied


def test_shipped_profile_predicts_resnet56(resnet56):
    result = measure_latency(resnet56, "lut", input_shape=SHAPE)
    profile = load_profile(DEFAULT_PROFILE)
    assert result.source == "predicted" and result.backend == "lut"
    assert result.device == profile.device and result.facts["profile"] == DEFAULT_PROFILE
    assert result.median_ms > 0 and result.p90_ms >= result.median_ms * 0.5
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
        assert sum(s.macs for s in shapes) == count(model, (1, *SHAPE)).macs
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


@pytest.fixture
def unreachable_jetson(tmp_path):
    """A jetson config that fails fast: nothing listens on port 9, and known_hosts is empty."""
    paramiko = pytest.importorskip("paramiko")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    key_file = tmp_path / "id_rsa"
    paramiko.RSAKey.generate(1024).write_private_key_file(str(key_file))
    return {
        "key_file": str(key_file),
        "backend": "jetson",
        "host": "127.0.0.1",
        "port": 9,
        "connect_timeout_s": 2,
        "known_hosts": str(known_hosts),
        "cache_dir": str(tmp_path / "cache"),
    }


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
        with pytest.raises(UserError, match=r"^latency\.host: cannot reach"):
            measure_or_fallback(model, settings, input_shape=SHAPE)
    with pytest.raises(UserError, match=r"latency\.fallback='cpu'"):
        measure_or_fallback(model, {**unreachable_jetson, "fallback": "cpu"}, input_shape=SHAPE)


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
