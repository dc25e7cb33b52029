"""The only module that imports MLflow: one run per trial, nested under a parent run per sweep.

A trial's run ends FINISHED when the trial returns and FAILED when it raises, so no run is left RUNNING
by a user mistake or a crash inside the trial. `tracking.enabled=false` swaps in a logger that records nothing.
"""

import os
import subprocess
import time
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

    _check_store(uri)
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


def ensure_experiment(uri: str, name: str, artifact_dir: Path) -> str:
    """The experiment's id, created with its artifacts under `artifact_dir` (MLflow's default would put them
    in ./mlruns of whatever folder the first run started in)."""
    from mlflow import MlflowClient

    _check_store(uri)
    client = MlflowClient(tracking_uri=uri)
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    artifact_dir.mkdir(parents=True, exist_ok=True)
    return client.create_experiment(name, artifact_location=artifact_dir.resolve().as_uri())


def _check_store(uri: str) -> None:
    if uri.startswith("file:") or "://" not in uri:
        raise UserError(
            f"tracking.uri={uri}: MLflow 3 refuses file stores; use sqlite:///mlflow.db or a server URL"
        )


def finished_trial_runs(uri: str, experiment: str) -> list:
    """Every FINISHED trial run of an experiment (oldest first), as MLflow Run objects."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs(
        [found.experiment_id],
        filter_string="tags.`hybridsweep.kind` = 'trial' and attributes.status = 'FINISHED'",
        max_results=50000,
        order_by=["attributes.start_time ASC"],
    )
    return list(runs)


def update_run(uri: str, run_id: str, metrics: dict[str, float], tags: dict[str, str]) -> None:
    """Add metrics and tags to a finished run (the final latency pass does this after the trial)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    client = MlflowClient(tracking_uri=uri)
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
        tags=[RunTag(k, str(v)) for k, v in tags.items()],
    )


def download_model(uri: str, run_id: str) -> Path:
    """The run's `model/` artefacts (plan.json, model.pt, model.onnx) as a local folder."""
    import mlflow

    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model", tracking_uri=uri))


def log_report_run(tracking, studies: list[str], files: list[Path]) -> str | None:
    """`task=report`: the overlaid fronts as a run of their own, in the experiment `tracking.experiment`."""
    if not tracking.enabled:
        return None
    import mlflow

    _connect(tracking.uri, tracking.experiment)
    tags = {"hybridsweep.kind": "report", "report.studies": ",".join(studies)}
    with mlflow.start_run(run_name="report: " + " vs ".join(studies), tags=tags) as run:
        for path in files:
            mlflow.log_artifact(str(path), artifact_path="pareto")
        plotly_js = Path(files[0]).with_name("plotly.min.js")
        if plotly_js.is_file():
            mlflow.log_artifact(str(plotly_js), artifact_path="pareto")
        return run.info.run_id


def close_stale_runs(uri: str, experiment: str, tag: str) -> int:
    """Runs carrying `tag` left RUNNING by a runner that was killed (the caller holds the only runner's lock)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return 0
    stale = client.search_runs([found.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=5000)
    stale = [run for run in stale if tag in run.data.tags]
    for run in stale:
        client.set_terminated(run.info.run_id, "KILLED")
    return len(stale)
