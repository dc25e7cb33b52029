"""Calibration: build a latency profile for the `lut` backend by measuring on a device (task=calibrate).

It lives beside the tasks, not under `metrics/`, because it prunes models to find the shapes to measure: the
grid comes from pruning the model itself with uniform channel ratios (with and without round_to=8) and
collecting the shapes Torch-Pruning produces, so every width a ResNet-20/56 plan can have is covered exactly
when the ratio step is fine enough. ResNet-20 and ResNet-56 share their stage widths, hence their shapes.
A handful of whole pruned models, measured too, fit the profile's correction `measured ≈ a * sum + b` by
least squares on relative errors.
- cpu, onnxruntime, cuda: ratio step 0.01, 275 shapes (every reachable width) and 12 whole models, x `passes`;
  the shipped cpu profile (5 passes) took 64 s on this idle 2-core machine (its `calibration_s`).
- tensorrt, jetson: every shape is an engine build plus a trtexec run (~10-20 s on a TX2 or Orin), so the
  step is 0.1: 92 shapes and 12 whole models, 104 runs x 10-20 s = 17-35 minutes of device time (one pass).
  The jetson backend caches each result by ONNX content, so an interrupted calibration resumes where it stopped.

Calibrate from Python, e.g. for a TX2:
    calibrate("jetson", {"host": "tx2.local", "precision": "fp16"}, num_classes=100, input_shape=(3, 32, 32),
              out_path=Path("profiles/tx2-fp16.json"))
then use it with `latency=lut latency.profile=profiles/tx2-fp16.json`.
"""

import copy
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from hybridsweep.cache import atomic_write
from hybridsweep.errors import UserError
from hybridsweep.metrics.latency import LATENCY_BACKENDS, LatencyResult
from hybridsweep.metrics.latency.profile import Correction, Entry, Profile, Shape, model_shapes
from hybridsweep.models import build_model
from hybridsweep.pruning.criteria import CRITERIA
from hybridsweep.pruning.layer import remove_blocks
from hybridsweep.pruning.plan import PrunePlan, apply_plan, plan_from_ratios

TRTEXEC_BACKENDS = ("tensorrt", "jetson")  # each measurement builds an engine: use a coarse grid


def grid_shapes(
    model: nn.Module, scores, ratios: Sequence[float], round_tos: Sequence[int | None], input_shape, precision: str
) -> list[Shape]:
    """Every distinct shape that uniform channel pruning of `model` produces at these ratios, in first-seen order.

    Identity blocks of a stage are pruned alike, so a proxy keeping one per stage gives the same shapes at a
    fraction of the pruning time (pruning full ResNet-56s at every ratio took minutes).
    """
    proxy, stages_kept = copy.deepcopy(model), set()
    for name, _, removable in model.residual_blocks():
        if removable:
            stage = name.split(".")[0]
            if stage in stages_kept:
                remove_blocks(proxy, [name])
            stages_kept.add(stage)
    shapes: dict[Shape, None] = {}
    for round_to in round_tos:
        for ratio in ratios:
            pruned = copy.deepcopy(proxy)
            apply_plan(pruned, PrunePlan(channel_ratio=float(ratio), round_to=round_to), scores, input_shape)
            shapes.update(dict.fromkeys(model_shapes(pruned, input_shape, precision)))
    return list(shapes)


def calibration_plans(model: nn.Module, count: int, seed: int) -> list[PrunePlan]:
    """The unpruned model plus random plans across the whole range, for fitting the correction."""
    rng = random.Random(seed)
    plans = [PrunePlan()]
    while len(plans) < count:
        plans.append(
            plan_from_ratios(
                model,
                round(rng.uniform(0.0, 0.8), 3),
                round(rng.uniform(0.0, 0.7), 3),
                order=rng.choice(("layer_first", "channel_first")),
                round_to=rng.choice((None, None, 8)),
            )
        )
    return plans


def plan_key(plan: PrunePlan) -> dict:
    """What identifies a plan's architecture, as stored in the profile's correction models."""
    return {
        "channel_ratio": plan.channel_ratio,
        "blocks": plan.blocks,
        "order": plan.order,
        "round_to": plan.round_to,
        "removed_blocks": list(plan.removed_blocks),
    }


def calibrate(
    backend_name: str,
    backend_settings: dict,
    *,
    model_name: str = "resnet56",
    num_classes: int,
    input_shape: tuple[int, int, int],
    out_path: Path,
    name: str | None = None,
    ratios: Sequence[float] | None = None,
    round_tos: Sequence[int | None] = (None, 8),
    whole_models: int = 12,
    passes: int = 1,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Measure the table and the whole-model correction on a measuring backend; write the profile atomically.

    `input_shape` is the data's sample shape (C, H, W): table entries are keyed by resolution, so a profile
    predicts models fed images of that size only. `ratios` default: every 0.01 in [0, 0.9] (each reachable
    width), or every 0.1 on trtexec backends where each measurement is an engine build. `passes` > 1 measures
    everything that often, shapes in shuffled order, and keeps each one's fastest pass: other work on a shared
    machine only ever slows a run down, and the profile should describe the device, not the load of the moment.
    """
    if backend_name == "lut":
        raise UserError("calibrate needs a measuring backend (cpu, onnxruntime, cuda, tensorrt, jetson), not lut")
    if whole_models < 2 or passes < 1:
        raise ValueError("calibrate needs whole_models >= 2 (to fit a and b) and passes >= 1")
    start = time.perf_counter()
    backend = LATENCY_BACKENDS.build(backend_name, **backend_settings)
    precision = getattr(backend, "precision", "fp32")
    batch_size = getattr(backend, "batch_size", 1)
    if ratios is None:
        step = 0.1 if backend_name in TRTEXEC_BACKENDS else 0.01
        ratios = np.round(np.arange(0.0, 0.9 + step / 2, step), 2).tolist()

    torch.manual_seed(seed)  # the block scores, hence which blocks the plans remove, must be reproducible
    model = build_model(model_name, num_classes=num_classes).eval()
    scores = CRITERIA.build("l1").scores(model, None)
    shapes = grid_shapes(model, scores, ratios, round_tos, input_shape, precision)
    plans, models = [], []
    for plan in calibration_plans(model, whole_models, seed):
        pruned = copy.deepcopy(model)
        plans.append(apply_plan(pruned, plan, scores, input_shape))
        models.append(pruned)

    rng = random.Random(seed)
    block_runs: dict[Shape, list[LatencyResult]] = defaultdict(list)
    model_runs: list[list[float]] = [[] for _ in models]
    first: LatencyResult | None = None
    with tqdm(
        total=passes * (len(shapes) + len(models)), desc=f"calibrating lut on {backend_name}", disable=not progress
    ) as bar:
        for _ in range(passes):
            for shape in rng.sample(shapes, len(shapes)):
                result = backend.measure(shape.module().eval(), input_shape=shape.input_shape())
                block_runs[shape].append(result)
                first = first or result
                bar.update()
            for index in rng.sample(range(len(models)), len(models)):
                model_runs[index].append(backend.measure(models[index], input_shape=input_shape).median_ms)
                bar.update()

    def entry(shape: Shape) -> Entry:
        fastest = min(block_runs[shape], key=lambda r: r.median_ms)
        return Entry(shape, fastest.median_ms, fastest.p90_ms, fastest.mean_ms)

    entries = [entry(s) for s in shapes]
    profile = Profile(
        name=name or out_path.stem,
        backend=backend_name,
        device=first.device,
        precision=precision,
        batch_size=batch_size,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        entries=tuple(e for e in entries if e.shape.kind not in ("stem", "head")),
        stem=tuple(e for e in entries if e.shape.kind == "stem"),
        head=tuple(e for e in entries if e.shape.kind == "head"),
    )
    sums = [float(profile.block_sum(m, input_shape)[0][0]) for m in models]
    measured = [min(runs) for runs in model_runs]
    described = [
        {"model": model_name, "plan": plan_key(p), "sum_ms": s, "measured_ms": m}
        for p, s, m in zip(plans, sums, measured, strict=True)
    ]
    facts = {k: v for k, v in first.facts.items() if k != "converged"}
    meta = {
        "model": model_name,
        "num_classes": num_classes,
        "input_shape": list(input_shape),
        "settings": dict(backend_settings),
        "facts": facts,
        "grid": {"ratios": list(ratios), "round_to": list(round_tos), "passes": passes},
        "calibration_s": round(time.perf_counter() - start, 1),
    }
    profile = replace(profile, correction=Correction.fit(sums, measured, described), meta=meta)
    atomic_write(out_path, lambda tmp: tmp.write_text(profile.to_json()))
    return out_path
