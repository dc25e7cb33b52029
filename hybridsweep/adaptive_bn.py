"""Adaptive BatchNorm (EagleEye, ECCV 2020): re-estimate a pruned model's BatchNorm statistics on a few
training images, so that its accuracy before fine-tuning says something about its accuracy after.

Pruning keeps the running means and variances of the old network, which no longer match the features of the
new one: top-1 right after pruning ranks plans poorly. Resetting the statistics and re-estimating them as a
cumulative average over `images` class-balanced, un-augmented training images (train-mode forward, no
gradients, no weight changes) costs a few seconds and ranks plans as fine-tuning does (see
`benchmarks/screen_correlation.py`).
"""

import torch
from torch import nn

from hybridsweep.data import Dataset, calibration_batch
from hybridsweep.data.augment import normalize

BATCH = 250  # images per forward pass: the statistics are a cumulative average, so only memory depends on it


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate(model: nn.Module, ds: Dataset, images: int, *, device: torch.device, seed: int = 0) -> int:
    """Re-estimate every BatchNorm layer's running statistics in place; returns how many layers there were
    (0: the model has none and is left as it was). The model is left in eval mode."""
    layers = batchnorms(model)
    if not layers:
        return 0
    x_all, _ = calibration_batch(ds, images, seed, setting="screen.bn_images")
    momenta = [bn.momentum for bn in layers]
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average over every batch, not an exponential one
    model.to(device).train()
    try:
        for start in range(0, len(x_all), BATCH):
            x = x_all[start : start + BATCH].to(device)
            model(normalize(x, ds.mean, ds.std, channels_last=False))
    finally:
        for bn, momentum in zip(layers, momenta, strict=True):
            bn.momentum = momentum
        model.eval()
    return len(layers)
