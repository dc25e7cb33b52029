"""Where a study lives (`search.storage`) and the lock that serialises its set-up between workers starting together.

sqlite:///FILE.db (the default) suits one worker; FILE.journal several workers on one machine; PostgreSQL several
machines, with a heartbeat that fails and retries the trial of a worker that stopped beating.
"""

from __future__ import annotations

import hashlib
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage

from hybridsweep.errors import UserError, first_line
from hybridsweep.redaction import redact
from hybridsweep.tracking import postgres_driver


def local_file(spec: str) -> Path | None:
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
    path = local_file(spec)
    if path is not None and not path.parent.is_dir():
        raise UserError(f"search.storage={shown}: the folder {path.parent} does not exist; create it or pick another")
    if spec.endswith(".journal"):
        try:
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as exc:
            raise UserError(f"search.storage={shown}: cannot open the journal file ({first_line(exc)})") from exc
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
        raise UserError(f"search.storage={shown}: cannot open the study storage ({first_line(exc)})") from exc


def open_existing(spec: str) -> BaseStorage:
    """A search's storage for a task that only reads it (`task=report`, `task=export`): a local file that is not
    there is a mistyped path, and opening it would create an empty store."""
    path = local_file(str(spec))
    if path is not None and not path.is_file():
        raise UserError(f"search.storage={redact(str(spec))}: no such study storage; point it at the search's "
                        "(sqlite:///FILE.db, FILE.journal or postgresql://...)")
    return open_storage(str(spec))


@contextmanager
def study_lock(spec: str, storage: BaseStorage, name: str):
    """Serialise between a study's workers what they would race on: the set-up (study, parent run, dead trials),
    the dead-trial check after each trial, the final latency pass. A wait is said, so that it is not a hang."""
    waiting = f"search: waiting for another worker of study {name} (its set-up, dead-trial check or final pass)"
    path = local_file(str(spec))
    if path is not None:
        from hybridsweep.cache import file_lock

        with file_lock(path.with_name(path.name + ".hybridsweep.lock"), waiting):
            yield
        return
    if isinstance(storage, RDBStorage) and storage.engine.dialect.name == "postgresql":
        from sqlalchemy import text

        key = int(hashlib.sha256(name.encode()).hexdigest()[:15], 16)
        with storage.engine.connect() as conn:
            if not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
                print(waiting, file=sys.stderr, flush=True)
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        return
    yield
