"""The content-addressed cache's small surface: get/put, and a lock that says when it waits."""

import subprocess
import sys

from hybridsweep.cache import Cache, file_lock


def test_get_is_none_until_put_then_round_trips(tmp_path):
    cache = Cache(tmp_path)
    assert cache.get("latency", "k") is None
    cache.put("latency", "k", {"median_ms": 1.5, "facts": {"torch": "2.14"}})
    assert cache.get("latency", "k") == {"median_ms": 1.5, "facts": {"torch": "2.14"}}


def test_a_held_lock_is_waited_for_and_said(tmp_path, capsys):
    lock, done = tmp_path / "runner.lock", tmp_path / "holder-done"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import pathlib, time; from hybridsweep.cache import file_lock\n"
         f"with file_lock(pathlib.Path({str(lock)!r})):\n"
         f"    print('held', flush=True); time.sleep(1); pathlib.Path({str(done)!r}).touch()"],
        stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with file_lock(lock, "another run holds it; waiting"):
        assert done.exists()  # acquired only after the other process's critical section ended
    holder.wait(10)
    assert "another run holds it; waiting" in capsys.readouterr().err
