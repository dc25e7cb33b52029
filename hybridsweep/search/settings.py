"""What `search=NAME` may say: the schema of every file in conf/search/, with every default.

`hybridsweep.config.register_configs` registers StudyConfig as `base_study`, which each file extends with what
differs for its sampler. search=none extends it too: an experiment's trials run with search=none while the
experiment's file sets a study's settings, which must still compose. Hydra checks the types on every override;
`__post_init__` checks the ranges when `run_search` builds the settings from the composed node
(`hybridsweep.config.checked`), before any work starts.
"""

from dataclasses import dataclass, field

from omegaconf import MISSING

from hybridsweep.config import ORDERS, SearchConfig, criterion_choices
from hybridsweep.errors import UserError
from hybridsweep.search.objective import OBJECTIVES, EarlyStop
from hybridsweep.search.screen import ScreenSettings

SAMPLERS = ("nsga2", "tpe", "random", "grid")
# setting -> its least value
MINIMUMS = {"n_trials": 1, "max_consecutive_failures": 0, "heartbeat_s": 1, "retries": 0, "worker": 0,
            "population_size": 2, "n_startup_trials": 0, "grid_points": 1}


@dataclass
class StudyConfig(SearchConfig):
    """An Optuna study over pruning plans; `storage` and `studies` come from SearchConfig."""

    sampler: str = MISSING  # none | nsga2 | tpe | random | grid: set by conf/search/<sampler>.yaml
    n_trials: int | None = 40  # the study's TOTAL: a rerun or a second worker only runs what is missing
    study_name: str | None = None  # null: <sampler>-<criterion>-<model>-<data>-b<budget>; also the MLflow experiment
    # accuracy (max finetuned/top1) | latency (min latency/<backend>/median_ms) | params | flops
    objectives: list[str] = field(default_factory=lambda: ["accuracy", "latency"])
    seed: int | None = 0  # sampler seed (a resumed study continues with seed + trials so far); null: random
    # --- the search space: a [low, high] range or a list of choices; null keeps the config's value instead
    depth_share: list[float] | None = field(default_factory=lambda: [0.0, 1.0])  # share of the FLOP reduction
    # taken by removing blocks
    budgets: list[float] | None = field(default_factory=lambda: [0.5, 0.75])  # budget.flops choices; one Pareto
    # front per budget; the FLOP budget is a constraint
    budget_range: list[float] | None = None  # search budget.flops continuously instead (one front)
    # thresholds, constraints like the FLOP budget: a trial over either is infeasible (off the front, not registered)
    max_latency_ms: float | None = None  # the latency objective's figure (ms, per architecture) must be <= this
    min_top1: float | None = None  # top-1 after fine-tuning (%, in (0, 100]) must be >= this
    orders: list[str] | None = field(default_factory=lambda: list(ORDERS))
    criteria: list[str] | None = field(default_factory=lambda: ["l1", "l2", "fmrank", "bnscale", "taylor"])
    lr: list[float] | None = field(default_factory=lambda: [0.001, 0.05])  # finetune.lr, on a log scale
    # --- how the search runs
    early_stop: EarlyStop = field(default_factory=EarlyStop)
    max_consecutive_failures: int = 5  # a failed trial is recorded FAIL and replaced; stop after this many in a
    # row (0: never stop, but this run's failures count toward n_trials, so it still ends)
    heartbeat_s: int = 60  # PostgreSQL: a trial without a heartbeat for 2x this is marked FAIL ...
    retries: int = 1  # ... and retried this many times
    worker: int = 0  # which of several identical workers of one study this process is; it changes the sampler's
    # seed, and a multirun needs it to start N: -m 'search.worker=range(N)'
    screen: ScreenSettings = field(default_factory=ScreenSettings)  # screening before fine-tuning
    register: bool = True  # with tracking on: register the front's models in the MLflow Model Registry, one
    # registered model per study (its name), one version per front trial, tagged pareto=true|false
    # --- one sampler's own
    population_size: int = 16  # nsga2: the generation size
    n_startup_trials: int = 10  # tpe: random trials before the model takes over
    grid_points: int = 5  # grid: values per range (depth_share, lr, budget_range)

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise UserError(f"search.sampler={self.sampler} is unknown; choose one of: {', '.join(SAMPLERS)}")
        if self.n_trials is None and self.sampler != "grid":
            raise UserError(f"search.n_trials is null: search={self.sampler} needs the study's total number of trials")
        for setting, minimum in MINIMUMS.items():
            value = getattr(self, setting)
            if value is not None and value < minimum:
                raise UserError(f"search.{setting}={value} is invalid: it must be an integer >= {minimum}")
        if not self.objectives:
            raise UserError(f"search.objectives=[] names no objective; choose from: {', '.join(OBJECTIVES)}")
        _known("objectives", self.objectives, OBJECTIVES)
        if len(set(self.objectives)) != len(self.objectives):
            raise UserError(f"search.objectives={self.objectives} names an objective twice")
        for setting in ("depth_share", "budget_range", "lr"):
            _pair(setting, getattr(self, setting))
        if self.depth_share is not None and not (self.depth_share[0] >= 0.0 and self.depth_share[1] <= 1.0):
            raise UserError(f"search.depth_share={self.depth_share} is out of range: it lies in [0, 1]")
        if self.budget_range is not None and not (self.budget_range[0] > 0.0 and self.budget_range[1] <= 1.0):
            raise UserError(f"search.budget_range={self.budget_range} is out of range: budgets are the fraction of "
                            "the baseline's FLOPs to keep, in (0, 1]")
        if self.max_latency_ms is not None and not self.max_latency_ms > 0:
            raise UserError(f"search.max_latency_ms={self.max_latency_ms:g} is invalid: it must be > 0 (ms)")
        if self.min_top1 is not None and not 0.0 < self.min_top1 <= 100.0:
            raise UserError(f"search.min_top1={self.min_top1:g} is out of range: top-1 is a percentage in (0, 100]")
        if self.lr is not None and self.lr[0] <= 0:
            raise UserError(f"search.lr={self.lr} is invalid: learning rates are > 0 (searched on a log scale)")
        if self.budgets is not None:
            _nonempty("budgets", self.budgets)
            bad = [v for v in self.budgets if not 0.0 < v <= 1.0]
            if bad:
                raise UserError(f"search.budgets={self.budgets} is out of range: {bad[0]:g} is not a fraction of "
                                "the baseline's FLOPs in (0, 1]")
        for setting, choices in (("orders", ORDERS), ("criteria", criterion_choices())):
            values = getattr(self, setting)
            if values is not None:
                _nonempty(setting, values)
                _known(setting, values, choices)


def _nonempty(setting: str, values: list) -> None:
    if not values:
        raise UserError(f"search.{setting}=[] leaves nothing to search: give at least one value (or null to fix it)")


def _known(setting: str, values: list[str], choices) -> None:
    bad = [v for v in values if v not in choices]
    if bad:
        raise UserError(f"search.{setting}: {bad[0]} is unknown; choose from: {', '.join(choices)}")


def _pair(setting: str, pair: list[float] | None) -> None:
    if pair is None:
        return
    if len(pair) != 2:
        raise UserError(f"search.{setting}={pair} is invalid: give a range as [low, high]")
    if pair[0] > pair[1]:
        raise UserError(f"search.{setting}={pair} is an empty range: low > high")
