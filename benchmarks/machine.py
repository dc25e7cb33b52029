"""What the benchmarks print about the machine they ran on."""

import os


def load_average(at_start: bool = True) -> str:
    """The 1/5/15-minute load averages; at the start, flagged when other work kept the cores busy."""
    try:
        loads = os.getloadavg()
    except OSError:
        return "n/a"
    text = " ".join(f"{v:.2f}" for v in loads)
    if not at_start:
        return text + " (includes this run)"
    if loads[0] > 0.5 * (os.cpu_count() or 1):
        text += " (busy: other work used the cores in the last minute, so times may be inflated and noisy)"
    return text
