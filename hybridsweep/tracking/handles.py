"""A run's handle, what a trial may log (params, metrics, tags, files, its model), and the handle that logs
nothing when tracking is off. A `Tracker` (tracker.py) hands them out; trials never touch MLflow themselves."""

from __future__ import annotations

import tempfile
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hybridsweep.redaction import redact, redact_tree
from hybridsweep.tracking.store import store_errors

if TYPE_CHECKING:
    from hybridsweep.tracking.tracker import Tracker


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
                with _without_pickle_warning():  # the choice above, made knowingly: not a warning per trial
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


@contextmanager
def _without_pickle_warning():
    """mlflow.pytorch warns on every pickled save; its other messages still show."""
    import logging

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Saving pytorch model by Pickle")

    logger = logging.getLogger("mlflow.pytorch")
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


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
