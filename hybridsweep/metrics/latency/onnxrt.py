"""ONNX Runtime on the CPU: the exported graph (BatchNorm folded, fused kernels) rather than PyTorch eager."""

import tempfile
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import onnxruntime as ort
from torch import nn

from hybridsweep.export import export_onnx
from hybridsweep.metrics.latency.result import invalid
from hybridsweep.metrics.latency.timing import TimedBackend, cpu_name, random_input, wall_clock


@dataclass(frozen=True)
class OnnxRuntimeLatency(TimedBackend):
    name = "onnxruntime"
    threads: int = 1
    max_runs: int = 300
    opset: int = 17

    def __post_init__(self):
        super().__post_init__()
        if self.threads < 1:
            raise invalid("threads", self.threads, "use a positive number of threads, e.g. 1")

    @contextmanager
    def timers(self, models: Mapping[str, nn.Module], input_shape: tuple[int, ...]):
        shape = self.batch_shape(input_shape)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        feed = random_input(shape).numpy()
        timers = {}
        with tempfile.TemporaryDirectory(prefix="hybridsweep-ort-") as tmp:
            for index, (label, model) in enumerate(models.items()):
                path = export_onnx(
                    model,
                    Path(tmp) / f"model{index}.onnx",
                    input_shape=input_shape,
                    batch_size=self.batch_size,
                    opset=self.opset,
                    dynamic_batch=False,
                )
                session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                timers[label] = wall_clock(partial(session.run, None, {session.get_inputs()[0].name: feed}))
        yield (
            timers,
            cpu_name(),
            {"threads": str(self.threads), "onnxruntime": ort.__version__, "opset": str(self.opset)},
        )
