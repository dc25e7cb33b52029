"""Shapes and classes come from the data: an image folder of 64x64 images in 3 classes gives a 3-way model that
is trained, counted, pruned, timed and exported at 64x64, not at CIFAR's 32x32 with 10 or 100 classes."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torchvision.io import write_jpeg, write_png

import hybridsweep.calibration as calibration
import hybridsweep.metrics.latency as latency_backends
from hybridsweep.artifacts import load_pruned
from hybridsweep.config import validate
from hybridsweep.errors import UserError
from hybridsweep.metrics.complexity import count
from hybridsweep.models import build_model
from hybridsweep.tasks import run_task
from hybridsweep.train import resolve_device
from hybridsweep.trial import run_trial
from hybridsweep.workbench import Workbench, workbench
from tests.helpers import compose_config

CLASSES = ("ant", "bee", "cow")
SAMPLE = (3, 64, 64)
BASELINE_MACS = 163_250_368  # ResNet-20 with a 3-way head at 64x64: 4x its 40.81 M convolution MACs at 32x32


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """train/<class>/ with 8 images and test/<class>/ with 4, PNG and JPEG mixed."""
    root = tmp_path_factory.mktemp("folder")
    generator = torch.Generator().manual_seed(0)
    for split, n in (("train", 8), ("test", 4)):
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                image = torch.randint(0, 256, SAMPLE, generator=generator, dtype=torch.uint8)
                if i % 2:
                    write_png(image, str(folder / f"{i:03d}.png"))
                else:
                    write_jpeg(image, str(folder / f"{i:03d}.jpg"))
    return root


def _config(tree: Path, cache: Path, *extra: str):
    """A baseline trained for 2 steps (model.weights=null), a 2-step fine-tune, a short latency measurement."""
    cfg = compose_config(
        "model=resnet20",
        "model.weights=null",
        "data=imagefolder",
        f"data.root={tree}",
        "baseline.epochs=1",
        "baseline.max_steps=2",
        "baseline.batch_size=8",
        "finetune.epochs=1",
        "finetune.max_steps=2",
        "finetune.batch_size=8",
        "screen.bn_images=24",
        "latency.round_runs=10",
        "latency.max_runs=40",
        "tracking.enabled=false",
        f"paths.cache_dir={cache}",
        *extra,
    )
    validate(cfg)
    return cfg


def test_evaluate_builds_and_trains_a_model_with_one_output_per_folder_class(tree, tmp_path):
    cfg = _config(tree, tmp_path / "cache", "task=evaluate")
    accuracy = run_task(cfg)
    assert accuracy["top5"] == 100.0  # top-k is top-3 with 3 classes: it always hits
    bench = workbench(cfg)
    ds = bench.dataset(cfg)
    assert (ds.input_shape, ds.num_classes, ds.classes) == (SAMPLE, 3, list(CLASSES))
    model = bench.baseline(cfg, ds, resolve_device(cfg.device)).model.cpu().eval()
    assert model.fc.out_features == 3
    with torch.no_grad():
        assert model(torch.zeros(2, *SAMPLE)).shape == (2, 3)


@pytest.mark.slow
def test_trial_counts_prunes_times_and_exports_at_the_data_size(tree, tmp_path):
    cfg = _config(tree, tmp_path / "cache", "+criterion=l1", "channel_ratio=0.3", "layer_ratio=0.3")
    bench = Workbench(tmp_path / "cache")
    timed_at = []
    measure = bench.latency
    bench.latency = lambda model, settings, shape: timed_at.append(shape) or measure(model, settings, shape)
    result = run_trial(cfg, bench, tmp_path / "out")
    m = result.metrics

    assert timed_at == [SAMPLE, SAMPLE]  # the pruned model and the baseline
    assert result.tags["latency.source"] == "measured"
    assert (m["baseline/macs"], m["baseline/flops"]) == (BASELINE_MACS, 2 * BASELINE_MACS)
    model, plan = load_pruned(build_model("resnet20", num_classes=3), result.output_dir)
    assert plan.blocks == 2 and model.fc.out_features == 3
    # convolutions cost 4x at twice the side; the classifier after global pooling costs the same at any size
    head = 2 * model.fc.in_features * model.fc.out_features  # FLOPs
    at32 = count(model, (3, 32, 32))
    assert m["flops"] == 4 * (at32.flops - head) + head
    assert m["flops"] == count(model, SAMPLE).flops

    graph = onnx.load(str(result.output_dir / "model.onnx")).graph
    (onnx_input,), (onnx_output,) = graph.input, graph.output

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert dims(onnx_input) == ["batch", *SAMPLE]  # exported at batch 1, the batch axis left dynamic
    assert dims(onnx_output) == ["batch", 3]
    session = ort.InferenceSession(str(result.output_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": np.zeros((1, *SAMPLE), dtype=np.float32)})
    assert logits.shape == (1, 3)


def test_latency_and_calibrate_tasks_take_classes_and_size_from_the_data(tree, tmp_path, monkeypatch):
    seen = {}
    measure = latency_backends.measure_latency

    def spy(model, backend, *, input_shape, **settings):
        with torch.no_grad():
            seen["latency"] = (tuple(input_shape), tuple(model(torch.zeros(1, *input_shape)).shape))
        return measure(model, backend, input_shape=input_shape, **settings)

    monkeypatch.setattr(latency_backends, "measure_latency", spy)
    metrics = run_task(_config(tree, tmp_path / "cache", "task=latency"))
    assert seen["latency"] == (SAMPLE, (1, 3)) and metrics["latency/cpu/median_ms"] > 0

    def fake_calibrate(backend, settings, **kwargs):  # a real calibration times hundreds of shapes
        seen["calibrate"] = (kwargs["input_shape"], kwargs["num_classes"])
        return kwargs["out_path"]

    monkeypatch.setattr(calibration, "calibrate", fake_calibrate)
    run_task(_config(tree, tmp_path / "cache", "task=calibrate", f"calibration.out={tmp_path / 'p.json'}"))
    assert seen["calibrate"] == (SAMPLE, 3)


def test_latency_task_without_its_data_says_why_it_needs_it(tmp_path):
    cfg = compose_config("task=latency", "model=resnet20", "data=cifar10", "data.download=false",
                         f"paths.cache_dir={tmp_path}", "tracking.enabled=false")
    with pytest.raises(UserError, match=r"^task=latency builds resnet20 for the classes and image size of "
                                        r"data=cifar10, so it needs that data set: data.root: CIFAR-10 is not at"):
        run_task(cfg)
