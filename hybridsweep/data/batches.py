"""Epoch iterators over an in-memory Dataset: index the uint8 tensor, move the small uint8 batch to the device,
then augment and normalise there (a quarter of the bytes of a float batch cross the bus, no worker processes).
"""

from collections.abc import Iterator

import torch
from torch import Tensor

from hybridsweep.data.augment import augment as random_crop_flip
from hybridsweep.data.augment import normalize
from hybridsweep.data.sources import Dataset
from hybridsweep.errors import UserError


def steps_per_epoch(ds: Dataset, batch_size: int, drop_last: bool = True) -> int:
    n = len(ds.train_y)
    return n // batch_size if drop_last else -(-n // batch_size)


def train_batches(
    ds: Dataset,
    batch_size: int,
    *,
    device: torch.device | str,
    generator: torch.Generator,
    augment: bool = True,
    channels_last: bool = True,
    drop_last: bool = True,
) -> Iterator[tuple[Tensor, Tensor]]:
    """One epoch of (normalised float x, int64 y) on `device`, in an order shuffled by `generator`."""
    steps = steps_per_epoch(ds, batch_size, drop_last)
    if steps == 0:
        raise UserError(
            f"batch size {batch_size} is larger than the train split ({len(ds.train_y)} images), so an epoch has no "
            "full batch; lower the batch size or raise data.train_subset"
        )
    order = torch.randperm(len(ds.train_y), generator=generator, device=generator.device).cpu()
    for step in range(steps):
        x, y = _to_device(ds.train_x, ds.train_y, order[step * batch_size : (step + 1) * batch_size], device)
        if augment:
            x = random_crop_flip(x, generator)
        yield normalize(x, ds.mean, ds.std, channels_last), y


def eval_batches(
    ds: Dataset, batch_size: int, *, device: torch.device | str, split: str = "test", channels_last: bool = True
) -> Iterator[tuple[Tensor, Tensor]]:
    """Normalised batches of a split in order, the last one possibly smaller; no augmentation."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    x_all, y_all = (ds.train_x, ds.train_y) if split == "train" else (ds.test_x, ds.test_y)
    for start in range(0, len(y_all), batch_size):
        x, y = _to_device(x_all, y_all, torch.arange(start, min(start + batch_size, len(y_all))), device)
        yield normalize(x, ds.mean, ds.std, channels_last), y


def _to_device(x: Tensor, y: Tensor, index: Tensor, device: torch.device | str) -> tuple[Tensor, Tensor]:
    """Gather the batch on the host and copy it as uint8; pinned memory lets the copy overlap GPU work."""
    x, y = x.index_select(0, index), y.index_select(0, index)
    if torch.device(device).type == "cuda":
        x, y = x.pin_memory(), y.pin_memory()
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)
