"""One Optuna trial = one pruning trial: sample the plan, compose the trial's config with Hydra's Compose API
(the search's own command line plus the sampled values), run the same `run_trial` a single run uses, and
return the objectives. Also: the search space and the early-stop rule. The MLflow side is `tracking.Tracker`.
"""

from __future__ import annotations

import math
import os
import socket
import traceback
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import Trial, TrialState

from hybridsweep.config import ORDERS, criterion_choices
from hybridsweep.errors import UserError
from hybridsweep.redaction import redact
from hybridsweep.tracking import Tracker, TrackingError

# config key on the command line -> Optuna parameter name
SEARCHED_KEYS = {
    "depth_share": "depth_share",
    "budget.flops": "budget",
    "order": "order",
    "criterion": "criterion",
    "finetune.lr": "finetune_lr",  # the same name as the MLflow param
}
OBJECTIVES = {"accuracy": "maximize", "latency": "minimize", "params": "minimize", "flops": "minimize"}
LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
CONSTRAINT = "flops_budget"


# --- the search space -----------------------------------------------------------------------------------------


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

    def describe(self) -> str:
        return "; ".join(d.describe() for d in self.dims)


def _pair(value, setting: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise UserError(f"{setting}={value} is invalid: give a range as [low, high]") from None
    if low > high:
        raise UserError(f"{setting}={value} is an empty range: low > high")
    return low, high


def _list(value, setting: str) -> list:
    if isinstance(value, str | int | float):
        value = [value]
    values = list(value)
    if not values:
        raise UserError(f"{setting}=[] leaves nothing to search: give at least one value (or null to fix it)")
    return list(dict.fromkeys(values))


def parse_space(search, cfg, fixed_keys: set[str]) -> SearchSpace:
    """The search space from `search.*`; a key given on the command line (or its search.* entry set to null)
    keeps the config's value instead of being searched."""
    dims: list[Dimension] = []
    fixed: dict[str, Any] = {}

    def free(key: str, entry: str) -> bool:
        return key not in fixed_keys and search.get(entry) is not None

    if free("depth_share", "depth_share"):
        low, high = _pair(search.depth_share, "search.depth_share")
        if not 0.0 <= low <= high <= 1.0:
            raise UserError(f"search.depth_share={list(search.depth_share)} is out of range: it lies in [0, 1]")
        dims.append(Dimension("depth_share", "depth_share", low=low, high=high))
    else:
        fixed["depth_share"] = float(cfg.depth_share)

    budget_free = "budget.flops" not in fixed_keys
    if budget_free and search.get("budget_range") is not None:
        low, high = _pair(search.budget_range, "search.budget_range")
        if not 0.0 < low <= high <= 1.0:
            raise UserError(
                f"search.budget_range={list(search.budget_range)} is out of range: budgets are the fraction of the "
                "baseline's FLOPs to keep, in (0, 1]"
            )
        dims.append(Dimension("budget", "budget.flops", low=low, high=high))
    elif budget_free and search.get("budgets") is not None:
        values = [float(v) for v in _list(search.budgets, "search.budgets")]
        bad = [v for v in values if not 0.0 < v <= 1.0]
        if bad:
            raise UserError(
                f"search.budgets={values} is out of range: {bad[0]:g} is not a fraction of the baseline's FLOPs "
                "in (0, 1]"
            )
        dims.append(Dimension("budget", "budget.flops", choices=tuple(values)))
    else:
        if cfg.budget.flops is None:
            raise UserError(
                "a search needs a FLOP budget: set search.budgets=[...] (or search.budget_range) or budget.flops=X"
            )
        fixed["budget"] = float(cfg.budget.flops)

    if free("order", "orders"):
        values = _list(search.orders, "search.orders")
        bad = [v for v in values if v not in ORDERS]
        if bad:
            raise UserError(f"search.orders: {bad[0]} is unknown; choose from: {', '.join(ORDERS)}")
        dims.append(Dimension("order", "order", choices=tuple(values)))
    else:
        fixed["order"] = str(cfg.order)

    if free("criterion", "criteria"):
        values = _list(search.criteria, "search.criteria")
        bad = [v for v in values if v not in criterion_choices()]
        if bad:
            raise UserError(f"search.criteria: {bad[0]} is unknown; choose from: {', '.join(criterion_choices())}")
        dims.append(Dimension("criterion", "criterion", choices=tuple(values)))
    else:
        if cfg.criterion is None:
            raise UserError(
                "no pruning criterion: search.criteria is null and none is chosen; add +criterion=NAME or "
                "set search.criteria=[...]"
            )
        fixed["criterion"] = str(cfg.criterion.name)

    if free("finetune.lr", "lr"):
        low, high = _pair(search.lr, "search.lr")
        if low <= 0:
            raise UserError(f"search.lr={list(search.lr)} is invalid: learning rates are > 0 (searched on a log scale)")
        dims.append(Dimension("finetune_lr", "finetune.lr", low=low, high=high, log=True))
    else:
        fixed["finetune_lr"] = float(cfg.finetune.lr)

    if not dims:
        raise UserError(
            "the search space is empty: depth_share, budget.flops, order, criterion and finetune.lr are all fixed "
            "(on the command line or with search.<entry>=null); free one, or run a single trial with task=prune"
        )
    return SearchSpace(tuple(dims), fixed, criterion_in_defaults=cfg.criterion is not None)


# --- composing a trial's config -------------------------------------------------------------------------------


def compose_trial_config(overrides: Sequence[str]):
    """Hydra's Compose API, inside `python -m hybridsweep` (Hydra already initialised) or outside it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from hybridsweep import conf_dir
    from hybridsweep.config import register_configs

    register_configs()
    if GlobalHydra.instance().is_initialized():
        return compose(config_name="config", overrides=list(overrides))
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def trial_base_overrides(overrides: Sequence[str]) -> list[str]:
    """The search's command line as a single trial's: drop task/search/hydra settings, run one prune trial."""
    kept = []
    for arg in overrides:
        key = arg.partition("=")[0].lstrip("+~")
        if key in ("task", "search") or key.startswith(("search.", "hydra.", "hydra/")) or key == "hydra":
            continue
        kept.append(arg)
    return [*kept, "task=prune", "search=none"]


def fixed_keys(overrides: Sequence[str]) -> set[str]:
    keys = {arg.partition("=")[0].lstrip("+~") for arg in overrides}
    return keys & set(SEARCHED_KEYS)


# --- which process runs a trial (to tell a killed worker's trial from a live one) -----------------------------


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]  # field 22: start time in clock ticks since boot


def worker_id() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or '?'}"


def worker_alive(worker: str | None) -> bool | None:
    """True/False for a worker on this host; None when it cannot be told (another host, no record)."""
    if not worker:
        return None
    host, _, rest = worker.partition(":")
    pid_text, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    if Path("/proc/self/stat").exists():
        now = _start_time(pid)
        return now is not None and (started in ("?", "") or now == started)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- early stop ---------------------------------------------------------------------------------------------


@dataclass
class EarlyStop:
    """Multi-objective studies cannot use trial.report/should_prune, so: after the first fine-tune epoch, a trial
    whose top-1 is more than `margin` points below the best top-1 that finished trials of its budget group had
    at the same point (once `min_peers` of them exist) raises optuna.TrialPruned."""

    enabled: bool = False
    margin: float = 10.0
    min_peers: int = 4

    def hook(self, study: optuna.Study, trial: Trial, cfg, bench, group: str, report: Callable[[dict], None]):
        from hybridsweep.train import evaluate, resolve_device

        def on_epoch_end(epoch: int, model) -> None:
            if epoch != 1:
                return
            ds = bench.dataset(cfg)
            acc = evaluate(model, ds, device=resolve_device(cfg.device), batch_size=cfg.finetune.eval_batch_size,
                           desc="early-stop check")
            trial.set_user_attr("epoch1/top1", acc.top1)
            report({"early_stop/epoch1_top1": acc.top1})
            peers = [
                t.user_attrs["epoch1/top1"]
                for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.user_attrs.get("budget_group") == group and "epoch1/top1" in t.user_attrs
            ]
            if len(peers) >= self.min_peers and acc.top1 < max(peers) - self.margin:
                raise optuna.TrialPruned(
                    f"top-1 after epoch 1 is {acc.top1:.2f}%, more than {self.margin:g} points below the best "
                    f"of {len(peers)} finished trials with budget {group} ({max(peers):.2f}%)"
                )

        return on_epoch_end


def stop(study: optuna.Study) -> None:
    """End Optuna's optimize loop after this trial. The screened loop (`screen.py`) runs outside it and checks
    its own ends (failures, fatal error, the study's total), so there is nothing to stop there."""
    with suppress(RuntimeError):  # Optuna: "Study.stop is supposed to be invoked inside an objective function"
        study.stop()


# --- the objective ------------------------------------------------------------------------------------------


class SurplusTrial(Exception):
    """Raised when a trial starts after other workers already reached the study's n_trials (a start race)."""


@dataclass
class Objective:
    space: SearchSpace
    base_overrides: list[str]  # the single-trial command line (see trial_base_overrides)
    metric_keys: list[str]  # one metric of run_trial's result per objective
    n_trials: int  # the study's total
    tracker: Tracker
    output_dir: Path
    early_stop: EarlyStop = field(default_factory=EarlyStop)
    study: optuna.Study | None = None
    fatal: TrackingError | None = None  # set when the MLflow store broke: the search ends with it

    def _surplus(self, trial: Trial) -> bool:
        """Finished trials, and running ones started before this one, already make the study's total (plans
        being screened or screened out do not count)."""
        from hybridsweep.search.screen import SCREENED_OUT

        others = self.study.get_trials(deepcopy=False, states=LIVE)
        taken = sum(1 for t in others if SCREENED_OUT not in t.user_attrs and not t.user_attrs.get("screening")
                    and (t.state != TrialState.RUNNING or t.number < trial.number))
        return taken >= self.n_trials

    def trial_config(self, trial: Trial):
        """The sampled plan's config, checked (the plan and its budget group go on the trial)."""
        from hybridsweep.config import validate

        plan = self.space.suggest(trial)
        trial.set_user_attr("plan", plan)
        trial.set_user_attr("budget_group", self.space.budget_group(plan))
        cfg = compose_trial_config([*self.base_overrides, *self.space.overrides(plan)])
        cfg.tracking.experiment = self.study.study_name
        cfg.paths.output_dir = str(self.output_dir / "trials" / f"{trial.number:04d}")
        validate(cfg)
        return cfg

    def _stop_on(self, exc: TrackingError) -> None:
        """No later trial could log either: end the search, which then reports this one line."""
        self.fatal = exc
        stop(self.study)

    def __call__(self, trial: Trial) -> tuple[float, ...]:
        from hybridsweep.pruning.plan import BUDGET_TOLERANCE
        from hybridsweep.trial import run_trial
        from hybridsweep.workbench import workbench

        trial.set_user_attr("worker", worker_id())
        if trial.user_attrs.get("screening"):
            trial.set_user_attr("screening", False)  # chosen: from now on it is a trial like any other
        if self._surplus(trial):
            stop(self.study)
            trial.set_user_attr("surplus", True)
            raise SurplusTrial(f"the study already has its {self.n_trials} trials; this one is not run")
        cfg = self.trial_config(trial)
        plan, group = trial.user_attrs["plan"], trial.user_attrs["budget_group"]
        out = Path(cfg.paths.output_dir)
        bench = workbench(cfg)
        run_name = f"trial-{trial.number}-{plan['criterion']}"  # criterion in the name: legends of compared studies
        try:
            run = self.tracker.start_trial(trial.number, run_name)
        except TrackingError as exc:
            self._stop_on(exc)
            raise
        if run.run_id:
            trial.set_user_attr("mlflow_run_id", run.run_id)
        hook = None
        if self.early_stop.enabled:
            hook = self.early_stop.hook(self.study, trial, cfg, bench, group,
                                        lambda m: self.tracker.log_metrics(run.run_id, m))
        try:
            result = run_trial(cfg, bench, out, run_name=run_name, on_epoch_end=hook, run=run)
        except optuna.TrialPruned:
            self.tracker.end_run(run.run_id, "KILLED", {"optuna.state": "PRUNED"})
            raise
        except BaseException as exc:
            trial.set_user_attr("error", redact(f"{type(exc).__name__}: {exc}")[:1000])
            if not isinstance(exc, UserError | KeyboardInterrupt):  # a bug: its traceback, once
                traceback.print_exc()
            if isinstance(exc, TrackingError):
                self._stop_on(exc)
            with suppress(TrackingError):
                status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
                self.tracker.end_run(run.run_id, status, {"optuna.state": "FAIL"})
            raise

        m = result.metrics
        missing = [k for k in self.metric_keys if k not in m]
        if missing:
            raise KeyError(f"run_trial logged no {missing[0]}; it logged: {', '.join(sorted(m))}")
        values = tuple(float(m[k]) for k in self.metric_keys)
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"an objective is not finite: {dict(zip(self.metric_keys, values, strict=True))}")
        ratio = m["flops"] / m["baseline/flops"]
        # <= 0 is feasible; the budget solver meets a budget to within its own tolerance
        trial.set_constraint(CONSTRAINT, ratio - plan["budget"] * (1 + BUDGET_TOLERANCE))
        attrs = {
            "flops_ratio": ratio,
            "blocks_removed": result.plan.blocks,
            "channel_ratio": result.plan.channel_ratio,
            "arch": result.tags.get("latency.arch", ""),
            "baseline/top1": float(m["baseline/top1"]),
            **({"latency_reduction_pct": float(m["latency_reduction_pct"])} if "latency_reduction_pct" in m else {}),
            **({"load_avg": result.tags["latency.load_avg"]} if "latency.load_avg" in result.tags else {}),
            **{k: float(m[k]) for k in dict.fromkeys(["finetuned/top1", "params", "flops", *self.metric_keys])
               if k in m},
        }
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        self.tracker.end_run(result.run_id, "FINISHED",
                               {"optuna.feasible": str(ratio <= plan["budget"] * (1 + BUDGET_TOLERANCE)).lower()})
        return values
