"""Opening an MLflow store: the SQLAlchemy driver, a lock while a new SQLite file is created, one-line errors.

- The store is created and migrated under a lock beside a SQLite file, so N workers started together all work.
- MLflow and SQLAlchemy raise many types for a broken store; `store_errors` turns them into one `TrackingError`
  naming `tracking.uri` and what to do, with any password redacted.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hybridsweep.errors import UserError
from hybridsweep.redaction import redact


class TrackingError(UserError):
    """The MLflow store cannot be opened or written (read-only, full, gone)."""


def check_store(uri: str) -> None:
    if uri.startswith("file:") or "://" not in uri:
        raise UserError(
            f"tracking.uri={redact(uri)}: MLflow 3 refuses file stores; use sqlite:///mlflow.db or a server URL"
        )


def postgres_driver(url: str) -> str:
    """SQLAlchemy 2.1 maps postgresql:// to psycopg 3; use psycopg2 (the `postgres` extra) when only it is here."""
    if not url.startswith("postgresql://"):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


_WHAT_TO_DO = {
    "opened": "check the URL, that its server is up and that its driver is installed (PostgreSQL: pip install "
              "'hybridsweep[postgres]')",
    "read": "check that its server is up",
    "written": "free disk space or fix its permissions (or point tracking.uri at another store), then rerun the "
               "same command: finished trials are kept",
}


@contextmanager
def store_errors(uri: str, doing: str = "written") -> Iterator[None]:
    """MLflow and SQLAlchemy raise many types for a broken store; the user needs the setting and what to do."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        reason = redact(lines[0] if lines else type(exc).__name__)[:200]
        raise TrackingError(
            f"tracking.uri={redact(uri)}: the MLflow store cannot be {doing} ({reason}); {_WHAT_TO_DO[doing]}"
        ) from None


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise creating a SQLite store (MLflow migrates a new file in several statements)."""
    if not uri.startswith("sqlite:///") or ":memory:" in uri:
        yield
        return
    from hybridsweep.cache import file_lock

    path = Path(uri.removeprefix("sqlite:///").partition("?")[0]).expanduser()
    with file_lock(path.with_name(path.name + ".hybridsweep.lock")):
        yield
