"""Parameters, MACs and FLOPs: the one place they are defined.

MACs are the multiply-accumulates of convolutions and linear layers (the figure papers quote: ResNet-56 at
32x32 has ~125.75 M); FLOPs = 2 x MACs. Element-wise work (BN, ReLU, additions, pooling) is left out, as in
torch's FlopCounterMode — Torch-Pruning's counter adds it, which is why its ResNet-56 figure reads 127.4 M.
Counting is a forward pass with hooks: exact for any pruned shape and cheap (tens of ms for ResNet-56).
"""

import hashlib
from dataclasses import dataclass

import torch
from torch import nn

from hybridsweep.shapes import batch_shape


@dataclass(frozen=True)
class Complexity:
    params: int
    macs: int

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def as_metrics(self) -> dict[str, int]:
        return {"params": self.params, "macs": self.macs, "flops": self.flops}

    def reductions(self, baseline: "Complexity") -> dict[str, float]:
        """Percent removed relative to the baseline, for each count."""
        mine, theirs = self.as_metrics(), baseline.as_metrics()
        return {f"{k}_reduction_pct": 100.0 * (1 - mine[k] / theirs[k]) for k in mine}


def _layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output.numel() // output.shape[0] * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return output.numel() // output.shape[0] * module.in_features
    return 0


class single_thread:
    """Run many tiny forward passes on one thread: two threads on a busy 2-core machine wait on each other and
    turn a 15 ms count into 200 ms (measured with benchmarks/prune_cost.py); on an idle machine it costs nothing."""

    def __enter__(self):
        self.previous = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.previous)


@torch.no_grad()
def count(model: nn.Module, input_shape: tuple[int, ...]) -> Complexity:
    """Exact params and per-image MACs of `model` for one sample of `input_shape` (C, H, W): MACs grow with the
    image's area, so they are only meaningful at the size the data set has."""
    total = 0

    def hook(module, _inputs, output):
        nonlocal total
        total += _layer_macs(module, output)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    device = next(model.parameters()).device
    try:
        model.eval()
        with single_thread():
            model(torch.zeros(batch_shape(input_shape, 1), device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return Complexity(params=params, macs=int(total))



def architecture_signature(model: nn.Module) -> str:
    """A short hash of every parameter's and buffer's name and shape: two trials whose plans lead to the same
    architecture (same blocks removed, same widths) share it, whatever their weights, so its latency is
    measured once and they are one point on a front."""
    shapes = ";".join(f"{name}:{tuple(t.shape)}" for name, t in model.state_dict().items())
    return hashlib.sha256(f"{type(model).__name__}|{shapes}".encode()).hexdigest()[:16]
