"""A trial's run (its own, or the one its search made) ending FINISHED, FAILED or KILLED; the parent run a
multirun's jobs nest under; and the code version a run records."""

from __future__ import annotations

import atexit
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from hybridsweep.errors import UserError
from hybridsweep.tracking.handles import NullLogger, RunLogger
from hybridsweep.tracking.store import TrackingError
from hybridsweep.tracking.tracker import Tracker

PARENT_FILE = "mlflow_parent_run_id"  # in a multirun's sweep folder: the parent run every job nests under


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


@contextmanager
def trial_run(tracking, run_name: str, tags: dict[str, Any], run: RunLogger | NullLogger | None = None
              ) -> Iterator[RunLogger | NullLogger]:
    """The run a trial logs to: `run` when the caller made it (a search), else a new one in `tracking.experiment`
    (nested under a multirun's parent). It ends FINISHED, FAILED on an error, KILLED on Ctrl-C or SIGTERM."""
    if run is None:
        tracker = Tracker.from_config(tracking)
        run = tracker.start_run(run_name, tags, parent_id=multirun_parent())
    else:
        run.tags(tags)
    try:
        yield run
    except BaseException as exc:
        with suppress(TrackingError):  # the store may be what failed: the first error is the one to show
            run.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    run.end("FINISHED")


def multirun_parent() -> str | None:
    """The parent run of the multirun this job belongs to (written by `MultirunParentCallback`), if any."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        hydra = HydraConfig.get()
    except ValueError:  # not inside `python -m hybridsweep` (tests, Compose API)
        return None
    if hydra.mode != RunMode.MULTIRUN:
        return None
    path = Path(hydra.sweep.dir) / PARENT_FILE
    return path.read_text().strip() if path.is_file() else None


class MultirunParentCallback(Callback):
    """Hydra callback: one MLflow parent run per multirun of single trials, so a grid's jobs are grouped in the
    UI; its id goes to the sweep folder, where every job (in this process or a launcher's) reads it. A search
    has a parent run per study instead. Hydra skips `on_multirun_end` when a job fails, so the run is also ended
    when the process exits without it: a stopped multirun never leaves its parent RUNNING. It ends FAILED, or
    KILLED when Ctrl-C or SIGTERM stopped it (`__main__` sets `interrupted`), as its running job's run does."""

    interrupted = False

    def __init__(self):
        self._tracker: Tracker | None = None
        self._run_id: str | None = None

    def on_multirun_start(self, config, **kwargs) -> None:
        if not config.tracking.enabled or config.task != "prune" or config.search.get("sampler") not in (None, "none"):
            return
        try:
            self._tracker = Tracker.from_config(config.tracking)
            sweep = Path(config.hydra.sweep.dir)
            run = self._tracker.start_run(f"multirun-{sweep.name}", {"hybridsweep.kind": "multirun"})
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        sweep.mkdir(parents=True, exist_ok=True)
        (sweep / PARENT_FILE).write_text(run.run_id)
        self._run_id = run.run_id
        atexit.register(self._end_at_exit)

    def on_multirun_end(self, config, **kwargs) -> None:
        self._end("FINISHED")
        atexit.unregister(self._end_at_exit)

    def _end_at_exit(self) -> None:
        self._end("KILLED" if MultirunParentCallback.interrupted else "FAILED")

    def _end(self, status: str) -> None:
        if self._tracker is not None:
            with suppress(TrackingError):
                self._tracker.end_run(self._run_id, status)
            self._tracker = None
