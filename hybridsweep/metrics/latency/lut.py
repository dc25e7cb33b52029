"""Latency predicted from a per-block table measured once on a device: the `lut` backend (source="predicted").

Why: a sweep needs a latency for every trial, and the target device (a Jetson) is slow to measure on or not
always reachable. A CIFAR ResNet is a stem, a chain of BasicBlocks and a head, and pruning only changes the
blocks' channel counts and how many there are, so a table of block latencies keyed by shape —
(kind, input channels, middle channels, output channels, stride, input resolution, precision) — summed over
the pruned model's actual modules predicts its latency. Shapes missing from the table are interpolated
piecewise-linearly in MACs between the measured shapes of the same kind, stride and resolution.

Isolated blocks miss what a whole model costs beyond them (a block timed in a loop keeps its weights in cache,
one in a model does not; dispatch between blocks): the plain sum under-predicts, by ~9% to ~20% on this
machine's CPU. So calibration also measures a handful of whole pruned models and fits
`measured ≈ a * sum(table terms) + b` by least squares on relative errors; the profile stores a and b.

The grid comes from pruning the model itself with uniform channel ratios (with and without round_to=8) and
collecting the shapes Torch-Pruning produces, so every width a ResNet-20/56 plan can have is covered exactly
when the ratio step is fine enough. ResNet-20 and ResNet-56 share their stage widths, hence their shapes.
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
import json
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timezone
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from hybridsweep.cache import atomic_write
from hybridsweep.errors import UserError
from hybridsweep.metrics.latency.result import BackendSettings, LatencyResult, invalid
from hybridsweep.models import build_model
from hybridsweep.models.resnet import BasicBlock, CifarResNet, conv1x1, conv3x3
from hybridsweep.pruning.criteria import CRITERIA
from hybridsweep.pruning.layer import remove_blocks
from hybridsweep.pruning.plan import PrunePlan, apply_plan, plan_from_ratios

FORMAT = 1
DEFAULT_PROFILE = "cpu-resnet-1thread"
KINDS = ("stem", "basic", "basic_proj", "head")  # basic: identity shortcut; basic_proj: 1x1-conv shortcut
TRTEXEC_BACKENDS = ("tensorrt", "jetson")  # each measurement builds an engine: use a coarse grid


@dataclass(frozen=True)
class Shape:
    """The table key. A stem is 3x3 conv+BN+ReLU (mid = out); a head is pooling + linear (out = classes)."""

    kind: str
    in_channels: int
    mid_channels: int
    out_channels: int
    stride: int
    resolution: int  # input height = width
    precision: str

    @property
    def group(self) -> tuple[str, int, int, str]:
        """Shapes that interpolate into each other: same kind, stride, resolution and precision."""
        return self.kind, self.stride, self.resolution, self.precision

    @property
    def macs(self) -> int:
        if self.kind == "head":
            return self.in_channels * self.out_channels
        pixels = ((self.resolution - 1) // self.stride + 1) ** 2
        if self.kind == "stem":
            return pixels * 9 * self.in_channels * self.out_channels
        macs = pixels * 9 * self.mid_channels * (self.in_channels + self.out_channels)
        return macs + (pixels * self.in_channels * self.out_channels if self.kind == "basic_proj" else 0)

    def module(self) -> nn.Module:
        """A module of this shape to time on its own; seeded, so its ONNX export (the jetson cache key) repeats."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return self._build()

    def _build(self) -> nn.Module:
        if self.kind == "stem":
            return nn.Sequential(
                conv3x3(self.in_channels, self.out_channels, self.stride),
                nn.BatchNorm2d(self.out_channels),
                nn.ReLU(inplace=True),
            )
        if self.kind == "head":
            pool = nn.AdaptiveAvgPool2d((1, 1))
            return nn.Sequential(pool, nn.Flatten(1), nn.Linear(self.in_channels, self.out_channels))
        block = BasicBlock(self.in_channels, self.out_channels, self.stride)
        block.conv1 = conv3x3(self.in_channels, self.mid_channels, self.stride)
        block.bn1 = nn.BatchNorm2d(self.mid_channels)
        block.conv2 = conv3x3(self.mid_channels, self.out_channels)
        block.downsample = None
        if self.kind == "basic_proj":
            block.downsample = nn.Sequential(
                conv1x1(self.in_channels, self.out_channels, self.stride), nn.BatchNorm2d(self.out_channels)
            )
        return block

    def input_shape(self) -> tuple[int, int, int]:
        return self.in_channels, self.resolution, self.resolution


@dataclass(frozen=True)
class Entry:
    shape: Shape
    median_ms: float
    p90_ms: float
    mean_ms: float

    def to_dict(self) -> dict:
        return {**asdict(self.shape), "median_ms": self.median_ms, "p90_ms": self.p90_ms, "mean_ms": self.mean_ms}

    @classmethod
    def from_dict(cls, data: dict) -> "Entry":
        shape = Shape(**{f.name: (str if f.type is str else int)(data[f.name]) for f in fields(Shape)})
        if shape.kind not in KINDS:
            raise ValueError(f"unknown kind {shape.kind!r}")
        times = [float(data[key]) for key in ("median_ms", "p90_ms", "mean_ms")]
        if not all(t > 0 for t in times):
            raise ValueError(f"non-positive time in {data}")
        return cls(shape, *times)


def model_shapes(model: nn.Module, input_shape: Sequence[int], precision: str) -> list[Shape]:
    """The stem, every remaining block and the head of a (pruned) CIFAR ResNet, read from its actual modules."""
    if not isinstance(model, CifarResNet):
        raise UserError(
            f"latency.profile: the lut predictor covers CIFAR ResNets (stem, BasicBlocks, head), not "
            f"{type(model).__name__}; use a measuring backend such as latency=cpu for it"
        )
    _, height, width = input_shape
    if height != width:
        raise UserError(f"latency=lut: profiles are keyed by square inputs; got {height}x{width}")
    stem = model.conv1
    shapes = [Shape("stem", stem.in_channels, stem.out_channels, stem.out_channels, stem.stride[0], height, precision)]
    resolution = (height - 1) // stem.stride[0] + 1
    for _, block, _ in model.residual_blocks():
        stride = block.conv1.stride[0]
        kind = "basic" if block.downsample is None else "basic_proj"
        shapes.append(
            Shape(
                kind,
                block.conv1.in_channels,
                block.conv1.out_channels,
                block.conv2.out_channels,
                stride,
                resolution,
                precision,
            )
        )
        resolution = (resolution - 1) // stride + 1
    fc = model.fc
    shapes.append(Shape("head", fc.in_features, fc.in_features, fc.out_features, 1, resolution, precision))
    return shapes


@dataclass(frozen=True)
class Correction:
    """measured ≈ a * (sum of table terms) + b, fitted on whole models measured at calibration time."""

    a: float = 1.0
    b: float = 0.0
    models: tuple[dict, ...] = ()  # each: plan, sum_ms, measured_ms (so a benchmark can hold them out)

    def __call__(self, sum_ms: float) -> float:
        return self.a * sum_ms + self.b

    @classmethod
    def fit(cls, sums_ms: Sequence[float], measured_ms: Sequence[float], models: Sequence[dict]) -> "Correction":
        """Least squares on relative errors, (a*s + b - m) / m, since a prediction is judged relative to m."""
        sums, measured = np.asarray(sums_ms, float), np.asarray(measured_ms, float)
        design = np.stack([sums / measured, 1 / measured], axis=1)
        (a, b), *_ = np.linalg.lstsq(design, np.ones_like(measured), rcond=None)
        return cls(float(a), float(b), tuple(models))


@dataclass(frozen=True)
class Profile:
    name: str
    backend: str
    device: str
    precision: str
    batch_size: int
    created: str
    entries: tuple[Entry, ...]  # blocks
    stem: tuple[Entry, ...]
    head: tuple[Entry, ...]
    correction: Correction = Correction()
    meta: dict | None = None  # how it was calibrated: model, settings, facts, calibration_s

    def __post_init__(self):
        table = {entry.shape: entry for entry in (*self.entries, *self.stem, *self.head)}
        groups: dict[tuple, list[Entry]] = defaultdict(list)
        for entry in table.values():
            groups[entry.shape.group].append(entry)
        object.__setattr__(self, "_table", table)
        object.__setattr__(self, "_groups", {k: sorted(v, key=lambda e: e.shape.macs) for k, v in groups.items()})

    def to_json(self) -> str:
        data = {
            "format": FORMAT,
            "name": self.name,
            "backend": self.backend,
            "device": self.device,
            "precision": self.precision,
            "batch_size": self.batch_size,
            "created": self.created,
            **(self.meta or {}),
            "correction": {"a": self.correction.a, "b": self.correction.b, "models": list(self.correction.models)},
        }
        # One table row per line, so a profile reads (and diffs) as a table.
        tables = {"stem": self.stem, "head": self.head, "entries": self.entries}
        rows = [
            f' "{key}": [\n' + ",\n".join(f"  {json.dumps(e.to_dict())}" for e in entries) + "\n ]"
            for key, entries in tables.items()
        ]
        return json.dumps(data, indent=1)[: -len("\n}")] + ",\n" + ",\n".join(rows) + "\n}\n"

    @classmethod
    def from_json(cls, text: str, source: str = "profile") -> "Profile":
        """Parse a profile; anything wrong is a UserError naming `latency.profile`."""
        try:
            data = json.loads(text)
            version = data["format"]
        except (ValueError, TypeError, KeyError) as exc:
            raise UserError(f"latency.profile: {source} is not a latency profile ({exc}); recalibrate it") from None
        if version != FORMAT:
            raise UserError(
                f"latency.profile: {source} has format {version!r}, this hybridsweep reads format {FORMAT}; "
                "recalibrate it with hybridsweep.metrics.latency.lut.calibrate"
            )
        try:
            correction = data["correction"]
            top = {"name", "backend", "device", "precision", "batch_size", "created", "correction", "format"}
            return cls(
                name=str(data["name"]),
                backend=str(data["backend"]),
                device=str(data["device"]),
                precision=str(data["precision"]),
                batch_size=int(data["batch_size"]),
                created=str(data["created"]),
                entries=tuple(Entry.from_dict(e) for e in data["entries"]),
                stem=tuple(Entry.from_dict(e) for e in data["stem"]),
                head=tuple(Entry.from_dict(e) for e in data["head"]),
                correction=Correction(float(correction["a"]), float(correction["b"]), tuple(correction["models"])),
                meta={k: v for k, v in data.items() if k not in top | {"entries", "stem", "head"}},
            )
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise UserError(
                f"latency.profile: {source} is not a valid latency profile ({type(exc).__name__}: {exc}); "
                "recalibrate it"
            ) from None

    def lookup(self, shape: Shape) -> tuple[np.ndarray, bool]:
        """(median, p90, mean) of one shape, and whether it was interpolated rather than measured."""
        entry = self._table.get(shape)
        if entry is not None:
            return np.array([entry.median_ms, entry.p90_ms, entry.mean_ms]), False
        anchors = self._groups.get(shape.group)
        if not anchors:
            covered = sorted({f"{k} stride {s} at {r}x{r} ({p})" for k, s, r, p in self._groups})
            raise UserError(
                f"latency.profile: profile {self.name!r} has no {shape.kind} shapes at stride {shape.stride} and "
                f"{shape.resolution}x{shape.resolution} ({shape.precision}); it covers {'; '.join(covered)}; "
                "calibrate a profile for this model and input size"
            )
        macs = np.array([e.shape.macs for e in anchors], float)
        times = np.array([[e.median_ms, e.p90_ms, e.mean_ms] for e in anchors])
        if shape.macs <= macs[0] or shape.macs >= macs[-1]:
            # Outside the measured range the nearest anchor scales in proportion to the MACs.
            end = 0 if shape.macs <= macs[0] else -1
            return times[end] * shape.macs / macs[end], True
        return np.array([np.interp(shape.macs, macs, times[:, i]) for i in range(3)]), True

    def block_sum(self, model: nn.Module, input_shape: Sequence[int]) -> tuple[np.ndarray, int, int]:
        """Summed (median, p90, mean) of the model's table terms, how many terms, how many interpolated."""
        shapes = model_shapes(model, input_shape, self.precision)
        looked_up = [self.lookup(shape) for shape in shapes]
        return sum(times for times, _ in looked_up), len(shapes), sum(interp for _, interp in looked_up)

    def predict(self, model: nn.Module, input_shape: Sequence[int]) -> LatencyResult:
        (median, p90, mean), terms, interpolated = self.block_sum(model, input_shape)
        predicted = float(self.correction(median))
        return LatencyResult(
            median_ms=predicted,
            p90_ms=float(predicted * p90 / median),
            mean_ms=float(predicted * mean / median),
            std_ms=None,
            runs=0,
            batch_size=self.batch_size,
            backend="lut",
            device=self.device,
            source="predicted",
            facts={
                "profile": self.name,
                "profile_backend": self.backend,
                "profile_created": self.created,
                "terms": str(terms),
                "interpolated": str(interpolated),
                "correction": f"{self.correction.a:.4g} x sum + {self.correction.b:.4g} ms",
            },
        )


def profile_path(profile: str) -> Path:
    """A shipped profile's name (hybridsweep/profiles/<name>.json), or the path of a calibrated one."""
    if "/" not in profile and not profile.endswith(".json"):
        return Path(str(resources.files("hybridsweep") / "profiles" / f"{profile}.json"))
    return Path(profile).expanduser()


def shipped_profiles() -> list[str]:
    folder = resources.files("hybridsweep") / "profiles"
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def load_profile(profile: str) -> Profile:
    path = profile_path(profile)
    try:
        stat = path.stat()
    except OSError:
        raise UserError(
            f"latency.profile={profile!r}: {path} does not exist; use a shipped profile "
            f"({', '.join(shipped_profiles())}) or the path of one written by lut.calibrate"
        ) from None
    return _load(path, stat.st_mtime_ns)


@lru_cache(maxsize=8)
def _load(path: Path, _mtime_ns: int) -> Profile:
    """Parsed once per file version: a sweep predicts many trials from the same profile."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"latency.profile: cannot read {path} ({exc})") from None
    return Profile.from_json(text, source=str(path))


@dataclass(frozen=True)
class LutLatency(BackendSettings):
    """Predicts from a calibrated profile; the result says predicted, and on which device the table was measured."""

    name = "lut"
    profile: str = DEFAULT_PROFILE
    batch_size: int = 1

    def __post_init__(self):
        table = load_profile(self.profile)
        if self.batch_size != table.batch_size:
            raise invalid(
                "batch_size",
                self.batch_size,
                f"profile {table.name!r} was measured at batch {table.batch_size}; use that or calibrate another",
            )

    def measure(self, model: nn.Module, *, input_shape: tuple[int, ...]) -> LatencyResult:
        return load_profile(self.profile).predict(model, input_shape)


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
    from hybridsweep.metrics.latency import LATENCY_BACKENDS  # the registry imports this module

    if backend_name == "lut":
        raise UserError("lut.calibrate needs a measuring backend (cpu, onnxruntime, cuda, tensorrt, jetson), not lut")
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
