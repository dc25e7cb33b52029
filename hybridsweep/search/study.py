"""`task=search`: an Optuna study over pruning plans, driven by our own loop (not hydra-optuna-sweeper).

    python -m hybridsweep task=search search=nsga2 model=resnet56 model.weights=reference

Each trial composes its config with Hydra's Compose API from this command line plus the sampled values and
calls the same `run_trial` a single run uses (see `objective.py`). The study lives in `search.storage`
(SQLite file by default; a `*.journal` file for several local workers; PostgreSQL for several machines) and
`search.n_trials` is its total, so rerunning the same command resumes it and runs only what is missing: a
trial left RUNNING by a killed worker on this host is marked FAIL at the start (PostgreSQL: by the heartbeat,
which also retries it), and its MLflow run is closed as KILLED.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import warnings
from collections.abc import Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.study import MaxTrialsCallback, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from hybridsweep.config import output_dir
from hybridsweep.errors import UserError
from hybridsweep.redaction import redact
from hybridsweep.search.objective import (
    OBJECTIVES,
    EarlyStop,
    Objective,
    SearchSpace,
    compose_trial_config,
    fixed_keys,
    parse_space,
    stop,
    trial_base_overrides,
    worker_alive,
)
from hybridsweep.search.report import baseline_row, front_rows, objective_names, study_title, write_front
from hybridsweep.search.screen import SCREENED_OUT, ScreenSettings, counted, optimize_screened
from hybridsweep.tracking import Tracker, TrackingError, postgres_driver

SAMPLERS = ("nsga2", "tpe", "random", "grid")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
BUSY_LOAD_PER_CORE = 1.5  # a load average above this per core during a measurement: other work is running


# --- settings -------------------------------------------------------------------------------------------------


def _sampler_name(search) -> str:
    name = search.get("sampler")
    if name in (None, "none"):
        raise UserError("task=search needs a sampler: add search=nsga2 (or search=tpe, random, grid)")
    if name not in SAMPLERS:
        raise UserError(f"search.sampler={name} is unknown; choose one of: {', '.join(SAMPLERS)}")
    return str(name)


def _int(search, key: str, default: int, minimum: int) -> int:
    value = search.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"search.{key}={value} is invalid: it must be an integer >= {minimum}")
    return value


def latency_key(cfg) -> str:
    batch = cfg.latency.get("batch_size", 1) or 1
    return f"latency/{cfg.latency.backend}" + ("" if batch == 1 else f"/batch{batch}") + "/median_ms"


def objectives(search, cfg) -> tuple[list[str], list[StudyDirection]]:
    """Metric keys of run_trial's result, and their directions, for `search.objectives`."""
    names = search.get("objectives") or ["accuracy", "latency"]
    names = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown:
        raise UserError(f"search.objectives: {unknown[0]} is unknown; choose from: {', '.join(OBJECTIVES)}")
    if len(set(names)) != len(names):
        raise UserError(f"search.objectives={names} names an objective twice")
    keys = {"accuracy": "finetuned/top1", "latency": latency_key(cfg), "params": "params", "flops": "flops"}
    directions = [StudyDirection.MAXIMIZE if OBJECTIVES[n] == "maximize" else StudyDirection.MINIMIZE
                  for n in names]
    return [keys[n] for n in names], directions


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


def _early_stop(search) -> EarlyStop:
    value = search.get("early_stop")
    if value is None or isinstance(value, bool):
        return EarlyStop(enabled=bool(value))
    rule = EarlyStop(enabled=bool(value.get("enabled", False)), margin=float(value.get("margin", 10.0)),
                     min_peers=int(value.get("min_peers", 4)))
    if rule.margin < 0 or rule.min_peers < 1:
        raise UserError(f"search.early_stop={dict(value)} is invalid: margin must be >= 0 and min_peers >= 1")
    return rule


# --- storage --------------------------------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _local_file(spec: str) -> Path | None:
    """The file behind a SQLite URL or a journal path, for locking and checks."""
    if spec.endswith(".journal"):
        return Path(spec.removeprefix("journal://")).expanduser()
    if spec.startswith("sqlite:///") and ":memory:" not in spec:
        return Path(spec.removeprefix("sqlite:///")).expanduser()
    return None


def open_storage(spec: str, heartbeat_s: int = 60, retries: int = 1) -> BaseStorage:
    """`search.storage` as an Optuna storage: sqlite:///FILE.db (default), FILE.journal (JournalFileBackend:
    several local workers), postgresql://USER:PASSWORD@HOST:PORT/DB (RDBStorage with heartbeat; a trial
    whose worker stops beating is marked FAIL and retried up to `retries` times)."""
    spec = str(spec)
    shown = redact(spec)
    path = _local_file(spec)
    if path is not None and not path.parent.is_dir():
        raise UserError(f"search.storage={shown}: the folder {path.parent} does not exist; create it or pick another")
    if spec.endswith(".journal"):
        try:
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as exc:
            raise UserError(f"search.storage={shown}: cannot open the journal file ({_first_line(exc)})") from exc
    if "://" not in spec:
        raise UserError(
            f"search.storage={shown} is not a storage: use sqlite:///FILE.db, FILE.journal or "
            "postgresql://USER:PASSWORD@HOST:PORT/DB"
        )
    kwargs: dict[str, Any] = {}
    spec = postgres_driver(spec)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if spec.startswith("sqlite"):
                kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
            else:
                kwargs |= {
                    "heartbeat_interval": heartbeat_s,
                    "grace_period": 2 * heartbeat_s,
                    "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=retries),
                    "engine_kwargs": {"pool_pre_ping": True},
                }
                if spec.startswith("postgresql"):
                    kwargs["engine_kwargs"]["connect_args"] = {"connect_timeout": 10}
            return RDBStorage(spec, **kwargs)
    except Exception as exc:  # SQLAlchemy raises many types (driver missing, refused, auth): name the setting
        raise UserError(f"search.storage={shown}: cannot open the study storage ({_first_line(exc)})") from exc


@contextmanager
def study_lock(spec: str, storage: BaseStorage, name: str):
    """Serialise the set-up (study, parent run, dead trials) between workers starting together."""
    path = _local_file(str(spec))
    if path is not None:
        from hybridsweep.cache import file_lock

        with file_lock(path.with_name(path.name + ".hybridsweep.lock")):
            yield
        return
    if isinstance(storage, RDBStorage) and storage.engine.dialect.name == "postgresql":
        from sqlalchemy import text

        key = int(hashlib.sha256(name.encode()).hexdigest()[:15], 16)
        with storage.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        return
    yield


def _make_sampler(name: str, search, space: SearchSpace, seed: int | None) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(population_size=_int(search, "population_size", 16, 2), seed=seed)
        if name == "tpe":
            return optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=_int(search, "n_startup_trials", 10, 0), multivariate=True,
                constant_liar=True,
            )
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        return optuna.samplers.GridSampler(space.grid(_int(search, "grid_points", 5, 1)), seed=seed)


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


def fail_dead_trials(study: optuna.Study, tracker: Tracker, heartbeat: bool = False) -> list[int]:
    """Trials RUNNING whose worker process on this host is gone (kill -9, OOM, power loss): FAIL, run KILLED.
    With a heartbeat (PostgreSQL), also trials of any host whose heartbeat is stale (FAIL, then retried)."""
    if heartbeat:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if worker_alive(t.user_attrs.get("worker")) is not False:
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        except ValueError:  # finished meanwhile
            continue
        tracker.end_run(t.user_attrs.get("mlflow_run_id"), "KILLED", {"optuna.state": "FAIL"})
        failed.append(t.number)
    if failed:
        print(f"search: trial(s) {', '.join(map(str, failed))} were left RUNNING by a worker that is gone; "
              "marked FAIL (their MLflow runs KILLED)")
    return failed


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


# --- after each trial -----------------------------------------------------------------------------------------


class _AfterTrial:
    """After each trial: a progress line, the front published (files + parent run + pareto tags), and a stop after
    too many failures in a row."""

    def __init__(self, tracker: Tracker, out_dir: Path, max_failures: int, n_trials: int):
        self.tracker, self.out_dir, self.max_failures, self.n_trials = tracker, out_dir, max_failures, n_trials
        self.failures: list[FrozenTrial] = []
        self.durations: list[float] = []
        self.warned_busy = False

    def publish(self, study: optuna.Study) -> list[Path]:
        try:
            rows = front_rows(study)
            base = baseline_row(study)
            files = write_front(rows, objective_names(study), study.directions, self.out_dir,
                                study_title(study, rows), [base] if base else [])
            self.tracker.mark_pareto(rows)
            self.tracker.log_front(files, len(rows), sum(r["pareto"] for r in rows), len(study.trials))
            return files
        except Exception as exc:  # a plot must never cost the study
            print(f"warning: could not publish the Pareto front: {_first_line(exc)}", file=sys.stderr)
            return []

    def progress(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """`trial 3/24 · depth_share 0.55 · 4 blocks, width 0.06 · top-1 86.5% (−0.2) · 6.3 ms (−21%) · on front`"""
        done = sum(counted(t) for t in study.get_trials(deepcopy=False))
        parts = [f"trial {trial.number} ({done}/{self.n_trials} finished)"]
        if SCREENED_OUT in trial.user_attrs:
            print(f"trial {trial.number} screened out · {trial.user_attrs[SCREENED_OUT]}", flush=True)
            return
        if trial.state != TrialState.COMPLETE:
            reason = trial.user_attrs.get("error") or trial.state.name.lower()
            print(" · ".join([*parts, f"{trial.state.name}: {str(reason)[:160]}"]), flush=True)
            return
        a, plan = trial.user_attrs, trial.user_attrs.get("plan", {})
        if "depth_share" in plan:
            parts.append(f"depth_share {plan['depth_share']:.2f}")
        parts.append(f"{a.get('blocks_removed', '?')} blocks, width {a.get('channel_ratio', 0):.3f}")
        names = objective_names(study)
        for name, value in zip(names, trial.values, strict=True):
            if name == "finetuned/top1":
                drop = value - a["baseline/top1"] if "baseline/top1" in a else None
                parts.append(f"top-1 {value:.2f}%" + (f" ({drop:+.2f})" if drop is not None else ""))
            elif name.startswith("latency/"):
                gain = a.get("latency_reduction_pct")
                parts.append(f"{value:.2f} ms" + (f" ({-gain:+.0f}%)" if gain is not None else ""))
            else:
                parts.append(f"{name} {value:.4g}")
        on_front = any(r["trial"] == trial.number and r["pareto"] for r in front_rows(study))
        parts.append("on front" if on_front else "off front")
        if trial.duration is not None:
            self.durations.append(trial.duration.total_seconds())
            left = max(self.n_trials - done, 0) * sum(self.durations) / len(self.durations)
            parts.append(f"{self.durations[-1]:.0f} s" + (f", about {left / 60:.0f} min left" if left else ""))
        print(" · ".join(parts), flush=True)
        load = a.get("load_avg")
        cores = os.cpu_count() or 1
        # the search's own fine-tuning keeps about `cores` threads busy: only more than that is other work
        if not self.warned_busy and load not in (None, "unknown") and float(load) > BUSY_LOAD_PER_CORE * cores:
            self.warned_busy = True
            print(f"warning: the machine is busy (load average {float(load):.1f} on {cores} cores): per-trial "
                  "latencies read its load; the front is drawn from one interleaved re-measure at the end",
                  file=sys.stderr)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.FAIL and not trial.user_attrs.get("surplus"):
            self.failures.append(trial)
        elif trial.state in FINISHED and SCREENED_OUT not in trial.user_attrs:  # a screened-out plan ran nothing
            self.failures.clear()
        if self.max_failures and len(self.failures) >= self.max_failures:
            stop(study)
        try:
            fail_dead_trials(study, self.tracker)  # a killed fellow worker's trial must not hold its place
        except Exception as exc:  # bookkeeping must never cost the study
            print(f"warning: could not check other workers' trials: {_first_line(exc)}", file=sys.stderr)
        if not trial.user_attrs.get("surplus"):
            self.progress(study, trial)
        if SCREENED_OUT not in trial.user_attrs:  # the front only changes with a fine-tuned trial
            self.publish(study)


def final_pass(study: optuna.Study, cfg, tracker: Tracker) -> None:
    """Re-measure the front's candidates and the baseline together (`remeasure.py`); never costs the study."""
    from hybridsweep.search.remeasure import remeasure

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return
    try:
        baseline = remeasure([study], cfg)
    except Exception as exc:
        print(f"warning: the final latency pass failed ({_first_line(exc)}); the per-trial latencies stand",
              file=sys.stderr)
        return
    if baseline is not None:
        tracker.log_baseline(baseline)


# --- the search -----------------------------------------------------------------------------------------------


def front_table(rows: list[dict], objectives: list[str], baseline: dict | None = None) -> str:
    """The Pareto trials as a plain text table, best top-1 first, under the unpruned baseline when measured."""
    columns = ["trial", "budget_group", *objectives, "final_latency_ms", "flops_ratio", "blocks_removed",
               "channel_ratio", "order"]
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: -r.get(objectives[0], 0))
    front = ([baseline] if baseline else []) + front

    def cell(value) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    table = [columns] + [[cell(r.get(c)) for c in columns] for r in front]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(line, widths, strict=True)) for line in table]
    return "Pareto front:\n" + "\n".join(lines)


def compose_probe(base: list[str], plan_overrides: list[str]):
    """The config of a first trial, checked: a command line that cannot make a trial fails before the study."""
    from hybridsweep.config import validate

    try:
        cfg = compose_trial_config([*base, *plan_overrides])
    except Exception as exc:
        raise UserError(f"a trial's config does not compose from this command line: {_first_line(exc)}") from exc
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


def run_search(cfg, overrides: Sequence[str] | None = None) -> optuna.Study:
    """Run (or resume) the study `cfg.search` describes; returns it. `overrides` is the command line that
    composed `cfg` (read from Hydra inside `python -m hybridsweep`)."""
    command_line = _command_line(overrides)
    # our own line per trial replaces Optuna's INFO line and its WARNING traceback of a failed trial
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    search = cfg.search
    sampler_name = _sampler_name(search)
    space = parse_space(search, cfg, fixed_keys(command_line))
    keys, directions = objectives(search, cfg)
    if search.get("n_trials") is None and sampler_name == "grid":
        n_trials = 1
        for values in space.grid(_int(search, "grid_points", 5, 1)).values():
            n_trials *= len(values)
    else:
        if search.get("n_trials") is None:
            raise UserError(f"search.n_trials is null: search={sampler_name} needs the study's total number of trials")
        n_trials = _int(search, "n_trials", 0, 1)
    max_failures = _int(search, "max_consecutive_failures", 5, 0)
    seed = search.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise UserError(f"search.seed={seed} is invalid: an integer or null")
    early_stop = _early_stop(search)
    screen = ScreenSettings.from_config(search)
    name = str(search.get("study_name") or default_study_name(sampler_name, cfg, space))
    spec = str(search.get("storage") or "sqlite:///optuna.db")
    shown = redact(spec)
    storage = open_storage(spec, _int(search, "heartbeat_s", 60, 1), _int(search, "retries", 1, 0))

    base = trial_base_overrides(command_line)
    probe = {**space.fixed, **{d.name: (d.choices[0] if d.choices else d.low) for d in space.dims}}
    check_inputs(compose_probe(base, space.overrides(probe)))

    with study_lock(spec, storage, name):
        tracker = Tracker.from_config(cfg.tracking, name)  # creates the MLflow store: one worker at a time
        existing = _check_existing(name, storage, shown, keys, directions)
        # workers of one multirun differ only in search.worker: without it they would sample the same plans
        worker_seed = None if seed is None else seed + existing + 1_000_003 * _int(search, "worker", 0, 0)
        sampler = _make_sampler(sampler_name, search, space, worker_seed)
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, directions=directions,
                                    load_if_exists=True)
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
            tags={"optuna.storage": shown, "optuna.sampler": sampler_name},
            params={"sampler": sampler_name, "n_trials": n_trials, "objectives": ",".join(keys),
                    "search_space": space.describe(), "command_line": " ".join(base)},
        )
        tracker.close_orphans(study)

    out_dir = output_dir(cfg) / name
    after = _AfterTrial(tracker, out_dir, max_failures, n_trials)
    done = sum(counted(t) for t in study.get_trials(deepcopy=False))
    running = sum(not t.user_attrs.get("screening")
                  for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    remaining = n_trials - done - running
    screening = f"; each chosen from {screen.candidates} screened plans" if screen.candidates > 1 else ""
    print(f"search: study {name} in {shown}: {done} of {n_trials} trials finished, {running} running elsewhere; "
          f"running {max(remaining, 0)} here{screening}. Space: {space.describe()}")

    objective = Objective(space=space, base_overrides=base, metric_keys=keys, n_trials=n_trials, tracker=tracker,
                          output_dir=out_dir, early_stop=early_stop, study=study)
    status = "FAILED"
    start = time.perf_counter()
    try:
        if remaining > 0 and screen.candidates > 1:
            optimize_screened(study, objective, screen, n_trials, after, max_failures)
        elif remaining > 0:
            # A failed trial is replaced (the total counts finished trials); the failure guard ends a run that
            # only fails. Without the guard, this run stops after `remaining` trials, failed or not.
            study.optimize(
                objective, n_trials=None if max_failures else remaining, catch=(Exception,),
                callbacks=[MaxTrialsCallback(n_trials, states=FINISHED), after],
            )
        if objective.fatal is not None:
            raise objective.fatal
        status = "FINISHED"
        if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # the last worker measures
            final_pass(study, compose_trial_config(base), tracker)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (see __main__)
        status = "KILLED"
        raise
    finally:
        # the store may be what failed: the error already raised is the one line to show
        files = after.publish(study)  # never raises: a plot must never cost the study
        with suppress(TrackingError):
            tracker.close_orphans(study)
            tracker.finish(study, status)

    rows = front_rows(study)
    print(front_table(rows, objective_names(study), baseline_row(study)))
    print(f"search: {study_title(study, rows)} ({time.perf_counter() - start:.0f} s here)\n"
          f"  front: {' '.join(str(f) for f in files)}\n"
          f"  MLflow: {f'experiment {name}, parent run {tracker.parent_id}' if tracker.enabled else 'off'}; "
          f"Optuna: optuna-dashboard {shown}")
    if max_failures and len(after.failures) >= max_failures:
        last = after.failures[-1]
        raise UserError(
            f"search: {len(after.failures)} trials failed in a row, the last (trial {last.number}) with "
            f"{last.user_attrs.get('error', 'an error shown above')}; fix it and rerun the same command to resume"
        )
    return study
