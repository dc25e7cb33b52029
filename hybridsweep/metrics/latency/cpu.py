"""PyTorch eager on the CPU, one thread by default: the setting the design's latency table was measured in."""

from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from hybridsweep.metrics.latency.result import invalid
from hybridsweep.metrics.latency.timing import (
    TimedBackend,
    cpu_name,
    inference_copy,
    random_input,
    wall_clock,
)


@dataclass(frozen=True)
class CpuLatency(TimedBackend):
    name = "cpu"
    threads: int = 1
    max_runs: int = 300

    def __post_init__(self):
        super().__post_init__()
        if self.threads < 1:
            raise invalid("threads", self.threads, "use a positive number of threads, e.g. 1")

    @contextmanager
    def timers(self, models: Mapping[str, nn.Module], input_shape: tuple[int, ...]):
        batch = random_input(self.batch_shape(input_shape))
        nets = {label: inference_copy(model, "cpu") for label, model in models.items()}
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                timers = {label: wall_clock(partial(net, batch)) for label, net in nets.items()}
                yield timers, cpu_name(), {"threads": str(self.threads), "torch": torch.__version__}
        finally:
            torch.set_num_threads(previous_threads)
