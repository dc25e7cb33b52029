"""Data sets decoded once to uint8 tensors, with augmentation and normalisation as batched ops on the device.

`augment` and `normalize` live in `hybridsweep.data.augment` (not re-exported: the function would shadow the module).
"""

from hybridsweep.data.batches import eval_batches, steps_per_epoch, train_batches
from hybridsweep.data.sources import CIFAR_STATS, Dataset, calibration_batch, load_dataset

__all__ = [
    "CIFAR_STATS",
    "Dataset",
    "calibration_batch",
    "eval_batches",
    "load_dataset",
    "steps_per_epoch",
    "train_batches",
]
