"""TensorRT on a local NVIDIA GPU through its Python API (the 10.x API; 8.6 and 11 handled where they differ).

The engine is built from our own ONNX export with a static batch, so no optimisation profile is needed, and
timed with CUDA events around `execute_async_v3` on a dedicated stream; buffers are torch CUDA tensors, so no
pycuda or cuda-python is needed. TensorRT, an optional extra, is imported only when this backend measures.
"""

import tempfile
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from hybridsweep.errors import DeviceUnavailable, UserError
from hybridsweep.export import export_onnx
from hybridsweep.metrics.latency.cuda import check_cuda_device, require_cuda
from hybridsweep.metrics.latency.result import invalid
from hybridsweep.metrics.latency.timing import TimedBackend, cuda_events, random_input
from hybridsweep.metrics.latency.trtexec import PRECISIONS

TORCH_DTYPES = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT8": torch.int8,
    "UINT8": torch.uint8,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "BOOL": torch.bool,
}


def import_tensorrt():
    """No TensorRT here is a missing runtime (DeviceUnavailable), like no GPU: a `latency.fallback` may stand in."""
    try:
        import tensorrt
    except ImportError as exc:
        raise DeviceUnavailable(
            "latency=tensorrt needs TensorRT: pip install hybridsweep[tensorrt] on a machine with an NVIDIA GPU"
        ) from exc
    return tensorrt


@dataclass(frozen=True)
class TensorRTLatency(TimedBackend):
    name = "tensorrt"
    device: str = "cuda"
    precision: str = "fp16"  # fp16 | fp32
    warmup: int = 20
    workspace_mb: int = 1024
    opset: int = 17

    def __post_init__(self):
        super().__post_init__()
        check_cuda_device(self.device)
        if self.precision not in PRECISIONS:
            raise invalid("precision", self.precision, f"choose one of {', '.join(PRECISIONS)}")
        if self.workspace_mb < 1:
            raise invalid("workspace_mb", self.workspace_mb, "use a positive size in MiB, e.g. 1024")

    @contextmanager
    def timers(self, models: Mapping[str, nn.Module], input_shape: tuple[int, ...]):
        trt = import_tensorrt()
        require_cuda(self.name)
        major = tensorrt_major(trt)
        device = torch.device(self.device)
        stream = torch.cuda.Stream(device)
        held: list = []  # (runtime, engine, context, buffers) per model, released in reverse order
        timers = {}
        try:
            with torch.cuda.device(device):
                for label, model in models.items():
                    run, keep = self._engine_run(trt, major, model, input_shape, device, stream)
                    held.append(keep)
                    timers[label] = cuda_events(run, stream)
                yield (
                    timers,
                    torch.cuda.get_device_name(device),
                    {"tensorrt": trt.__version__, "precision": self.precision, "opset": str(self.opset)},
                )
        finally:
            timers.clear()
            while held:  # a TensorRT runtime must outlive its engines, an engine its contexts
                runtime, engine, context, buffers = held.pop()
                del context, engine, runtime, buffers

    def _engine_run(self, trt, major: int, model: nn.Module, input_shape, device, stream):
        """Build one model's engine; return its run function and what must stay alive while it is timed."""
        # TensorRT 11 has no FP16 builder flag (networks are strongly typed): FP16 comes from the ONNX types.
        onnx_dtype = torch.float16 if self.precision == "fp16" and major >= 11 else torch.float32
        with tempfile.TemporaryDirectory(prefix="hybridsweep-trt-") as tmp:
            onnx_path = export_onnx(
                model,
                Path(tmp) / "model.onnx",
                input_shape=input_shape,
                batch_size=self.batch_size,
                opset=self.opset,
                dynamic_batch=False,
                dtype=onnx_dtype,
            )
            runtime, engine = self._build_engine(trt, major, onnx_path.read_bytes())
        context = engine.create_execution_context()
        buffers = {}
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            shape = tuple(engine.get_tensor_shape(name))
            dtype = TORCH_DTYPES[engine.get_tensor_dtype(name).name]
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                buffers[name] = random_input(shape, device, dtype)
            else:
                buffers[name] = torch.empty(shape, dtype=dtype, device=device)
            context.set_tensor_address(name, buffers[name].data_ptr())
        torch.cuda.synchronize(device)
        run = partial(context.execute_async_v3, stream.cuda_stream)
        if not run():
            raise UserError("latency=tensorrt: TensorRT could not run the engine it built (execute_async_v3)")
        return run, (runtime, engine, context, buffers)

    def _build_engine(self, trt, major: int, onnx_bytes: bytes):
        logger = trt.Logger(trt.Logger.WARNING)
        serialized = serialized_engine(trt, major, onnx_bytes, fp16=self.precision == "fp16",
                                       workspace_mb=self.workspace_mb, setting="latency")
        runtime = trt.Runtime(logger)
        return runtime, runtime.deserialize_cuda_engine(serialized)


def tensorrt_major(trt, setting: str = "latency=tensorrt") -> int:
    """TensorRT's major version; 8.6 is the oldest whose Python API this module speaks."""
    major, minor = (int(part) for part in trt.__version__.split(".")[:2])
    if (major, minor) < (8, 6):
        raise UserError(
            f"{setting} needs TensorRT 8.6 or later, found {trt.__version__}; for a Jetson with "
            "TensorRT 8.2 use the jetson backend, which drives the device's trtexec"
        )
    return major


def serialized_engine(trt, major: int, onnx_bytes: bytes, *, fp16: bool, workspace_mb: int, setting: str):
    """The engine TensorRT builds from an ONNX file (what `trtexec --onnx --saveEngine` does), serialised.
    `setting` names the config group the user tunes (`latency` or `export`) in the error messages."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Explicit batch is the only mode from TensorRT 10 on; 8.x still needs the flag.
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        hint = "; try another latency.opset" if setting == "latency" else ""
        raise UserError(f"{setting}: TensorRT {trt.__version__} cannot parse the exported ONNX: {errors}{hint}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if fp16 and major < 11:  # TensorRT 11 has no FP16 flag: FP16 comes from the ONNX file's own types
        config.set_flag(trt.BuilderFlag.FP16)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(
            f"{setting}: TensorRT {trt.__version__} could not build an engine; its log above says why"
            + (" (often too little workspace: raise latency.workspace_mb)" if setting == "latency" else "")
        )
    return serialized


def write_engine(model: nn.Module, path: Path, *, input_shape: tuple[int, ...], fp16: bool,
                 workspace_mb: int = 1024, opset: int = 17) -> str:
    """Build `model`'s TensorRT engine for batch 1 on this machine's GPU and write it to `path`; returns the
    TensorRT version (an engine runs only with the version, and on the GPU model, that built it)."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise DeviceUnavailable("TensorRT is not installed: pip install 'hybridsweep[tensorrt]' on a machine with "
                                "an NVIDIA GPU") from exc
    if not torch.cuda.is_available():
        raise DeviceUnavailable("torch sees no CUDA GPU, and an engine is built on the GPU it will run on")
    try:
        major = tensorrt_major(trt, "export.engine=local")
    except UserError as exc:  # too old to build with: like no TensorRT at all
        raise DeviceUnavailable(str(exc)) from exc
    with tempfile.TemporaryDirectory(prefix="hybridsweep-trt-") as tmp:
        onnx_path = export_onnx(model, Path(tmp) / "model.onnx", input_shape=input_shape, opset=opset,
                                dynamic_batch=False, dtype=torch.float16 if fp16 and major >= 11 else torch.float32)
        serialized = serialized_engine(trt, major, onnx_path.read_bytes(), fp16=fp16, workspace_mb=workspace_mb,
                                       setting="export")
    path.write_bytes(bytes(serialized))
    return trt.__version__
