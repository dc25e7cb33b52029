"""Export a (pruned) network to ONNX, the format every deployment backend here reads, and check the export.

The TorchScript-based exporter (`dynamo=False`) is used on purpose: it writes the opset it is asked for
(TensorRT 8.2 on the Jetson TX2 reads opsets up to 13, while the dynamo exporter in torch 2.14 always writes
opset 18 and cannot convert down), it folds BatchNorm into the convolutions, and the same model gives the
same bytes every time, so a file's sha256 can key the latency cache.
"""

import copy
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from hybridsweep.cache import atomic_write
from hybridsweep.shapes import batch_shape

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class OnnxMismatchError(ValueError):
    """ONNX Runtime and PyTorch disagree on the same input: the export changed what the network computes."""


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    input_shape: tuple[int, ...],
    batch_size: int = 1,
    opset: int = 17,
    dynamic_batch: bool = True,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write `model` (an eval-mode CPU copy; the caller's model is untouched) to `path` and check the file.

    `input_shape` is one sample's (C, H, W); the graph's input is `batch_size` of them, its batch axis left
    dynamic unless `dynamic_batch=False` (an engine built for timing wants the exact batch).
    `dtype=torch.float16` writes a half-precision graph, which is how strongly typed TensorRT (11 and later,
    which has no --fp16) is asked for FP16 kernels.
    """
    path = Path(path)
    net = copy.deepcopy(model).to(device="cpu", dtype=dtype).eval()
    example = torch.zeros(batch_shape(input_shape, batch_size), dtype=dtype)
    batch_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", message=".*feature will be removed.*")
            torch.onnx.export(
                net,
                (example,),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes=batch_axes,
                do_constant_folding=True,
            )
        onnx.checker.check_model(str(tmp), full_check=True)

    atomic_write(path, write)
    return path


def check_onnx(model: nn.Module, path: str | Path, atol: float = 1e-4) -> float:
    """Run a float32 ONNX file in ONNX Runtime and PyTorch on one random input; return the largest difference.

    Raises OnnxMismatchError when it exceeds `atol`. Dynamic dimensions are run with size 2, so a batch axis
    that only works for batch 1 is caught too.
    """
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_input,) = session.get_inputs()
    shape = tuple(dim if isinstance(dim, int) else 2 for dim in onnx_input.shape)
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(shape, generator=generator)
    onnx_out = session.run(None, {onnx_input.name: example.numpy()})[0]
    net = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    with torch.inference_mode():
        torch_out = net(example).numpy()
    if onnx_out.shape != torch_out.shape:
        raise OnnxMismatchError(f"{path}: ONNX output shape {onnx_out.shape} != PyTorch {torch_out.shape}")
    difference = float(np.max(np.abs(onnx_out - torch_out)))
    if not difference <= atol:
        raise OnnxMismatchError(
            f"{path}: ONNX and PyTorch outputs differ by up to {difference:.3g} (atol {atol:g})"
        )
    return difference
