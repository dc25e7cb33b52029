"""Data sets as whole uint8 tensors in memory: CIFAR-100/10 through torchvision, or an image-folder tree.

Every source is decoded once into the cache (namespace "decoded"), so a sweep's trials load ready tensors in about
a second instead of unpickling or decoding 60k images each time. The per-channel statistics of the full train split
are computed during that one build and cached with the images.
"""

import os
import posixpath
import tarfile
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torchvision
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from hybridsweep.cache import Cache, digest, file_digest
from hybridsweep.errors import UserError

Stats = tuple[tuple[float, float, float], tuple[float, float, float]]

CIFAR_STATS: dict[str, Stats] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5070, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_TORCHVISION = {
    "cifar100": ("CIFAR-100", torchvision.datasets.CIFAR100),
    "cifar10": ("CIFAR-10", torchvision.datasets.CIFAR10),
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_LAYOUT = "train/<class>/*.jpg and test/<class>/*.jpg (.jpeg and .png work too), or a .tar.gz of that tree"


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
    if name in _TORCHVISION:
        source, entry = _load_torchvision(name, root, cache, download)
    elif name == "imagefolder":
        source, entry = _load_image_folder(root, cache)
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


def _channel_stats(x: Tensor) -> tuple[list[float], list[float]]:
    """Exact per-channel mean/std in [0, 1] units from a 256-bin histogram (float64, no float copy of the data)."""
    values = torch.arange(256, dtype=torch.float64) / 255
    mean, std = [], []
    for channel in range(x.shape[1]):
        counts = torch.bincount(x[:, channel].reshape(-1), minlength=256).double()
        m = (counts * values).sum() / counts.sum()
        var = (counts * values**2).sum() / counts.sum() - m**2
        mean.append(m.item())
        std.append(var.clamp_min(0).sqrt().item())
    return mean, std


def _entry(classes: list[str], train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor) -> dict:
    mean, std = _channel_stats(train_x)
    return {
        "classes": classes,
        "train_x": train_x,
        "train_y": train_y,
        "test_x": test_x,
        "test_y": test_y,
        "mean": mean,
        "std": std,
    }


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


# ---- CIFAR through torchvision ---------------------------------------------------------------------------------


def _load_torchvision(name: str, root: str | None, cache: Cache, download: bool) -> tuple[str, dict]:
    """Download if needed (torchvision), then decode once; the cache key is the files' path, size and mtime."""
    label, cls = _TORCHVISION[name]
    where = Path(root).expanduser() if root else cache.root / "torchvision"
    folder = where / cls.base_folder
    files = [folder / f for f, _ in cls.train_list + cls.test_list] + [folder / cls.meta["filename"]]
    if not all(f.is_file() for f in files):
        try:
            cls(str(where), train=False, download=download)
        except (OSError, RuntimeError) as exc:
            reason = f"{type(exc).__name__}: {exc}" if download else "download=False"
            raise UserError(
                f"data.root: {label} is not at {where} and could not be downloaded ({reason}); "
                f"pass data.root=DIR holding {cls.base_folder}/ (or run once with internet)"
            ) from exc
    source = digest(name, [_identity(f) for f in files])
    return source, cache.get_or_build("decoded", source, lambda: _read_torchvision(label, cls, where))


def _read_torchvision(label: str, cls: type, where: Path) -> dict:
    try:
        train, test = cls(str(where), train=True), cls(str(where), train=False)
    except RuntimeError as exc:
        raise UserError(
            f"data.root: the {label} files in {where / cls.base_folder} are corrupted ({exc}); "
            "delete that folder and run again"
        ) from exc

    def nchw(split) -> Tensor:  # torchvision keeps N×H×W×C numpy arrays
        return torch.from_numpy(split.data).permute(0, 3, 1, 2).contiguous()

    def labels(split) -> Tensor:
        return torch.tensor(split.targets, dtype=torch.int64)

    return _entry(list(train.classes), nchw(train), labels(train), nchw(test), labels(test))


def _identity(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


# ---- image-folder trees ----------------------------------------------------------------------------------------


def _load_image_folder(root: str | None, cache: Cache) -> tuple[str, dict]:
    """A tree keys the cache by its files' names, sizes and mtimes; an archive by its sha256.

    An archive is decoded straight from its stream, never unpacked: Python's tarfile needs 15-25 s to write the
    60k CIFAR files and we would read them back once, while one streaming pass takes 3 s and writes nothing.
    """
    if not root:
        raise UserError(f"data.root: data.name=imagefolder needs data.root=DIR holding {_LAYOUT}")
    path = Path(root).expanduser()
    if not path.exists():
        raise UserError(f"data.root: {path} does not exist; point it at a folder holding {_LAYOUT}")
    if path.is_file():
        if not path.name.endswith((".tar.gz", ".tgz")):
            raise UserError(f"data.root: {path} is a file but not a .tar.gz/.tgz archive; expected {_LAYOUT}")
        sha = cache.get_or_build("archives", digest(_identity(path)), lambda: file_digest(path))
        source = digest("imagefolder", "archive", sha)
        build = lambda: _decode_archive(path)
    else:
        files = _tree_images(path)
        listing = _listing(files, path)
        source = digest("imagefolder", "tree", [(name, *files[name]) for name in listing.names])
        build = lambda: _decode(listing, lambda name: read_file(str(path / name)))
    return source, cache.get_or_build("decoded", source, build)


def _tree_images(root: Path) -> dict[str, tuple[int, int]]:
    """Relative POSIX path -> (size, mtime_ns) of every image file under `root` (scandir: one stat per image)."""
    found, folders = {}, [""]
    while folders:
        folder = folders.pop()
        with os.scandir(root / folder) as entries:
            for entry in entries:
                name = f"{folder}/{entry.name}" if folder else entry.name
                if entry.is_dir():
                    folders.append(name)
                elif entry.name.lower().endswith(IMAGE_SUFFIXES) and entry.is_file():
                    stat = entry.stat()
                    found[name] = (stat.st_size, stat.st_mtime_ns)
    return found


class _Listing(NamedTuple):
    names: list[str]  # POSIX paths relative to the root: train images first, then test images
    labels: list[int]
    classes: list[str]
    n_train: int


def _listing(paths: Iterable[str], shown: Path) -> _Listing:
    """Find `train/<class>/...` and `test/<class>/...` at the root or inside its single top folder.

    Classes are the sorted train folder names and files sort by name within a class, as in torchvision's
    ImageFolder; hidden files and folders (macOS `._x.jpg`) and other suffixes are skipped.
    """
    images = [
        parts
        for parts in (posixpath.normpath(p).split("/") for p in paths)
        if parts[-1].lower().endswith(IMAGE_SUFFIXES) and not any(part.startswith(".") for part in parts)
    ]
    single_top = len({parts[0] for parts in images}) == 1
    for depth in (0, 1) if single_top else (0,):
        splits: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
        for parts in images:
            if len(parts) >= depth + 3 and parts[depth] in splits:
                splits[parts[depth]].append((parts[depth + 1], "/".join(parts)))
        if splits["train"] and splits["test"]:
            break
    else:
        raise UserError(f"data.root: {shown} has no images in train/<class>/ and test/<class>/; expected {_LAYOUT}")
    classes = sorted({name for name, _ in splits["train"]})
    unknown = sorted({name for name, _ in splits["test"]} - set(classes))
    if unknown:
        raise UserError(f"data.root: {shown} has test classes {unknown} without train images; expected {_LAYOUT}")
    label = {name: i for i, name in enumerate(classes)}
    train, test = (sorted((label[name], path) for name, path in splits[s]) for s in ("train", "test"))
    return _Listing([p for _, p in train + test], [y for y, _ in train + test], classes, len(train))


def _decode_archive(archive: Path) -> dict:
    """One pass over the (gzip) stream keeps the image files' bytes; then list and decode them like a tree."""
    blobs = {}
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                if member.isfile() and member.name.lower().endswith(IMAGE_SUFFIXES):
                    blobs[posixpath.normpath(member.name)] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserError(f"data.root: cannot read {archive} ({exc}); check the archive, expected {_LAYOUT}") from exc
    listing = _listing(blobs, archive)
    return _decode(listing, lambda name: torch.frombuffer(bytearray(blobs[name]), dtype=torch.uint8))


def _decode(listing: _Listing, read: Callable[[str], Tensor]) -> dict:
    x = _stack_one_size(_decode_images(listing.names, read))
    y = torch.tensor(listing.labels, dtype=torch.int64)
    n = listing.n_train
    return _entry(listing.classes, x[:n], y[:n], x[n:], y[n:])


def _decode_images(names: list[str], read: Callable[[str], Tensor]) -> list[Tensor]:
    """Decode every file to a 3×H×W uint8 tensor (serially: threads only slowed torchvision's decoders here)."""
    images = []
    for name in tqdm(names, desc="decoding images (once)", unit="img", mininterval=1.0):
        try:
            data = read(name)
            jpeg = name.lower().endswith((".jpg", ".jpeg"))
            image = decode_jpeg(data, mode=ImageReadMode.RGB) if jpeg else decode_image(data, ImageReadMode.RGB)
        except (RuntimeError, ValueError) as exc:
            raise UserError(f"data.root: cannot decode {name} ({exc}); remove or replace that file") from exc
        images.append(TF.to_dtype(image, torch.uint8, scale=True))
    return images


def _stack_one_size(images: list[Tensor]) -> Tensor:
    """Stack into one tensor; images of another size are resized (antialiased) to the first image's size."""
    size = tuple(images[0].shape[-2:])
    odd = [i for i, image in enumerate(images) if tuple(image.shape[-2:]) != size]
    if odd:
        warnings.warn(
            f"data.root: {len(odd)} of {len(images)} images are not {size[0]}x{size[1]} like the first one; "
            "resized them (antialiased) to that size",
            stacklevel=2,
        )
        for i in odd:
            images[i] = TF.resize(images[i], list(size), antialias=True)
    return torch.stack(images)
