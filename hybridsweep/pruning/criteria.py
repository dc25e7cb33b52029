"""Channel-importance criteria and their bridge to Torch-Pruning.

A criterion scores every output channel of every convolution of the *baseline* once; the scores are cached
per (baseline, criterion, calibration set), so a sweep never recomputes them. `ScoreImportance` is a
Torch-Pruning `Importance` that serves those cached scores to the dependency graph, following each layer's
surviving channels back to their baseline index as pruning proceeds, and averaging over coupled layers
(residual stages tie many convolutions' channels together).
"""

from abc import ABC, abstractmethod
from functools import partial

import torch
import torch_pruning as tp
from torch import nn

from hybridsweep.registry import Registry

Scores = dict[str, torch.Tensor]  # conv name -> one score per output channel (higher = more important)

CRITERIA: Registry["Criterion"] = Registry("criterion", "criterion")


def conv_bn_pairs(model: nn.Module) -> dict[str, tuple[nn.Conv2d, nn.BatchNorm2d | None]]:
    """Each convolution with the BatchNorm that directly follows it in registration order (if any)."""
    pairs: dict[str, tuple[nn.Conv2d, nn.BatchNorm2d | None]] = {}
    last: str | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            pairs[name] = (module, None)
            last = name
        elif isinstance(module, nn.BatchNorm2d) and last is not None:
            conv = pairs[last][0]
            if conv.out_channels == module.num_features:
                pairs[last] = (conv, module)
            last = None
        elif len(list(module.children())) == 0 and not isinstance(module, (nn.ReLU, nn.ReLU6, nn.Identity)):
            last = None
    return pairs


class Criterion(ABC):
    """Scores the output channels of every convolution of a trained model."""

    needs_data = False  # True: `scores` gets a calibration batch (images normalised, labels)

    def __init__(self, seed: int = 0, **_settings):
        self.seed = seed

    @abstractmethod
    def scores(self, model: nn.Module, calibration: tuple[torch.Tensor, torch.Tensor] | None) -> Scores: ...


class WeightMagnitude(Criterion):
    """The p-norm of each filter's weights (Li et al., 2017)."""

    def __init__(self, p: int, **settings):
        super().__init__(**settings)
        self.p = p

    @torch.no_grad()
    def scores(self, model, calibration=None):
        return {
            name: conv.weight.detach().flatten(1).norm(p=self.p, dim=1).cpu()
            for name, (conv, _) in conv_bn_pairs(model).items()
        }


CRITERIA.register("l1")(partial(WeightMagnitude, p=1))
CRITERIA.register("l2")(partial(WeightMagnitude, p=2))


@CRITERIA.register("bnscale")
class BatchNormScale(Criterion):
    """|gamma| of the channel's BatchNorm (Network Slimming); a conv without BN falls back to its L1 norm."""

    @torch.no_grad()
    def scores(self, model, calibration=None):
        out = {}
        for name, (conv, bn) in conv_bn_pairs(model).items():
            weight = bn.weight if bn is not None else conv.weight.flatten(1).norm(p=1, dim=1)
            out[name] = weight.detach().abs().cpu()
        return out


@CRITERIA.register("random")
class RandomScores(Criterion):
    """Seeded random scores: the control every pruning result should be compared with."""

    def scores(self, model, calibration=None):
        generator = torch.Generator().manual_seed(self.seed)
        return {
            name: torch.rand(conv.out_channels, generator=generator) for name, (conv, _) in conv_bn_pairs(model).items()
        }


def _activation_hooks(model: nn.Module, record) -> list:
    """Call record(conv_name, activation) with each conv's post-BN, post-ReLU output."""
    handles = []
    for name, (conv, bn) in conv_bn_pairs(model).items():
        source = bn if bn is not None else conv
        handles.append(source.register_forward_hook(lambda _m, _i, out, name=name: record(name, torch.relu(out))))
    return handles


@CRITERIA.register("fmrank")
class FeatureMapRank(Criterion):
    """HRank (Lin et al., 2020): the average matrix rank of each channel's feature maps over the calibration set.

    The feature map is the channel's activation after BatchNorm and ReLU; each H x W map's rank is computed
    per image and averaged over images.
    """

    needs_data = True

    def __init__(self, chunk: int = 64, **settings):
        super().__init__(**settings)
        self.chunk = chunk

    @torch.no_grad()
    def scores(self, model, calibration):
        images, _ = calibration
        totals: dict[str, torch.Tensor] = {}

        def record(name, activation):
            ranks = torch.linalg.matrix_rank(activation.float()).sum(dim=0).cpu()
            totals[name] = totals.get(name, 0) + ranks.double()

        was_training = model.training
        model.eval()
        handles = _activation_hooks(model, record)
        try:
            for start in range(0, len(images), self.chunk):
                model(images[start : start + self.chunk])
        finally:
            for handle in handles:
                handle.remove()
            model.train(was_training)
        return {name: (total / len(images)).float() for name, total in totals.items()}


@CRITERIA.register("taylor")
class FirstOrderTaylor(Criterion):
    """|sum over a filter of weight x gradient| of the loss on the calibration set (Molchanov et al., 2019)."""

    needs_data = True

    def __init__(self, chunk: int = 64, **settings):
        super().__init__(**settings)
        self.chunk = chunk

    def scores(self, model, calibration):
        images, labels = calibration
        was_training = model.training
        model.eval()  # BN statistics of the trained model, not of the calibration batch
        model.zero_grad(set_to_none=True)
        try:
            with torch.enable_grad():
                for start in range(0, len(images), self.chunk):
                    logits = model(images[start : start + self.chunk])
                    loss = nn.functional.cross_entropy(logits, labels[start : start + self.chunk], reduction="sum")
                    (loss / len(images)).backward()
            out = {
                name: (conv.weight * conv.weight.grad).flatten(1).sum(dim=1).abs().detach().cpu()
                for name, (conv, _) in conv_bn_pairs(model).items()
            }
        finally:
            model.zero_grad(set_to_none=True)
            model.train(was_training)
        return out


class ChannelOrigin:
    """For each conv, the baseline index of each surviving output channel (channels shift as others go)."""

    def __init__(self, model: nn.Module):
        self.names = {conv: name for name, (conv, _) in conv_bn_pairs(model).items()}
        self.index = {name: torch.arange(conv.out_channels) for conv, name in self.names.items()}

    def scores_of(self, conv: nn.Module, scores: Scores) -> torch.Tensor | None:
        name = self.names.get(conv)
        return None if name is None else scores[name][self.index[name]]

    def record(self, group) -> None:
        """Call before `group.prune()`: drop the removed channels from each pruned conv's index."""
        for dep, idxs in group:
            name = self.names.get(dep.layer)
            if name is not None and _prunes_out_channels(dep):
                keep = torch.ones(len(self.index[name]), dtype=torch.bool)
                keep[list(idxs)] = False
                self.index[name] = self.index[name][keep]


def _prunes_out_channels(dep) -> bool:
    return getattr(dep.pruning_fn, "__name__", "") == "prune_out_channels"


class ScoreImportance(tp.importance.Importance):
    """Torch-Pruning importance from cached baseline scores: mean over the group's coupled convolutions.

    Each conv's scores are divided by their mean first, so layers of different scale weigh alike in a group.
    """

    def __init__(self, scores: Scores, origin: ChannelOrigin):
        self.scores = scores
        self.origin = origin

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor:
        total = count = None
        for i, (dep, idxs) in enumerate(group):
            if not _prunes_out_channels(dep):
                continue
            layer_scores = self.origin.scores_of(dep.layer, self.scores)
            if layer_scores is None:
                continue
            root_idxs = group[i].root_idxs
            values = layer_scores[list(idxs)].double()
            values = values / values.mean().clamp_min(1e-12)
            if total is None:
                size = len(group[0].idxs)
                total, count = torch.zeros(size, dtype=torch.float64), torch.zeros(size, dtype=torch.float64)
            total.index_add_(0, torch.tensor(root_idxs), values)
            count.index_add_(0, torch.tensor(root_idxs), torch.ones_like(values))
        if total is None:
            return None
        return (total / count.clamp_min(1)).float()
