"""One Optuna trial = one pruning trial: sample the plan, compose the trial's config with Hydra's Compose API
(the search's own command line plus the sampled values), run the same `run_trial` a single run uses, and
return the objectives; the early-stop rule that may end it after its first epoch. The MLflow side is
`tracking.Tracker`.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.study import StudyDirection
from optuna.trial import Trial, TrialState

from hybridsweep.command_line import parse_overrides
from hybridsweep.errors import UserError
from hybridsweep.redaction import redact
from hybridsweep.search.space import SearchSpace
from hybridsweep.search.workers import worker_id
from hybridsweep.tracking import Tracker, TrackingError

OBJECTIVES = {"accuracy": "maximize", "latency": "minimize", "params": "minimize", "flops": "minimize"}
LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
CONSTRAINT = "flops_budget"
LATENCY_CONSTRAINT = "max_latency_ms"  # search.max_latency_ms: latency - threshold
TOP1_CONSTRAINT = "min_top1"  # search.min_top1: threshold - top-1


def latency_key(cfg) -> str:
    batch = cfg.latency.get("batch_size", 1) or 1
    return f"latency/{cfg.latency.backend}" + ("" if batch == 1 else f"/batch{batch}") + "/median_ms"


def objective_metrics(names: Sequence[str], cfg) -> tuple[list[str], list[StudyDirection]]:
    """Metric keys of run_trial's result for `search.objectives` (names StudyConfig checked), and their directions."""
    keys = {"accuracy": "finetuned/top1", "latency": latency_key(cfg), "params": "params", "flops": "flops"}
    directions = [StudyDirection.MAXIMIZE if OBJECTIVES[n] == "maximize" else StudyDirection.MINIMIZE
                  for n in names]
    return [keys[n] for n in names], directions


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


def study_config(study: optuna.Study, cfg):
    """The config a study's trials ran with (model, data, latency, tracking), composed from the command line it
    keeps; `cfg` (the current command's) for a study without one, and for the MLflow password it keeps hidden."""
    from hybridsweep.redaction import HIDDEN

    command = study.user_attrs.get("base_overrides")
    ran = compose_trial_config(command) if command else cfg
    if HIDDEN in str(ran.tracking.uri):
        ran.tracking.uri = cfg.tracking.uri
    return ran


def trial_base_overrides(overrides: Sequence[str]) -> list[str]:
    """The search's command line as a single trial's: drop task/search/hydra settings, run one prune trial."""
    kept = []
    for override in parse_overrides(overrides):
        key = override.key_or_group
        if key in ("task", "search", "hydra") or key.startswith(("search.", "hydra.", "hydra/")):
            continue
        kept.append(override.input_line)
    return [*kept, "task=prune", "search=none"]


# --- early stop ---------------------------------------------------------------------------------------------


@dataclass
class EarlyStop:
    """`search.early_stop`. Multi-objective studies cannot use trial.report/should_prune, so: after the first
    fine-tune epoch (it needs finetune.epochs >= 2), a trial whose top-1 is more than `margin` points below the
    best top-1 that finished trials of its budget group had at the same point (once `min_peers` of them exist)
    raises optuna.TrialPruned."""

    enabled: bool = False  # off by default: a study reproduces exactly
    margin: float = 10.0  # top-1 points
    min_peers: int = 4

    def __post_init__(self):
        if self.margin < 0:
            raise UserError(f"search.early_stop.margin={self.margin:g} is invalid: it must be >= 0")
        if self.min_peers < 1:
            raise UserError(f"search.early_stop.min_peers={self.min_peers} is invalid: it must be an integer >= 1")

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
    its own ends (`AfterTrial.finished`, a fatal error), so there is nothing to stop there."""
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
    max_latency_ms: float | None = None  # search.max_latency_ms: a constraint when set
    min_top1: float | None = None  # search.min_top1: a constraint when set
    study: optuna.Study | None = None
    fatal: UserError | None = None  # set when the MLflow store broke, or no new plan comes: the search ends with it
    twins_in_a_row: int = 0  # plans of this run in a row whose pruned model the study had already fine-tuned
    stopped: int | None = None  # the trial a Ctrl-C or SIGTERM stopped in this run: optimise queues its plan

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
        overrides = self.space.overrides(plan)
        trial.set_user_attr("overrides", overrides)  # with base_overrides: the trial's command line
        cfg = compose_trial_config([*self.base_overrides, *overrides])
        cfg.tracking.experiment = self.study.study_name
        cfg.paths.output_dir = str(self.output_dir / "trials" / f"{trial.number:04d}")
        validate(cfg)
        return cfg

    def skip_twins(self, trial: Trial, cfg) -> Callable:
        """run_trial's `on_pruned` hook: a pruned model (and recipe) the study already fine-tuned is not fine-tuned
        again, since it would give the same result; the trial is PRUNED, screened out with the twin's number, and
        does not count toward n_trials. After MAX_BLOCKED twins in a row in this run, the search stops. Two workers
        pruning the same model at the same moment may both fine-tune it: only complete trials are compared."""
        from hybridsweep.search.screen import (
            MAX_BLOCKED,
            MODEL,
            SCREENED_OUT,
            blocked_message,
            fine_tuned_twin,
            twin_reason,
        )
        from hybridsweep.trial import pruned_model_digest

        def on_pruned(model) -> None:
            digest = pruned_model_digest(model, cfg)
            trial.set_user_attr(MODEL, digest)
            twin = fine_tuned_twin(self.study, digest)
            if twin is None:
                self.twins_in_a_row = 0
                return
            trial.set_user_attr(SCREENED_OUT, twin_reason(twin))
            self.twins_in_a_row += 1  # in this run: a rerun after such a stop gets MAX_BLOCKED more tries
            if self.twins_in_a_row >= MAX_BLOCKED:
                self.fatal = UserError(blocked_message([("duplicate", 0.0)] * self.twins_in_a_row, None))
                stop(self.study)
            raise optuna.TrialPruned(twin_reason(twin))

        return on_pruned

    def _stop_on(self, exc: TrackingError) -> None:
        """No later trial could log either: end the search, which then reports this one line."""
        self.fatal = exc
        stop(self.study)

    def __call__(self, trial: Trial) -> tuple[float, ...]:
        trial.set_user_attr("worker", worker_id())
        if trial.user_attrs.get("screening"):
            trial.set_user_attr("screening", False)  # chosen: from now on it is a trial like any other
        if self._surplus(trial):
            stop(self.study)
            trial.set_user_attr("surplus", True)
            raise SurplusTrial(f"the study already has its {self.n_trials} trials; this one is not run")
        try:
            return self._run(trial)
        except KeyboardInterrupt:
            self.stopped = trial.number
            raise

    def _run(self, trial: Trial) -> tuple[float, ...]:
        """Build, fine-tune and measure the trial's plan; its objectives."""
        from hybridsweep.pruning.plan import BUDGET_TOLERANCE
        from hybridsweep.search.screen import SCREENED_OUT
        from hybridsweep.trial import run_trial
        from hybridsweep.workbench import workbench

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
            result = run_trial(cfg, bench, out, run_name=run_name, on_epoch_end=hook, run=run,
                               on_pruned=self.skip_twins(trial, cfg))
        except optuna.TrialPruned as exc:
            if SCREENED_OUT in trial.user_attrs:  # a twin ran nothing, like a plan screened out before its run
                self.tracker.delete_run(run.run_id)
                trial.set_user_attr("mlflow_run_id", None)
            else:
                self.tracker.end_run(run.run_id, "KILLED", {"optuna.state": "PRUNED",
                                                            "optuna.pruned_because": str(exc)})
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
        constraints = {CONSTRAINT: ratio - plan["budget"] * (1 + BUDGET_TOLERANCE)}
        if self.max_latency_ms is not None:  # the latency objective's figure, measured once per architecture
            key = latency_key(cfg)
            if key not in m:
                raise KeyError(f"run_trial logged no {key} (search.max_latency_ms); it logged: {', '.join(sorted(m))}")
            constraints[LATENCY_CONSTRAINT] = float(m[key]) - self.max_latency_ms
        if self.min_top1 is not None:
            constraints[TOP1_CONSTRAINT] = self.min_top1 - float(m["finetuned/top1"])
        for name, value in constraints.items():  # before the trial completes: samplers and the front read them
            trial.set_constraint(name, value)
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
                               {"optuna.feasible": str(all(v <= 0 for v in constraints.values())).lower()})
        return values
