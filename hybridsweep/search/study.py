"""`task=search`: an Optuna study over pruning plans, driven by our own loop (not hydra-optuna-sweeper).

    python -m hybridsweep task=search search=nsga2 model=resnet56 model.weights=reference

`run_search` opens the study, optimises it and summarises it. Each trial composes its config with Hydra's
Compose API from this command line plus the sampled values and calls the same `run_trial` a single run uses
(see `objective.py`). The study lives in `search.storage` (`storage.py`) and `search.n_trials` is its total, so
rerunning the same command resumes it and runs only what is missing: a trial left RUNNING by a killed worker on
this host is marked FAIL at the start (PostgreSQL: by the heartbeat, which also retries it), and its MLflow run
is closed as KILLED.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.trial import TrialState

from hybridsweep.config import checked, output_dir
from hybridsweep.errors import UserError, first_line
from hybridsweep.redaction import redact
from hybridsweep.search.front import CONSTRAINT_LABELS, closest_infeasible, violated
from hybridsweep.search.objective import Objective, compose_trial_config, objective_metrics, trial_base_overrides
from hybridsweep.search.progress import AfterTrial
from hybridsweep.search.report import baseline_row, front_rows, front_table, objective_names, study_title
from hybridsweep.search.screen import counted, optimize_screened, screens
from hybridsweep.search.settings import StudyConfig
from hybridsweep.search.space import SearchSpace, fixed_keys, parse_space
from hybridsweep.search.storage import open_storage, study_lock
from hybridsweep.search.workers import fail_dead_trials, queue_again
from hybridsweep.tracking import Tracker, TrackingError


@dataclass
class OpenStudy:
    """A study ready to optimise, and what its loop and summary need."""

    study: optuna.Study
    settings: StudyConfig
    space: SearchSpace
    metric_keys: list[str]
    n_trials: int  # the study's total
    base: list[str]  # the single-trial command line (trial_base_overrides)
    tracker: Tracker
    shown_storage: str  # search.storage with its password hidden
    out_dir: Path
    storage: BaseStorage


def run_search(cfg, overrides: Sequence[str] | None = None) -> optuna.Study:
    """Run (or resume) the study `cfg.search` describes; returns it. `overrides` is the command line that
    composed `cfg` (read from Hydra inside `python -m hybridsweep`)."""
    command_line = _command_line(overrides)
    # our own line per trial replaces Optuna's INFO line and its WARNING traceback of a failed trial
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    run = open_study(cfg, command_line)
    after, files, seconds = optimise(run)
    summarise(run, after, files, seconds)
    return run.study


def _command_line(overrides: Sequence[str] | None) -> list[str]:
    if overrides is not None:
        return list(overrides)
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        raise ValueError(
            "run_search(cfg) outside `python -m hybridsweep` needs overrides=[...] (the command line that "
            "composed cfg): each trial composes its config from it"
        ) from None


# --- 1. open: settings checked, inputs loaded once, the study created or resumed -------------------------------


def open_study(cfg, command_line: list[str]) -> OpenStudy:
    """Everything that can fail on bad input fails here, before a trial exists; the set-up that several workers
    starting together would race on (MLflow store, study, dead trials, parent run) runs under the study's lock."""
    if cfg.search.sampler == "none":
        raise UserError("task=search needs a sampler: add search=nsga2 (or search=tpe, random, grid)")
    settings: StudyConfig = checked(cfg.search)
    space = parse_space(settings, cfg, fixed_keys(command_line))
    keys, directions = objective_metrics(settings.objectives, cfg)
    n_trials = settings.n_trials or space.grid_size(settings.grid_points)  # null (grid only): the whole grid
    name = settings.study_name or default_study_name(settings.sampler, cfg, space)
    shown = redact(settings.storage)
    storage = open_storage(settings.storage, settings.heartbeat_s, settings.retries)

    base = trial_base_overrides(command_line)
    check_inputs(compose_probe(base, space.overrides(space.first())))

    with study_lock(settings.storage, storage, name):
        tracker = Tracker.from_config(cfg.tracking, name)  # creates the MLflow store: one worker at a time
        existing = _check_existing(name, storage, shown, keys, directions)
        # workers of one multirun differ only in search.worker: without it they would sample the same plans
        seed = None if settings.seed is None else settings.seed + existing + 1_000_003 * settings.worker
        study = optuna.create_study(study_name=name, storage=storage, sampler=make_sampler(settings, space, seed),
                                    directions=directions, load_if_exists=True)
        if study.metric_names is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(keys)
        shown_base = [redact(arg) for arg in base]  # optuna-dashboard shows study attributes
        first = study.user_attrs.get("base_overrides")
        if first is None:
            study.set_user_attr("base_overrides", shown_base)
        elif first != shown_base:
            print(f"warning: study {name} was started with other settings ({' '.join(first)}); its trials are "
                  "compared as if they were alike", file=sys.stderr)
        fail_dead_trials(study, tracker, heartbeat=bool(getattr(storage, "heartbeat_interval", None)))
        tracker.open_parent(
            study,
            tags={"optuna.storage": shown, "optuna.sampler": settings.sampler},
            params={"sampler": settings.sampler, "n_trials": n_trials, "objectives": ",".join(keys),
                    "search_space": space.describe(), "command_line": " ".join(base)},
        )
        tracker.close_orphans(study)
    return OpenStudy(study, settings, space, keys, n_trials, base, tracker, shown, output_dir(cfg) / name, storage)


def default_study_name(sampler: str, cfg, space: SearchSpace) -> str:
    dims = {d.name: d for d in space.dims}
    criterion = space.fixed.get("criterion") or "+".join(dims["criterion"].choices)
    if "budget" in space.fixed:
        budget = f"b{space.fixed['budget']:g}"
    elif dims["budget"].choices is not None:
        budget = "b" + "+".join(f"{v:g}" for v in dims["budget"].choices)
    else:
        budget = f"b{dims['budget'].low:g}-{dims['budget'].high:g}"
    return f"{sampler}-{criterion}-{cfg.model.name}-{cfg.data.name}-{budget}"


def make_sampler(settings: StudyConfig, space: SearchSpace, seed: int | None) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if settings.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(population_size=settings.population_size, seed=seed)
        if settings.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=settings.n_startup_trials,
                                              multivariate=True, constant_liar=True)
        if settings.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        return optuna.samplers.GridSampler(space.grid(settings.grid_points), seed=seed)


def compose_probe(base: list[str], plan_overrides: list[str]):
    """The config of a first trial, checked: a command line that cannot make a trial fails before the study."""
    from hybridsweep.config import validate

    try:
        cfg = compose_trial_config([*base, *plan_overrides])
    except Exception as exc:
        raise UserError(f"a trial's config does not compose from this command line: {first_line(exc)}") from exc
    validate(cfg)
    return cfg


def check_inputs(cfg) -> None:
    """Load what every trial needs (data, baseline weights, scores) and build the first plan once, before any
    trial exists: bad weights or data are one line, not a FAILED trial per attempt. The work is cached, so the
    first trial reuses it."""
    import copy

    from hybridsweep.data import calibration_batch
    from hybridsweep.train import resolve_device
    from hybridsweep.trial import prune_model
    from hybridsweep.workbench import workbench

    bench = workbench(cfg)
    ds = bench.dataset(cfg)
    base = bench.baseline(cfg, ds, resolve_device(cfg.device))
    prune_model(cfg, copy.deepcopy(base.model).cpu(), bench.scores(cfg, ds, base), ds.input_shape)
    if cfg.screen.bn_images:
        calibration_batch(ds, cfg.screen.bn_images, cfg.seed, setting="screen.bn_images")  # raises if too many


def _check_existing(name: str, storage: BaseStorage, shown: str, keys: list[str],
                    directions: list[StudyDirection]) -> int:
    """Trials already in the study (0 when new); a study of this name with other objectives is refused."""
    try:
        existing = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return 0
    names = existing.metric_names
    if list(existing.directions) != directions or (names is not None and list(names) != keys):
        theirs = names or [d.name.lower() for d in existing.directions]
        raise UserError(
            f"search.study_name={name} already exists in {shown} with objectives {theirs}, not {keys}; "
            "pick another search.study_name or the same search.objectives"
        )
    return len(existing.get_trials(deepcopy=False))


# --- 2. optimise: the trials still missing from the study's total, then the final latency pass ---------------


def optimise(run: OpenStudy) -> tuple[AfterTrial, list[Path], float]:
    """Run here what the study's total still misses; however it ends, the front is published and the runs
    closed. Returns the after-trial callback (its failures in a row), the front's files and the seconds spent."""
    study, settings = run.study, run.settings
    after = AfterTrial(run.tracker, run.out_dir, settings.max_consecutive_failures, run.n_trials, settings.register,
                       lock=lambda: study_lock(settings.storage, run.storage, study.study_name))
    done = sum(counted(t) for t in study.get_trials(deepcopy=False))
    running = sum(not t.user_attrs.get("screening")
                  for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    remaining = run.n_trials - done - running
    candidates = settings.screen.candidates
    screening = f"; each chosen from {candidates} screened plans" if candidates > 1 else ""
    if settings.max_latency_ms is not None and screens(settings.screen, settings.max_latency_ms):
        screening += f"; plans over {settings.max_latency_ms:g} ms on screening are not fine-tuned"
    print(f"search: study {study.study_name} in {run.shown_storage}: {done} of {run.n_trials} trials finished, "
          f"{running} running elsewhere; running {max(remaining, 0)} here{screening}. Space: {run.space.describe()}")

    objective = Objective(space=run.space, base_overrides=run.base, metric_keys=run.metric_keys,
                          n_trials=run.n_trials, tracker=run.tracker, output_dir=run.out_dir,
                          early_stop=settings.early_stop, max_latency_ms=settings.max_latency_ms,
                          min_top1=settings.min_top1, study=study)
    status = "FAILED"
    start = time.perf_counter()
    try:
        if remaining > 0 and screens(settings.screen, settings.max_latency_ms):
            optimize_screened(study, objective, settings.screen, after)
        elif remaining > 0:  # `after` stops the loop (AfterTrial.finished)
            study.optimize(objective, n_trials=None, catch=(Exception,), callbacks=[after])
        if objective.fatal is not None:
            raise objective.fatal
        status = "FINISHED"
        if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # the last worker measures
            with study_lock(settings.storage, run.storage, study.study_name):  # two may finish together
                final_pass(study, compose_trial_config(run.base), run.tracker)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (see __main__)
        status = "KILLED"
        queue_stopped(study, objective.stopped)
        raise
    finally:
        # the store may be what failed: the error already raised is the one line to show
        files = after.publish(study)  # never raises: a plot must never cost the study
        with suppress(TrackingError):
            run.tracker.close_orphans(study)
            run.tracker.finish(study, status)
    return after, files, time.perf_counter() - start


def queue_stopped(study: optuna.Study, number: int | None) -> None:
    """The trial the stop failed (Optuna's loop and the screened one have told it FAIL by now) runs first when the
    search resumes; a trial that had completed, or a plan only being screened, is not queued."""
    if number is None:
        return
    try:
        if queue_again(study, study.get_trials(deepcopy=False)[number], interrupted=True):
            print(f"search: trial {number} was stopped; its plan runs first when the search resumes", file=sys.stderr)
    except Exception as exc:  # the store may be what broke: the stop goes on
        print(f"warning: trial {number}'s plan could not be queued to run again: {first_line(exc)}", file=sys.stderr)


MEASURED_ATTR = "final_pass_of"  # study user attr: the complete trials the last final pass measured


def final_pass(study: optuna.Study, cfg, tracker: Tracker) -> None:
    """Re-measure the front's candidates and the baseline together (`remeasure.py`); never costs the study.
    A pass over the same complete trials runs once: a second worker finishing at the same time, or a rerun of a
    finished study, keeps the figures already there (`task=report` re-measures on demand)."""
    from hybridsweep.search.remeasure import remeasure

    complete = sorted(t.number for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if not complete:
        return
    if study.user_attrs.get(MEASURED_ATTR) == complete:
        print("search: the final latency pass already measured these trials; its figures stand")
        return
    try:
        baseline = remeasure([study], cfg)
    except Exception as exc:
        print(f"warning: the final latency pass failed ({first_line(exc)}); the per-trial latencies stand",
              file=sys.stderr)
        return
    if baseline is not None:
        tracker.log_baseline(baseline)
        study.set_user_attr(MEASURED_ATTR, complete)


# --- 3. summarise: the front, where to look, and why the run stopped --------------------------------------------


def closest_line(trial: optuna.trial.FrozenTrial, names: Sequence[str]) -> str:
    """One line: no complete trial met the constraints, and the one that came closest, with its figures."""
    values = ", ".join(f"{n} {v:.4g}" for n, v in zip(names, trial.values, strict=True))
    over = ", ".join(f"{CONSTRAINT_LABELS.get(n, n)} by {trial.constraints[n]:.4g}" for n in violated(trial))
    return (f"search: no complete trial meets the constraints; the closest is trial {trial.number} ({values}; "
            f"misses the {over})")


def summarise(run: OpenStudy, after: AfterTrial, files: list[Path], seconds: float) -> None:
    study, tracker = run.study, run.tracker
    rows = front_rows(study)
    mlflow = f"experiment {study.study_name}, parent run {tracker.parent_id}" if tracker.enabled else "off"
    print(front_table(rows, objective_names(study), baseline_row(study)))
    print(f"search: {study_title(study, rows)} ({seconds:.0f} s here)\n"
          f"  front: {' '.join(str(f) for f in files)}\n"
          f"  MLflow: {mlflow}; Optuna: optuna-dashboard {run.shown_storage}")
    thresholds = run.settings.max_latency_ms is not None or run.settings.min_top1 is not None
    closest = closest_infeasible(study) if thresholds else None
    if closest is not None:
        print(closest_line(closest, objective_names(study)))
    max_failures = run.settings.max_consecutive_failures
    if max_failures and len(after.failures) >= max_failures:
        last = after.failures[-1]
        raise UserError(
            f"search: {len(after.failures)} trials failed in a row, the last (trial {last.number}) with "
            f"{last.user_attrs.get('error', 'an error shown above')}; fix it and rerun the same command to resume"
        )
