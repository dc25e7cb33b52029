"""The latency profile: per-block latencies measured once on a device, and the prediction made from them.

Why: a sweep needs a latency for every trial, and the target device (a Jetson) is slow to measure on or not
always reachable. A CIFAR ResNet is a stem, a chain of BasicBlocks and a head, and pruning only changes the
blocks' channel counts and how many there are, so a table of block latencies keyed by shape —
(kind, input channels, middle channels, output channels, stride, input resolution, precision) — summed over
the pruned model's actual modules predicts its latency. Shapes missing from the table are interpolated
piecewise-linearly in MACs between the measured shapes of the same kind, stride and resolution.

Isolated blocks miss what a whole model costs beyond them (a block timed in a loop keeps its weights in cache,
one in a model does not; dispatch between blocks): the plain sum under-predicts, by ~9% to ~20% on this
machine's CPU. So a profile also stores `measured ≈ a * sum(table terms) + b`, fitted on a handful of whole
pruned models measured when it was calibrated (`hybridsweep.calibration` builds profiles; the `lut` backend
in `lut.py` predicts from one).
"""

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hybridsweep.errors import UserError
from hybridsweep.metrics.latency.result import LatencyResult
from hybridsweep.models.resnet import BasicBlock, CifarResNet, conv1x1, conv3x3

FORMAT = 1
KINDS = ("stem", "basic", "basic_proj", "head")  # basic: identity shortcut; basic_proj: 1x1-conv shortcut


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
                "recalibrate it with hybridsweep.calibration.calibrate"
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
            f"({', '.join(shipped_profiles())}) or the path of one written by hybridsweep.calibration.calibrate"
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
