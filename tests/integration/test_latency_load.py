"""Other work on the machine: the kept latency statistic (fastest round's median) moves less than a plain median.

Two hog processes on 127.0.0.1's own CPU (no network) spin in bursts, as other jobs on a shared machine do, while
the same model is measured; they stop by themselves when the test ends. No timing is asserted, only which of
the two statistics the load moved more.
"""

import multiprocessing as mp
import os
import time

import pytest

from hybridsweep.metrics.latency import LATENCY_BACKENDS
from hybridsweep.models import build_model

SAMPLE = (3, 32, 32)
# Rounds shorter than the hog's idle spells, enough of them to span many bursts; rel_tol so small that the
# loop runs to max_runs.
SETTINGS = {"warmup": 10, "round_runs": 4, "max_runs": 400, "rel_tol": 1e-6}


def _hog(stop, busy_s: float, idle_s: float, deadline: float) -> None:
    """Spin for busy_s, sleep for idle_s, until stopped or past the deadline."""
    while not stop.is_set() and time.monotonic() < deadline:
        start = time.monotonic()
        while time.monotonic() - start < busy_s:
            pass
        time.sleep(idle_s)


def _plain(result) -> float:
    return float(result.facts["plain_median_ms"])


@pytest.mark.slow
def test_robust_statistic_moves_less_than_the_plain_median_under_a_cpu_hog():
    backend = LATENCY_BACKENDS.build("cpu", **SETTINGS)
    model = build_model("resnet20", num_classes=10)  # a few ms a run: longer than a scheduler time slice
    quiet = backend.measure(model, input_shape=SAMPLE)
    stop = mp.Event()
    hogs = [mp.Process(target=_hog, args=(stop, 0.1, 0.05, time.monotonic() + 60), daemon=True)
            for _ in range(3 * (os.cpu_count() or 2))]
    for hog in hogs:
        hog.start()
    try:
        time.sleep(0.2)
        loaded = backend.measure(model, input_shape=SAMPLE)
        load_after = os.getloadavg()[0]  # microseconds after the backend read it (the kernel updates it every 5 s)
    finally:
        stop.set()
        for hog in hogs:
            hog.join(5)
    robust_shift = loaded.median_ms / quiet.median_ms
    plain_shift = _plain(loaded) / _plain(quiet)
    print(f"quiet: kept {quiet.median_ms:.4f} plain {_plain(quiet):.4f} ms; under the hog: kept "
          f"{loaded.median_ms:.4f} plain {_plain(loaded):.4f} ms (load {loaded.facts['load_avg']})")
    assert plain_shift > 1.0, "the hog did not slow the plain median: the test proves nothing on this machine"
    assert robust_shift < plain_shift
    assert float(loaded.facts["load_avg"]) == pytest.approx(load_after, abs=0.01)  # the machine's own load
