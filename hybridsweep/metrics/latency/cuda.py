"""PyTorch eager on a CUDA GPU, timed with CUDA events on a dedicated stream."""

from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from hybridsweep.errors import DeviceUnavailable
from hybridsweep.metrics.latency.result import invalid
from hybridsweep.metrics.latency.timing import TimedBackend, cuda_events, inference_copy, random_input

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}


def require_cuda(backend: str) -> None:
    """No GPU here is a missing device (DeviceUnavailable): a `latency.fallback` may stand in for it."""
    if not torch.cuda.is_available():
        raise DeviceUnavailable(
            f"latency={backend} needs a CUDA GPU, and torch sees none (torch.cuda.is_available() is False); "
            "choose latency=cpu or latency=onnxruntime, or run on a machine with an NVIDIA GPU"
        )


def check_cuda_device(value: str) -> None:
    try:
        on_gpu = torch.device(value).type == "cuda"
    except RuntimeError:
        on_gpu = False
    if not on_gpu:
        raise invalid("device", value, "use cuda or cuda:<index>")


@dataclass(frozen=True)
class CudaLatency(TimedBackend):
    name = "cuda"
    device: str = "cuda"  # cuda or cuda:<index>
    precision: str = "fp32"  # fp32 | fp16
    warmup: int = 20

    def __post_init__(self):
        super().__post_init__()
        check_cuda_device(self.device)
        if self.precision not in PRECISIONS:
            raise invalid("precision", self.precision, f"choose one of {', '.join(PRECISIONS)}")

    @contextmanager
    def timers(self, models: Mapping[str, nn.Module], input_shape: tuple[int, ...]):
        require_cuda(self.name)
        device = torch.device(self.device)
        dtype = PRECISIONS[self.precision]
        batch = random_input(self.batch_shape(input_shape), device, dtype)
        stream = torch.cuda.Stream(device)

        def on_stream(net: nn.Module) -> Callable[[], None]:
            def run() -> None:
                with torch.cuda.stream(stream):
                    net(batch)

            return run

        nets = {label: inference_copy(model, device, dtype) for label, model in models.items()}
        torch.cuda.synchronize(device)
        with torch.inference_mode():
            yield (
                {label: cuda_events(on_stream(net), stream) for label, net in nets.items()},
                torch.cuda.get_device_name(device),
                {"precision": self.precision, "torch": torch.__version__, "cuda": str(torch.version.cuda)},
            )
