"""Depth pruning: remove whole residual blocks, ranked by the mean score of their filters.

Raw filter scores are not comparable across stages (deeper stages have smaller weights, other widths and
resolutions), so by default each filter score is first divided by the mean score of its stage; blocks with the
same output width form a stage. `score_norm="none"` keeps the paper's raw mean. A removed block becomes
nn.Identity, so the other modules keep their names (and their cached scores stay addressable).
"""

import torch
from torch import nn

from hybridsweep.errors import UserError
from hybridsweep.pruning.criteria import ChannelOrigin, Scores


def _block_convs(block_name: str, origin: ChannelOrigin) -> list[str]:
    return [name for name in origin.index if name.startswith(block_name + ".")]


def block_scores(model: nn.Module, scores: Scores, origin: ChannelOrigin, score_norm: str) -> dict[str, float]:
    """Score of every removable block: the mean of its surviving filters' (stage-normalised) scores."""
    blocks = model.residual_blocks()
    convs = {name: _block_convs(name, origin) for name, _, _ in blocks}
    stage_of = {name: len(scores[convs[name][-1]]) for name, _, _ in blocks}
    stage_mean: dict[int, float] = {}
    if score_norm == "stage":
        for stage in set(stage_of.values()):
            members = [scores[c] for name, s in stage_of.items() if s == stage for c in convs[name]]
            stage_mean[stage] = torch.cat(members).double().mean().clamp_min(1e-12).item()
    out = {}
    for name, _, removable in blocks:
        if not removable:
            continue
        values = torch.cat([scores[c][origin.index[c]] for c in convs[name]]).double()
        out[name] = values.mean().item() / stage_mean.get(stage_of[name], 1.0)
    return out


def removable_count(model: nn.Module) -> int:
    return sum(removable for _, _, removable in model.residual_blocks())


def blocks_for_ratio(model: nn.Module, layer_ratio: float) -> int:
    """How many blocks `layer_ratio` removes; removing every removable block is refused."""
    total = removable_count(model)
    n = round(layer_ratio * total)
    if total and n >= total:
        raise UserError(
            f"layer_ratio={layer_ratio} would remove all {total} removable blocks; "
            f"use a value below {(total - 0.5) / total:.3f}"
        )
    return n


def choose_blocks(model: nn.Module, scores: Scores, origin: ChannelOrigin, n: int, score_norm: str) -> list[str]:
    ranked = sorted(block_scores(model, scores, origin, score_norm).items(), key=lambda item: item[1])
    return [name for name, _ in ranked[:n]]


def remove_blocks(model: nn.Module, names: list[str] | tuple[str, ...]) -> None:
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        if isinstance(getattr(parent, child), nn.Identity):
            raise ValueError(f"block {name} was already removed")
        setattr(parent, child, nn.Identity())
