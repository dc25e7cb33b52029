"""PrunePlan: what a trial removes, and the solver that meets a FLOP budget (compound scaling in reverse).

EfficientNet scales depth and width up together; here they are scaled down together. A FLOP budget `keep`
(fraction of the baseline's FLOPs to keep) is split multiplicatively: depth keeps ~keep**depth_share of the FLOPs
by removing whole blocks, width removes channels until the exact count lands within 1% of the budget. Block
removal is discrete, so depth takes as many blocks as fit its share without undershooting the budget, and the
width ratio closes the gap, solved by regula falsi (Illinois) with exact counts on pruned copies (structural pruning
without fine-tuning costs about a second for ResNet-56).
"""

import copy
import json
from dataclasses import asdict, dataclass, replace

from torch import nn

from hybridsweep.errors import UserError
from hybridsweep.metrics.complexity import count, single_thread
from hybridsweep.pruning.channel import prune_channels
from hybridsweep.pruning.criteria import ChannelOrigin, Scores
from hybridsweep.pruning.layer import blocks_for_ratio, choose_blocks, removable_count, remove_blocks

BUDGET_TOLERANCE = 0.01
MAX_CHANNEL_RATIO = 0.9


def _max_channel_ratio(model: nn.Module, round_to: int | None) -> float:
    """The largest width ratio that still shrinks every layer (Torch-Pruning skips a layer it would empty)."""
    if not round_to:
        return MAX_CHANNEL_RATIO
    narrowest = min(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))
    return min(MAX_CHANNEL_RATIO, 1 - round_to / narrowest)


@dataclass(frozen=True)
class PrunePlan:
    channel_ratio: float = 0.0  # fraction of each prunable layer's channels removed
    blocks: int = 0  # residual blocks removed
    order: str = "layer_first"
    score_norm: str = "stage"
    round_to: int | None = None
    iterative_steps: int = 1
    scope: str = "local"  # local: the ratio in every layer; global: of all channels, where scores are lowest
    removed_blocks: tuple[str, ...] = ()  # filled in when the plan is applied (which blocks the scores chose)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "PrunePlan":
        data = json.loads(text)
        data["removed_blocks"] = tuple(data.get("removed_blocks", ()))
        return cls(**data)


def apply_plan(model: nn.Module, plan: PrunePlan, scores: Scores, input_shape: tuple[int, ...]) -> PrunePlan:
    """Prune `model` in place in the plan's order (tracing it on a sample of `input_shape`, (C, H, W)); return
    the plan with the removed blocks filled in."""
    origin = ChannelOrigin(model)

    def depth() -> tuple[str, ...]:
        names = choose_blocks(model, scores, origin, plan.blocks, plan.score_norm)
        remove_blocks(model, names)
        return tuple(names)

    def width() -> None:
        prune_channels(
            model,
            plan.channel_ratio,
            scores,
            origin,
            round_to=plan.round_to,
            iterative_steps=plan.iterative_steps,
            scope=plan.scope,
            input_shape=input_shape,
        )

    if plan.order == "layer_first":
        removed = depth()
        width()
    else:
        width()
        removed = depth()
    return replace(plan, removed_blocks=removed)


def plan_from_ratios(model: nn.Module, channel_ratio: float, layer_ratio: float, **options) -> PrunePlan:
    return PrunePlan(channel_ratio=channel_ratio, blocks=blocks_for_ratio(model, layer_ratio), **options)


@dataclass(frozen=True)
class Solved:
    plan: PrunePlan
    model: nn.Module  # the pruned copy that met the budget
    macs: int
    target_macs: float
    evaluations: int


def solve_budget(
    model: nn.Module,
    scores: Scores,
    keep: float,
    depth_share: float,
    input_shape: tuple[int, ...],
    **options,
) -> Solved:
    """Find the plan whose pruned FLOPs, counted on a sample of `input_shape` (C, H, W), are within 1% of `keep` x
    the baseline's; `model` is left untouched.

    Uniform width moves every layer by whole channels, so near zero it cannot close a small gap; then global
    channel selection is tried (`scope="global"`, recorded in the plan), then one block fewer or one more.
    """
    base = count(model, input_shape).macs
    target = keep * base
    options = {"order": "layer_first", "score_norm": "stage", **options}
    preferred = _depth_blocks(model, scores, keep**depth_share * base, target, input_shape, options["score_norm"])
    best: Solved | None = None
    evaluations = 0
    limit = removable_count(model) - 1
    candidates = [b for b in (preferred, preferred - 1, preferred + 1) if 0 <= b <= limit]
    scope = options.get("scope", "local")
    attempts = [(candidates[0], scope)] + ([(candidates[0], "global")] if scope == "local" else [])
    attempts += [(blocks, s) for s in dict.fromkeys((scope, "global")) for blocks in candidates[1:]]
    for blocks, attempt_scope in attempts:
        solved = _solve_width(model, scores, blocks, target, input_shape, {**options, "scope": attempt_scope})
        evaluations += solved.evaluations
        if best is None or abs(solved.macs / target - 1) < abs(best.macs / target - 1):
            best = solved
        if abs(best.macs / target - 1) <= BUDGET_TOLERANCE:
            break
    return replace(best, evaluations=evaluations)


def _solve_width(model, scores, blocks: int, target: float, input_shape, options) -> Solved:
    """Regula falsi on the width ratio for a fixed number of removed blocks, with exact counts."""
    evaluations = 0

    def evaluate(ratio: float) -> Solved:
        nonlocal evaluations
        evaluations += 1
        candidate = copy.deepcopy(model)
        with single_thread():  # Torch-Pruning traces with batch-1 forwards: one thread is faster on a busy box
            plan = apply_plan(
                candidate, PrunePlan(channel_ratio=ratio, blocks=blocks, **options), scores, input_shape
            )
        return Solved(plan, candidate, count(candidate, input_shape).macs, target, evaluations)

    def error(s: Solved) -> float:
        return abs(s.macs / target - 1)

    lo_ratio, lo = 0.0, evaluate(0.0)
    if lo.macs < target * (1 - BUDGET_TOLERANCE) or error(lo) <= BUDGET_TOLERANCE:
        return lo
    hi_ratio = _max_channel_ratio(model, options.get("round_to"))
    hi = evaluate(hi_ratio)
    if hi.macs > target * (1 + BUDGET_TOLERANCE):
        base = count(model, input_shape).macs
        raise UserError(
            f"budget.flops={target / base:.4g} is infeasible: with {blocks} blocks removed and {hi_ratio:.0%} of the "
            f"channels, the model still keeps {hi.macs / base:.1%} of the FLOPs; raise budget.flops or depth_share"
        )
    best = min((lo, hi), key=error)
    # Below this bracket width no layer's channel count can change any more: the budget sits between two steps.
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    resolution = 0.5 / (sum(widths) if options.get("scope") == "global" else max(widths))
    f_lo, f_hi = lo.macs - target, hi.macs - target
    ratio = 1 - (target / lo.macs) ** 0.5  # first guess: FLOPs fall roughly with the square of the width
    retained = 0  # Illinois variant of regula falsi: halve the stale end's value so the bracket keeps shrinking
    for _ in range(12):
        if error(best) <= BUDGET_TOLERANCE or hi_ratio - lo_ratio < resolution:
            break
        current = evaluate(ratio)
        best = min((best, current), key=error)
        f = current.macs - target
        if f > 0:
            lo_ratio, f_lo = ratio, f
            f_hi = f_hi / 2 if retained == 1 else f_hi
            retained = 1
        else:
            hi_ratio, f_hi = ratio, f
            f_lo = f_lo / 2 if retained == -1 else f_lo
            retained = -1
        ratio = lo_ratio + (hi_ratio - lo_ratio) * f_lo / (f_lo - f_hi)
    return replace(best, evaluations=evaluations)


def _depth_blocks(
    model: nn.Module, scores: Scores, depth_target: float, budget: float, input_shape, score_norm: str
) -> int:
    """The number of lowest-scored blocks whose removal comes closest to the depth share, staying above budget."""
    total = removable_count(model)
    if total == 0:
        return 0
    ranked = choose_blocks(model, scores, ChannelOrigin(model), total - 1, score_norm)
    trial = copy.deepcopy(model)
    best, best_gap = 0, abs(count(trial, input_shape).macs - depth_target)
    for k, name in enumerate(ranked, start=1):
        remove_blocks(trial, [name])
        macs = count(trial, input_shape).macs
        if macs < budget * (1 - BUDGET_TOLERANCE):
            break
        if abs(macs - depth_target) < best_gap:
            best, best_gap = k, abs(macs - depth_target)
    return best
