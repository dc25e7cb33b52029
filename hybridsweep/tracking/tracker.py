"""A `Tracker` owns one MlflowClient for one store and experiment: it opens runs and hands them out as
`RunLogger` handles (handles.py), and keeps a search's side of MLflow (the study's parent run, one nested run per trial,
orphans closed, the front tagged).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hybridsweep.redaction import redact
from hybridsweep.tracking.handles import NullLogger, RunLogger
from hybridsweep.tracking.store import check_store, postgres_driver, store_errors, store_lock

BEST_TOP1_ALIAS = "pareto-best-top1"  # the registered front's member with the best top-1


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

    def delete_run(self, run_id: str | None) -> None:
        """Move a run that logged nothing worth keeping (a plan skipped before its fine-tune) to MLflow's trash."""
        if self.enabled and run_id:
            with store_errors(self.uri):
                self.client.delete_run(run_id)

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

        with store_errors(self.uri, "read"):
            return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model",
                                                            tracking_uri=postgres_driver(self.uri)))

    def run(self, run_id: str):
        """One run (MLflow Run: info, params, metrics, tags)."""
        with store_errors(self.uri, "read"):
            return self.client.get_run(run_id)

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

    def register_front(self, rows: Sequence[dict], name: str | None = None) -> str | None:
        """Register the front's logged models in the Model Registry under one name per study (the study's, with
        '/' and ':' made '-'): one version per feasible front trial, found again by its `trial` tag so a trial
        is registered once however often the front is tagged. Membership is the version tag `pareto=true|false`,
        updated on every call, not an alias: an alias names ONE version of a registered model, and a front has
        several members (a model that leaves the front keeps its version, tagged `pareto=false`). The one alias,
        `pareto-best-top1`, names the member with the best top-1. Returns the registered model's name, or None
        when nothing was registered (tracking off, no feasible front trial with a logged model)."""
        if not self.enabled or self.experiment_id is None:
            return None
        name = re.sub(r"[/:]", "-", name or self.experiment or "")
        members = {int(r["trial"]): r for r in rows if r["pareto"] and r.get("feasible") and r.get("mlflow_run_id")}
        with store_errors(self.uri):
            versions = self._registered_versions(name)
            if not members and not versions:
                return None
            if not versions:
                with suppress_exists():
                    self.client.create_registered_model(name, description=f"The Pareto front of study {name}")
            for number, row in members.items():
                if number in versions:
                    continue
                run_id = row["mlflow_run_id"]
                models = self.client.search_logged_models(
                    experiment_ids=[self.experiment_id],
                    filter_string=f"source_run_id = '{run_id}' AND name = 'model'", max_results=1)
                if not models:  # the trial's model was not logged: nothing to register
                    continue
                model_id = models[0].model_id
                # MLflow's registry store looks a `models:/<id>` source up through the process's global
                # tracking URI, not this client's: point it at this store for the call
                with _use_tracking_uri(postgres_driver(self.uri)):
                    versions[number] = self.client.create_model_version(
                        name, source=f"models:/{model_id}", run_id=run_id, model_id=model_id,
                        tags={"trial": str(number), "pareto": "true", "model_id": model_id,
                              **_objective_tags(row)})
            best: tuple[float, str] | None = None
            for number, version in versions.items():
                value = "true" if number in members else "false"
                if version.tags.get("pareto") != value:
                    self.client.set_model_version_tag(name, version.version, "pareto", value)
                if number in members:
                    tags = _objective_tags(members[number])  # the final latency pass changes the latency
                    for key, tag in tags.items():
                        if version.tags.get(key) != tag:
                            self.client.set_model_version_tag(name, version.version, key, tag)
                    if "top1" in tags and (best is None or float(tags["top1"]) > best[0]):
                        best = (float(tags["top1"]), version.version)
            if best is not None:
                self.client.set_registered_model_alias(name, BEST_TOP1_ALIAS, best[1])
        return name

    def _registered_versions(self, name: str) -> dict[int, Any]:
        """The registered versions of `name` by their `trial` tag."""
        found = self.client.search_model_versions(f"name = '{name}'", max_results=10000)
        return {int(v.tags["trial"]): v for v in found if v.tags.get("trial", "").isdigit()}

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


def _objective_tags(row: dict) -> dict[str, str]:
    """A front row's objectives as model version tags: top1, latency_ms (the final pass's when there was one),
    params/flops when they are objectives, and the trial's budget group."""
    tags = {"budget_group": str(row.get("budget_group", "all"))}
    for key, value in row.items():
        if value is None:
            continue
        if key == "finetuned/top1":
            tags["top1"] = str(value)
        elif key.startswith("latency/") and row.get("final_latency_ms") is None:
            tags["latency_ms"] = str(value)
        elif key == "final_latency_ms":
            tags["latency_ms"] = str(value)
        elif key in ("params", "flops"):
            tags[key] = str(value)
    return tags


def _use_tracking_uri(uri: str):
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri as use

    return use(uri)


@contextmanager
def suppress_exists():
    """Another worker of the study may have created the registered model first."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
