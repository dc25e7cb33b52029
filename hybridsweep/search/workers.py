"""Which process runs a trial, so that a trial left RUNNING by a worker that is gone (kill -9, OOM, power loss)
can be told from one a live worker still runs, and failed instead of holding its place in the study forever."""

from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState, create_trial

from hybridsweep.tracking import Tracker


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]  # field 22: start time in clock ticks since boot


def worker_id() -> str:
    """host:pid:start time: the start time tells a reused pid from the worker that had it."""
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


RETRY_OF = "retry_of"  # user attr of a trial queued to rerun a killed one: its number


def fail_dead_trials(study: optuna.Study, tracker: Tracker, heartbeat: bool = False) -> list[int]:
    """Trials RUNNING whose worker process on this host is gone: FAIL, run KILLED, and their plan queued to run
    again first (once: a plan that keeps killing its worker is not retried for ever), so a sweep stopped by a
    session's end or a reboot loses no plan its sampler chose. With a heartbeat (PostgreSQL), also trials of any
    host whose heartbeat is stale (FAIL, then retried by Optuna)."""
    if heartbeat:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    failed, retried = [], []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if worker_alive(t.user_attrs.get("worker")) is not False:
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        except ValueError:  # finished meanwhile
            continue
        failed.append(t.number)
        # queued before the MLflow run's end, which may fail: the trial is FAIL already (re-read: its new state)
        if queue_again(study, study.get_trials(deepcopy=False)[t.number]):
            retried.append(t.number)
        tracker.end_run(t.user_attrs.get("mlflow_run_id"), "KILLED", {"optuna.state": "FAIL"})
    if failed:
        again = f"; trial(s) {', '.join(map(str, retried))} run again first" if retried else ""
        print(f"search: trial(s) {', '.join(map(str, failed))} were left RUNNING by a worker that is gone; "
              f"marked FAIL (their MLflow runs KILLED){again}")
    return failed


def queue_again(study: optuna.Study, trial: FrozenTrial, interrupted: bool = False) -> bool:
    """Queue a failed trial's plan to run first: not a plan that was only being screened (screening is cheap to
    redo), not one already queued. A dead worker's plan is retried once (a plan that keeps killing its worker,
    out of memory, is not retried for ever); a plan stopped by Ctrl-C or SIGTERM whenever it is stopped, since the
    stop was not its fault. The retry keeps the trial's system attributes, as Optuna's RetryFailedTrialCallback
    does (GridSampler counts a failed trial's point as visited, and finds the point again by its `grid_id`), but
    not its constraints, which the retry sets anew, nor the record of an earlier Optuna retry; and its screen
    scores (`screen/...`), so that a screened search need not screen it again."""
    if trial.state != TrialState.FAIL or (RETRY_OF in trial.user_attrs and not interrupted) \
            or trial.user_attrs.get("screening") or not trial.params:
        return False
    if any(t.user_attrs.get(RETRY_OF) == trial.number for t in study.get_trials(deepcopy=False)):
        return False
    system_attrs = {k: v for k, v in trial.system_attrs.items()
                    if not k.startswith("constraints") and k not in ("failed_trial", "retry_history")}
    scores = {k: v for k, v in trial.user_attrs.items() if k.startswith("screen/")}
    study.add_trial(create_trial(state=TrialState.WAITING, user_attrs={**scores, RETRY_OF: trial.number},
                                 system_attrs={**system_attrs, "fixed_params": dict(trial.params)}))
    return True
