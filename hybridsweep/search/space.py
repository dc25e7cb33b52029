"""The search space: what a trial's plan may vary (depth_share, the FLOP budget, order, criterion, finetune.lr),
read from `search.*` (ranges already checked by StudyConfig) and the command line (a key given there is fixed)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from optuna.trial import Trial

from hybridsweep.command_line import parse_overrides
from hybridsweep.errors import UserError

# config key on the command line -> Optuna parameter name
SEARCHED_KEYS = {
    "depth_share": "depth_share",
    "budget.flops": "budget",
    "order": "order",
    "criterion": "criterion",
    "finetune.lr": "finetune_lr",  # the same name as the MLflow param
}


@dataclass(frozen=True)
class Dimension:
    name: str  # the Optuna parameter
    key: str  # the config key it sets
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False

    def suggest(self, trial: Trial):
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def grid(self, points: int) -> list:
        if self.choices is not None:
            return list(self.choices)
        if self.low == self.high or points == 1:
            return [self.low]
        if self.log:
            ratio = (self.high / self.low) ** (1 / (points - 1))
            return [round(self.low * ratio**i, 10) for i in range(points)]
        return [round(self.low + (self.high - self.low) * i / (points - 1), 10) for i in range(points)]

    def describe(self) -> str:
        if self.choices is not None:
            return f"{self.key} in {list(self.choices)}"
        return f"{self.key} in [{self.low:g}, {self.high:g}]{' (log)' if self.log else ''}"


@dataclass(frozen=True)
class SearchSpace:
    dims: tuple[Dimension, ...]
    fixed: dict[str, Any]  # parameter name -> value, for what is not searched
    criterion_in_defaults: bool  # the composed config already has a criterion group (override without '+')

    def suggest(self, trial: Trial) -> dict[str, Any]:
        return {**self.fixed, **{d.name: d.suggest(trial) for d in self.dims}}

    def first(self) -> dict[str, Any]:
        """A plan without a trial: each dimension's first choice or low end (to check a trial's config early)."""
        return {**self.fixed, **{d.name: (d.choices[0] if d.choices else d.low) for d in self.dims}}

    def overrides(self, plan: dict[str, Any]) -> list[str]:
        """Hydra overrides for the searched values (fixed ones are already on the command line)."""
        out = []
        for d in self.dims:
            value = plan[d.name]
            if d.name == "criterion":
                out.append(f"{'' if self.criterion_in_defaults else '+'}criterion={value}")
            elif isinstance(value, float):
                out.append(f"{d.key}={value!r}")
            else:
                out.append(f"{d.key}={value}")
        return out

    def budget_group(self, plan: dict[str, Any]) -> str:
        """One Pareto front per budget when budgets are a list (or fixed); one front for a budget range."""
        dim = next((d for d in self.dims if d.name == "budget"), None)
        if dim is not None and dim.choices is None:
            return "all"
        return f"{plan['budget']:g}"

    def grid(self, points: int) -> dict[str, list]:
        return {d.name: d.grid(points) for d in self.dims}

    def grid_size(self, points: int) -> int:
        size = 1
        for values in self.grid(points).values():
            size *= len(values)
        return size

    def describe(self) -> str:
        return "; ".join(d.describe() for d in self.dims)


def fixed_keys(overrides: Sequence[str]) -> set[str]:
    """The searched keys the command line sets: those keep its value instead of being searched."""
    return {o.key_or_group for o in parse_overrides(overrides)} & set(SEARCHED_KEYS)


def parse_space(search, cfg, fixed: set[str]) -> SearchSpace:
    """The search space from `search` (a StudyConfig); a key in `fixed` (or its search.* entry set to null)
    keeps the config's value instead of being searched."""
    dims: list[Dimension] = []
    values: dict[str, Any] = {}

    def free(key: str, entry: Any) -> bool:
        return key not in fixed and entry is not None

    if free("depth_share", search.depth_share):
        dims.append(Dimension("depth_share", "depth_share", low=search.depth_share[0], high=search.depth_share[1]))
    else:
        values["depth_share"] = float(cfg.depth_share)

    if free("budget.flops", search.budget_range):
        dims.append(Dimension("budget", "budget.flops", low=search.budget_range[0], high=search.budget_range[1]))
    elif free("budget.flops", search.budgets):
        dims.append(Dimension("budget", "budget.flops", choices=tuple(dict.fromkeys(search.budgets))))
    else:
        if cfg.budget.flops is None:
            raise UserError(
                "a search needs a FLOP budget: set search.budgets=[...] (or search.budget_range) or budget.flops=X"
            )
        values["budget"] = float(cfg.budget.flops)

    if free("order", search.orders):
        dims.append(Dimension("order", "order", choices=tuple(dict.fromkeys(search.orders))))
    else:
        values["order"] = str(cfg.order)

    if free("criterion", search.criteria):
        dims.append(Dimension("criterion", "criterion", choices=tuple(dict.fromkeys(search.criteria))))
    else:
        if cfg.criterion is None:
            raise UserError(
                "no pruning criterion: search.criteria is null and none is chosen; add +criterion=NAME or "
                "set search.criteria=[...]"
            )
        values["criterion"] = str(cfg.criterion.name)

    if free("finetune.lr", search.lr):
        dims.append(Dimension("finetune_lr", "finetune.lr", low=search.lr[0], high=search.lr[1], log=True))
    else:
        values["finetune_lr"] = float(cfg.finetune.lr)

    if not dims:
        raise UserError(
            "the search space is empty: depth_share, budget.flops, order, criterion and finetune.lr are all fixed "
            "(on the command line or with search.<entry>=null); free one, or run a single trial with task=prune"
        )
    return SearchSpace(tuple(dims), values, criterion_in_defaults=cfg.criterion is not None)
