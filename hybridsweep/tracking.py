"""The only module that imports MLflow: one run per trial, nested under a parent run per sweep.

A trial's run ends FINISHED when the trial returns and FAILED when it raises, so no run is left RUNNING
by a user mistake or a crash inside the trial. `tracking.enabled=false` swaps in a logger that records nothing.
"""

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from hybridsweep.errors import UserError

PARENT_ENV = "HYBRIDSWEEP_PARENT_RUN_ID"  # set by the multirun callback so every job nests under one parent


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class RunLogger:
    """What a trial may log; a thin layer so trials never touch mlflow directly."""

    def __init__(self, run_id: str | None):
        self.run_id = run_id

    def params(self, values: dict[str, Any]) -> None:
        import mlflow

        mlflow.log_params({k: ("null" if v is None else v) for k, v in values.items()})

    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        import mlflow

        mlflow.log_metrics({k: float(v) for k, v in values.items() if v is not None}, step=step)

    def tags(self, values: dict[str, Any]) -> None:
        import mlflow

        mlflow.set_tags({k: str(v) for k, v in values.items()})

    def artifact(self, path: str | Path, folder: str | None = None) -> None:
        import mlflow

        mlflow.log_artifact(str(path), artifact_path=folder)

    def dict(self, value: dict, name: str) -> None:
        import mlflow

        mlflow.log_dict(value, name)


class NullLogger(RunLogger):
    def __init__(self):
        super().__init__(None)

    def params(self, values):
        pass

    def metrics(self, values, step=None):
        pass

    def tags(self, values):
        pass

    def artifact(self, path, folder=None):
        pass

    def dict(self, value, name):
        pass


def _connect(uri: str, experiment: str):
    import mlflow

    if uri.startswith("file:") or "://" not in uri:
        raise UserError(
            f"tracking.uri={uri}: MLflow 3 refuses file stores; use sqlite:///mlflow.db or a server URL"
        )
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment(experiment)
    except Exception as exc:  # MLflow raises many types for a bad store; the user needs the URI and reason
        raise UserError(f"tracking.uri={uri}: the MLflow store cannot be opened ({exc})") from exc


@contextmanager
def trial_run(tracking, run_name: str, tags: dict[str, Any] | None = None) -> Iterator[RunLogger]:
    """Open an MLflow run for one trial (nested under the sweep's parent run when there is one)."""
    if not tracking.enabled:
        yield NullLogger()
        return
    import mlflow

    _connect(tracking.uri, tracking.experiment)
    parent = os.environ.get(PARENT_ENV)
    with mlflow.start_run(run_name=run_name, nested=parent is not None, parent_run_id=parent, tags=tags) as run:
        yield RunLogger(run.info.run_id)


@contextmanager
def parent_run(tracking, run_name: str, tags: dict[str, Any] | None = None) -> Iterator[str | None]:
    """A parent run for a sweep; its id is exported so trials (in this or child processes) nest under it."""
    if not tracking.enabled:
        yield None
        return
    import mlflow

    _connect(tracking.uri, tracking.experiment)
    run = mlflow.start_run(run_name=run_name, tags=tags)
    os.environ[PARENT_ENV] = run.info.run_id
    status = "FAILED"
    try:
        yield run.info.run_id
        status = "FINISHED"
    finally:
        os.environ.pop(PARENT_ENV, None)
        mlflow.end_run(status=status)


class MultirunParentCallback(Callback):
    """Hydra callback: one MLflow parent run per multirun, so a grid's jobs are grouped in the UI."""

    def __init__(self):
        self._parent = None

    def on_multirun_start(self, config, **kwargs) -> None:
        tracking = config.tracking
        if tracking.enabled:
            self._parent = parent_run(tracking, run_name=f"multirun-{Path(config.hydra.sweep.dir).name}")
            self._parent.__enter__()

    def on_multirun_end(self, config, **kwargs) -> None:
        if self._parent is not None:
            self._parent.__exit__(None, None, None)
            self._parent = None
