"""Content-addressed cache for work a sweep must never redo: baselines, importance scores, decoded data.

An entry lives at `<root>/<namespace>/<key>.pt`, where the key hashes everything that determines the content.
Writes go to a temporary file in the same folder and are renamed into place, so a reader never sees half a file
and two processes racing to build the same entry both end with one complete file (the last rename wins, and both
wrote the same content). A lock file (the `filelock` library) serialises the build so the second process waits
and then reads.
"""

import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout

from hybridsweep.errors import UserError


def digest(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts (paths, numbers, config dicts, other digests)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def file_lock(path: Path, waiting: str | None = None):
    """An exclusive lock on `path`; `waiting` is printed when another process holds it (so a wait is not a hang)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        if waiting:
            print(waiting, file=sys.stderr, flush=True)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


class Cache:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()

    def path(self, namespace: str, key: str, suffix: str = ".pt") -> Path:
        return self.root / namespace / f"{key}{suffix}"

    def get_or_build(self, namespace: str, key: str, build: Callable[[], Any]) -> Any:
        """Load the entry, or build it once (under a lock) and store it. Entries are torch-saved objects."""
        path = self.path(namespace, key)
        if path.exists():
            return self._load(path)
        with file_lock(path.with_suffix(".lock")):
            if path.exists():  # another process built it while we waited
                return self._load(path)
            value = build()
            atomic_write(path, lambda tmp: torch.save(value, tmp))
            return value

    def get(self, namespace: str, key: str) -> Any | None:
        """The entry, or None when there is none yet."""
        path = self.path(namespace, key)
        return self._load(path) if path.exists() else None

    def put(self, namespace: str, key: str, value: Any) -> None:
        atomic_write(self.path(namespace, key), lambda tmp: torch.save(value, tmp))

    @staticmethod
    def _load(path: Path) -> Any:
        try:
            return torch.load(path, weights_only=True)
        except Exception as exc:
            raise UserError(
                f"cache entry {path} is unreadable ({type(exc).__name__}); delete it and run again"
            ) from exc
