"""The only package that imports MLflow: trials and searches log through its handles, never to MLflow directly.

store.py: opening the store (driver, lock, one-line errors); tracker.py: a `Tracker` owns one MlflowClient for one
store and experiment, hands out `RunLogger` handles (handles.py; passed explicitly, never through MLFLOW_RUN_ID)
and keeps a search's side of MLflow; runs.py: a single trial's run and the parent run of a multirun.

- A store that cannot be written raises `TrackingError`: one line naming `tracking.uri`, no SQL dump.
- A trial's run ends FINISHED when the trial returns, FAILED when it raises, KILLED on Ctrl-C or SIGTERM.
- Everything a run stores (params, tags, the config artefact) goes through `redaction.redact` first.
"""

from hybridsweep.tracking.handles import NullLogger, RunLogger
from hybridsweep.tracking.runs import MultirunParentCallback, git_commit, multirun_parent, trial_run
from hybridsweep.tracking.store import TrackingError, postgres_driver
from hybridsweep.tracking.tracker import Tracker

__all__ = [
    "MultirunParentCallback",
    "NullLogger",
    "RunLogger",
    "Tracker",
    "TrackingError",
    "git_commit",
    "multirun_parent",
    "postgres_driver",
    "trial_run",
]
