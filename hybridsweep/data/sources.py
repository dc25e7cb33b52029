"""Data sets as whole uint8 tensors in memory, cut into deterministic class-balanced subsets.

`load_dataset` gets a source's decoded entry from `decoding.py` (decoded once, then read from the cache), fixes
the normalisation statistics and cuts the subsets; `Dataset.fingerprint` keys every cache derived from it.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hybridsweep.cache import Cache, digest
from hybridsweep.data.decoding import TORCHVISION_SETS, load_image_folder, load_torchvision
from hybridsweep.errors import UserError

Stats = tuple[tuple[float, float, float], tuple[float, float, float]]

CIFAR_STATS: dict[str, Stats] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5070, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


@dataclass(frozen=True, eq=False)
class Dataset:
    """Both splits as uint8 N×3×H×W tensors plus the normalisation to apply; `fingerprint` keys derived caches."""

    name: str
    classes: list[str]
    train_x: Tensor = field(repr=False)
    train_y: Tensor = field(repr=False)
    test_x: Tensor = field(repr=False)
    test_y: Tensor = field(repr=False)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    fingerprint: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """One sample's (C, H, W): what models are built, counted, pruned, timed and exported for."""
        return tuple(self.train_x.shape[1:])


def load_dataset(
    name: str,
    root: str | None,
    *,
    stats: Any,
    train_subset: int | None,
    test_subset: int | None,
    cache_root: Path,
    download: bool = True,
    seed: int = 0,
) -> Dataset:
    """Load (decoding once, then from cache) a data set, cut deterministic class-balanced subsets, fix its stats."""
    preset = _parse_stats(stats)
    cache = Cache(cache_root)
    if name in TORCHVISION_SETS:
        source, entry = load_torchvision(name, root, cache, download)
    elif name == "imagefolder":
        source, entry = load_image_folder(root, cache)
    else:
        raise UserError(f"data.name: unknown data set {name!r}; choose cifar100, cifar10 or imagefolder")
    mean, std = (tuple(entry["mean"]), tuple(entry["std"])) if preset is None else preset
    train = _subset(entry["train_y"], train_subset, seed, "data.train_subset", "train")
    test = _subset(entry["test_y"], test_subset, seed, "data.test_subset", "test")
    subset_seed = None if train_subset is None and test_subset is None else seed
    return Dataset(
        name=name,
        classes=list(entry["classes"]),
        train_x=_take(entry["train_x"], train),
        train_y=_take(entry["train_y"], train),
        test_x=_take(entry["test_x"], test),
        test_y=_take(entry["test_y"], test),
        mean=mean,
        std=std,
        fingerprint=digest("dataset", source, train_subset, test_subset, subset_seed, mean, std),
    )


def calibration_batch(
    ds: Dataset, n: int, seed: int = 0, *, setting: str = "calibration_batch n"
) -> tuple[Tensor, Tensor]:
    """A fixed class-balanced sample of the train split, for pruning criteria that look at data.

    The order interleaves classes, so any prefix of it is balanced too. `setting` names the caller's config key in
    the error for a bad `n`.
    """
    _check_size(n, len(ds.train_y), setting, "train")
    index = _stratified_indices(ds.train_y, n, seed)
    return ds.train_x.index_select(0, index), ds.train_y.index_select(0, index)


def with_test_subset(ds: Dataset, n: int, seed: int = 0) -> Dataset:
    """`ds` with its test split cut to a class-balanced `n` images (the train split shared, not copied)."""
    _check_size(n, len(ds.test_y), "test subset", "test")
    index = _stratified_indices(ds.test_y, n, seed)
    return replace(ds, test_x=ds.test_x.index_select(0, index), test_y=ds.test_y.index_select(0, index))


# ---- statistics ------------------------------------------------------------------------------------------------


def _parse_stats(stats: Any) -> Stats | None:
    """None means "auto" (computed from the train split); otherwise the (mean, std) to normalise with."""
    if isinstance(stats, str):
        if stats == "auto":
            return None
        if stats in CIFAR_STATS:
            return CIFAR_STATS[stats]
    elif (pair := _mean_std(stats)) is not None:
        return pair
    raise UserError(
        f"data.stats: got {stats!r}; use 'auto' (computed from the train split), a preset "
        f"({', '.join(CIFAR_STATS)}) or {{mean: [r, g, b], std: [r, g, b]}} with std > 0"
    )


def _mean_std(stats: Any) -> Stats | None:
    """Accept {mean, std} as a mapping (dict, DictConfig), an object with those attributes, or a (mean, std) pair."""
    if isinstance(stats, Mapping):
        parts = (stats.get("mean"), stats.get("std"))
    elif hasattr(stats, "mean") and hasattr(stats, "std"):
        parts = (stats.mean, stats.std)
    elif isinstance(stats, Sequence) and len(stats) == 2:
        parts = tuple(stats)
    else:
        return None
    try:
        mean, std = (tuple(float(v) for v in part) for part in parts)
    except (TypeError, ValueError):
        return None
    return (mean, std) if len(mean) == len(std) == 3 and min(std) > 0 else None


# ---- subsets ---------------------------------------------------------------------------------------------------


def _check_size(n: Any, total: int, setting: str, split: str) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise UserError(f"{setting}: got {n!r}; give a positive number of images, or null for the whole split")
    if n > total:
        raise UserError(f"{setting}={n} is larger than the {split} split ({total} images); use at most {total}")


def _subset(labels: Tensor, n: int | None, seed: int, setting: str, split: str) -> Tensor | None:
    if n is None:
        return None
    _check_size(n, len(labels), setting, split)
    return _stratified_indices(labels, n, seed).sort().values


def _stratified_indices(labels: Tensor, n: int, seed: int) -> Tensor:
    """`n` indices drawn round-robin over the classes in a seeded random order: balanced as far as sizes allow.

    Each sample gets its rank within its class (after a seeded shuffle); sorting by (rank, shuffled class order)
    takes one sample of every class per round, and classes that run out simply drop from later rounds.
    """
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(labels), generator=generator)
    shuffled = labels[perm]
    counts = torch.bincount(shuffled)
    grouped = torch.argsort(shuffled, stable=True)
    rank = torch.empty_like(grouped)
    rank[grouped] = torch.arange(len(grouped)) - (torch.cumsum(counts, 0) - counts)[shuffled[grouped]]
    class_order = torch.randperm(len(counts), generator=generator)
    key = rank * len(counts) + class_order[shuffled]
    return perm[torch.argsort(key)[:n]]


def _take(x: Tensor, index: Tensor | None) -> Tensor:
    return x if index is None else x.index_select(0, index)
