"""PyTorch eager on the CPU, one thread by default: the setting the design's latency table was measured in."""

from dataclasses import dataclass

import torch
from torch import nn

from hybridsweep.metrics.latency.result import LatencyResult, invalid
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

    def __post_init__(self):
        super().__post_init__()
        if self.threads < 1:
            raise invalid("threads", self.threads, "use a positive number of threads, e.g. 1")

    def measure(self, model: nn.Module, *, input_shape: tuple[int, ...]) -> LatencyResult:
        net = inference_copy(model, "cpu")
        batch = random_input(self.batch_shape(input_shape))
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                result = self.timed(
                    wall_clock(lambda: net(batch)),
                    device=cpu_name(),
                    facts={"threads": str(self.threads), "torch": torch.__version__},
                )
        finally:
            torch.set_num_threads(previous_threads)
        return result
