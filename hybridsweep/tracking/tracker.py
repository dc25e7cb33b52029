"""A `Tracker` owns one MlflowClient for one store and experiment: it opens runs and hands them out as
`RunLogger` handles, and keeps a search's side of MLflow (the study's parent run, one nested run per trial,
orphans closed, the front tagged).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

from hybridsweep.redaction import redact, redact_tree
from hybridsweep.tracking.store import check_store, postgres_driver, store_errors, store_lock


class RunLogger:
    """One run's handle: what a trial may log. Trials never touch MLflow themselves."""

    def __init__(self, tracker: Tracker, run_id: str):
        self.tracker, self.run_id = tracker, run_id

    def params(self, values: dict[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(k, redact("null" if v is None else v)[:6000]) for k, v in values.items()]
        with store_errors(self.tracker.uri):
            self.tracker.client.log_batch(self.run_id, params=params)

    def metrics(self, values: dict[str, float], step: int | None = None, model_id: str | None = None) -> None:
        """`model_id` (from `model`) also files the metrics under that logged model, for the Logged Models page."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step or 0, model_id=model_id) for k, v in values.items() if v is not None]
        with store_errors(self.tracker.uri):
            self.tracker.client.log_batch(self.run_id, metrics=metrics)

    def tags(self, values: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        with store_errors(self.tracker.uri):
            self.tracker.client.log_batch(self.run_id, tags=[RunTag(k, redact(v)) for k, v in values.items()])

    def artifact(self, path: str | Path, folder: str | None = None) -> None:
        with store_errors(self.tracker.uri):
            self.tracker.client.log_artifact(self.run_id, str(path), artifact_path=folder)

    def dict(self, value: dict, name: str) -> None:
        with store_errors(self.tracker.uri):
            self.tracker.client.log_dict(self.run_id, redact_tree(value), name)

    def model(self, model, example_input, name: str = "model") -> str:
        """Log `model` (an nn.Module on the CPU, in eval mode) as an MLflow Model, a LoggedModel that is this
        run's output, so `mlflow.pytorch.load_model("runs:/<run id>/<name>")` loads it. What
        `mlflow.pytorch.log_model` does, through this run's client (no fluent API, no global tracking URI) and
        without its slow steps: requirements are given, not inferred, and the example is not served back.
        Pickled, not MLflow 3's default pt2 (torch.export): loading gives back the pruned module itself, which
        can be fine-tuned or pruned again, and a batch-1 example does not fix the batch size; `model.onnx`
        beside it is the pickle-free form. `example_input` is a numpy batch; returns the logged model's id."""
        import mlflow.pytorch
        import torch
        from mlflow.entities import LoggedModelOutput
        from mlflow.models import Model, infer_signature

        with torch.no_grad():
            output = model(torch.from_numpy(example_input)).numpy()
        signature = infer_signature(example_input, output)
        client = self.tracker.client
        with store_errors(self.tracker.uri):
            run = client.get_run(self.run_id)
            logged = client.create_logged_model(run.info.experiment_id, name=name, source_run_id=self.run_id,
                                                params=run.data.params)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / name
                meta = Model(artifact_path=logged.artifact_location, run_id=self.run_id,
                             model_uuid=logged.model_id, model_id=logged.model_id)
                mlflow.pytorch.save_model(model, path, mlflow_model=meta, signature=signature,
                                          input_example=example_input, pip_requirements=_requirements(),
                                          serialization_format="pickle")
                with store_errors(self.tracker.uri):
                    client.log_model_artifacts(logged.model_id, str(path))
            with store_errors(self.tracker.uri):
                client.log_outputs(self.run_id, [LoggedModelOutput(logged.model_id, step=0)])
                client.finalize_logged_model(logged.model_id, "READY")
        except BaseException:
            with suppress(Exception):  # the first error is the one to show
                client.finalize_logged_model(logged.model_id, "FAILED")
            raise
        return logged.model_id

    def end(self, status: str) -> None:
        self.tracker.end_run(self.run_id, status)


class NullLogger:
    """`tracking.enabled=false`: a handle that records nothing."""

    run_id = None

    def params(self, values):
        pass

    def metrics(self, values, step=None, model_id=None):
        pass

    def tags(self, values):
        pass

    def artifact(self, path, folder=None):
        pass

    def dict(self, value, name):
        pass

    def model(self, model, example_input, name="model"):
        return None

    def end(self, status):
        pass


def _requirements() -> list[str]:
    """Pinned, so MLflow does not spend seconds per model inferring them by reloading it. Distribution versions,
    not `torch.__version__`: its local label (+cu130) is not what pip installs, and MLflow warns about it."""
    from importlib.metadata import version

    import hybridsweep

    return [f"torch=={version('torch')}", f"torchvision=={version('torchvision')}",
            f"hybridsweep=={hybridsweep.__version__}"]


class Tracker:
    """One MLflow store and experiment. `Tracker.from_config(tracking, experiment)` gives a disabled tracker
    (every method a no-op) when `tracking.enabled=false`."""

    def __init__(self, uri: str, experiment: str | None = None, artifact_dir: Path | None = None):
        from mlflow import MlflowClient

        check_store(uri)
        self.enabled = True
        self.uri, self.experiment = uri, experiment  # as the user typed it: messages name it
        self.experiment_id: str | None = None
        self.parent_id: str | None = None
        self._pareto: dict[str, str] = {}
        self._plotly_logged = False
        with store_lock(uri), store_errors(uri, "opened"):
            self.client = MlflowClient(tracking_uri=postgres_driver(uri))
            if experiment is not None:
                found = self.client.get_experiment_by_name(experiment)
                if found is not None:
                    self.experiment_id = found.experiment_id
                else:
                    location = None
                    if artifact_dir is not None:  # MLflow's default is ./mlruns of whatever folder runs first
                        artifact_dir.mkdir(parents=True, exist_ok=True)
                        location = artifact_dir.resolve().as_uri()
                    self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)

    @classmethod
    def from_config(cls, tracking, experiment: str | None = None) -> Tracker:
        if not tracking.enabled:
            return cls.disabled()
        return cls(str(tracking.uri), experiment or str(tracking.experiment))

    @classmethod
    def disabled(cls) -> Tracker:
        tracker = cls.__new__(cls)
        tracker.enabled, tracker.uri, tracker.experiment, tracker.experiment_id = False, "", None, None
        tracker.parent_id, tracker._pareto, tracker._plotly_logged = None, {}, False
        return tracker

    # --- runs ---------------------------------------------------------------------------------------------------

    def start_run(self, name: str, tags: dict[str, Any], parent_id: str | None = None) -> RunLogger | NullLogger:
        if not self.enabled:
            return NullLogger()
        tags = {k: redact(v) for k, v in tags.items()} | ({"mlflow.parentRunId": parent_id} if parent_id else {})
        with store_errors(self.uri):
            run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        return RunLogger(self, run.info.run_id)

    def end_run(self, run_id: str | None, status: str, tags: dict[str, str] | None = None) -> None:
        """Close a run if it is still RUNNING; KILLED (pruned, interrupted, worker gone) also replaces the FAILED
        a run gets for any exception."""
        if not self.enabled or not run_id:
            return
        with store_errors(self.uri):
            current = self.client.get_run(run_id).info.status
            if current == "RUNNING" or (status == "KILLED" and current == "FAILED"):
                self.client.set_terminated(run_id, status)
            for key, value in (tags or {}).items():
                self.client.set_tag(run_id, key, value)

    def update_run(self, run_id: str, metrics: dict[str, float], tags: dict[str, str]) -> None:
        """Add metrics and tags to a finished run (the final latency pass does this after the trial)."""
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        with store_errors(self.uri):
            self.client.log_batch(
                run_id,
                metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                tags=[RunTag(k, str(v)) for k, v in tags.items()],
            )

    def finished_trial_runs(self) -> list:
        """Every FINISHED trial run of the experiment (oldest first), as MLflow Run objects."""
        if self.experiment_id is None:
            return []
        with store_errors(self.uri, "read"):
            return list(self.client.search_runs(
                [self.experiment_id],
                filter_string="tags.`hybridsweep.kind` = 'trial' and attributes.status = 'FINISHED'",
                max_results=50000,
                order_by=["attributes.start_time ASC"],
            ))

    def download_model(self, run_id: str) -> Path:
        """The run's `model/` artefacts (plan.json, model.pt, model.onnx) as a local folder; MLflow adds the
        files of the run's logged model of that name (MLmodel, data/) beside them."""
        import mlflow

        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model",
                                                        tracking_uri=postgres_driver(self.uri)))

    def close_stale_runs(self, tag: str) -> int:
        """Runs carrying `tag` left RUNNING by a runner that was killed (the caller holds the only runner's lock)."""
        with store_errors(self.uri):
            stale = self.client.search_runs(
                [self.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=5000
            )
            stale = [run for run in stale if tag in run.data.tags]
            for run in stale:
                self.client.set_terminated(run.info.run_id, "KILLED")
        return len(stale)

    def log_report(self, studies: list[str], files: list[Path]) -> str | None:
        """`task=report`: the overlaid fronts as a run of their own."""
        if not self.enabled:
            return None
        run = self.start_run("report: " + " vs ".join(studies),
                             {"hybridsweep.kind": "report", "report.studies": ",".join(studies)})
        plotly_js = Path(files[0]).with_name("plotly.min.js") if files else None
        for path in [*files, *([plotly_js] if plotly_js is not None and plotly_js.is_file() else [])]:
            run.artifact(path, "pareto")
        run.end("FINISHED")
        return run.run_id

    # --- a search's side: one experiment per study, one parent run per study, one nested run per trial ---------

    def open_parent(self, study, tags: dict[str, str], params: dict[str, Any]) -> str | None:
        """Reuse the study's parent run (its id is a study user attr, so a resumed study and every worker share
        it; set RUNNING again) or create it. Call under the study lock."""
        if not self.enabled:
            return None
        run_id = study.user_attrs.get("mlflow_parent_run_id")
        with store_errors(self.uri):
            if run_id:
                try:
                    run = self.client.get_run(run_id)
                    if run.info.lifecycle_stage != "active" or run.info.experiment_id != self.experiment_id:
                        run_id = None
                except Exception:  # another tracking store than the study's first run used
                    run_id = None
            if run_id:
                self.client.update_run(run_id, status="RUNNING")
            else:
                parent = self.start_run(
                    self.experiment, {"optuna.study": self.experiment, "hybridsweep.kind": "search", **tags}
                )
                parent.params(params)
                run_id = parent.run_id
                study.set_user_attr("mlflow_parent_run_id", run_id)
                study.set_user_attr("mlflow_experiment", self.experiment)
                study.set_user_attr("mlflow_tracking_uri", redact(self.uri))
        self.parent_id = run_id
        return run_id

    def start_trial(self, number: int, run_name: str) -> RunLogger | NullLogger:
        """A trial's run, created before the trial starts so that a killed trial's run can be found."""
        return self.start_run(run_name, {"optuna.study": self.experiment, "optuna.trial": str(number),
                                         "study": self.experiment, "hybridsweep.kind": "trial"}, self.parent_id)

    def log_metrics(self, run_id: str | None, metrics: dict[str, float]) -> None:
        if self.enabled and run_id:
            with store_errors(self.uri):
                for key, value in metrics.items():
                    self.client.log_metric(run_id, key, float(value))

    def close_orphans(self, study) -> int:
        """Runs of this study left RUNNING by a trial that is no longer running (killed worker, stale heartbeat)."""
        from optuna.trial import TrialState

        if not self.enabled or not self.parent_id:
            return 0
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        with store_errors(self.uri, "read"):
            runs = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_id}' and attributes.status = 'RUNNING'",
                max_results=5000,
            )
        closed = 0
        for run in runs:
            number = run.data.tags.get("optuna.trial", "")
            trial = trials.get(int(number)) if number.isdigit() else None
            live = (trial is not None and trial.state == TrialState.RUNNING
                    and trial.user_attrs.get("mlflow_run_id") == run.info.run_id)
            if not live:
                state = trial.state.name if trial is not None else "UNKNOWN"
                self.end_run(run.info.run_id, "FINISHED" if state == "COMPLETE" else "KILLED", {"optuna.state": state})
                closed += 1
        return closed

    def mark_pareto(self, rows: Sequence[dict]) -> None:
        """Tag `pareto=true` on the front's runs (and `false` on runs that left it)."""
        if not self.enabled:
            return
        with store_errors(self.uri):
            for row in rows:
                run_id, value = row.get("mlflow_run_id"), "true" if row["pareto"] else "false"
                if run_id and self._pareto.get(run_id) != value:
                    self.client.set_tag(run_id, "pareto", value)
                    self._pareto[run_id] = value

    def log_front(self, files: Sequence[Path], complete: int, front: int, step: int) -> None:
        if not self.enabled or not self.parent_id:
            return
        with store_errors(self.uri):
            for path in files:
                self.client.log_artifact(self.parent_id, str(path), artifact_path="pareto")
            plotly_js = Path(files[0]).with_name("plotly.min.js") if files else None
            if plotly_js is not None and plotly_js.is_file() and not self._plotly_logged:  # 4.6 MB: once per run
                self.client.log_artifact(self.parent_id, str(plotly_js), artifact_path="pareto")
                self._plotly_logged = True
            self.client.log_metric(self.parent_id, "search/complete_trials", complete, step=step)
            self.client.log_metric(self.parent_id, "search/front_size", front, step=step)

    def log_baseline(self, baseline: dict) -> None:
        """The unpruned model on the parent run: what every trial of the front is compared with."""
        if not self.enabled or not self.parent_id:
            return
        with store_errors(self.uri):
            for key in ("top1", "params", "flops"):
                self.client.log_metric(self.parent_id, f"baseline/{key}", float(baseline[key]))
            self.client.log_metric(self.parent_id, f"baseline/latency/{baseline['backend']}/final_ms",
                                   float(baseline["latency_ms"]))
            self.client.set_tag(self.parent_id, "baseline.latency.load_avg", str(baseline["load_avg"]))

    def finish(self, study, status: str) -> None:
        """End the parent run, unless another worker still runs trials (the last one ends it)."""
        from optuna.trial import TrialState

        if not self.enabled or not self.parent_id:
            return
        if study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            return
        with store_errors(self.uri):
            self.client.set_terminated(self.parent_id, status)
