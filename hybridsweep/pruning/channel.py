"""Width pruning through Torch-Pruning's dependency graph: real tensor surgery with coupled channels handled.

The classifier is never pruned. Channel choice comes from cached scores (`ScoreImportance`); every removal is
recorded in the `ChannelOrigin`, so later steps and depth pruning still find each channel's baseline score.
"""

import torch
import torch_pruning as tp
from torch import nn

from hybridsweep.pruning.criteria import ChannelOrigin, ScoreImportance, Scores
from hybridsweep.shapes import batch_shape


def prune_channels(
    model: nn.Module,
    ratio: float,
    scores: Scores,
    origin: ChannelOrigin,
    *,
    input_shape: tuple[int, ...],
    round_to: int | None = None,
    iterative_steps: int = 1,
    scope: str = "local",
) -> None:
    """Remove `ratio` of the prunable channels, in `iterative_steps` equal steps; `input_shape` (C, H, W) is the
    sample the dependency graph is traced with.

    scope="local" removes that fraction from every layer (uniform width, as in the paper); "global" removes that
    fraction of all prunable channels, wherever the (mean-normalised) scores are lowest, which moves the FLOP
    count in steps of one channel instead of one channel per layer.
    """
    if ratio <= 0:
        return
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # the tracing forward pass must not update BatchNorm statistics
    pruner = tp.pruner.BasePruner(
        model,
        torch.zeros(batch_shape(input_shape, 1), device=device),
        importance=ScoreImportance(scores, origin),
        pruning_ratio=ratio,
        iterative_steps=iterative_steps,
        ignored_layers=[m for m in model.modules() if isinstance(m, nn.Linear)],
        round_to=round_to,
        global_pruning=scope == "global",
        max_pruning_ratio=0.9,
    )
    for _ in range(iterative_steps):
        for group in pruner.step(interactive=True):
            origin.record(group)
            group.prune()
    model.train(was_training)
