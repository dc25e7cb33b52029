"""The TensorRT engine of `task=export` (`deploy.build_engine`): built where TensorRT and a GPU are, and where they
are not, the export goes on without one (auto) or stops with the reason (local)."""

import importlib.util

import pytest
import torch

from hybridsweep.deploy import build_engine
from hybridsweep.errors import UserError
from tests.helpers import compose_config
from tests.unit.test_latency import SAMPLE, small_net

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.skipif(HAS_TENSORRT and torch.cuda.is_available(), reason="TensorRT and a GPU are here")
def test_without_tensorrt_or_a_gpu_auto_goes_on_and_local_says_why(tmp_path, capsys):
    path = tmp_path / "model.engine"
    engine = build_engine(compose_config("task=export"), small_net(), SAMPLE, path)
    assert engine.path is None and not path.exists()
    assert engine.note.startswith("not built here (") and "no TensorRT engine" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"^export.engine=local: (TensorRT is not installed|torch sees no CUDA GPU)"):
        build_engine(compose_config("task=export", "export.engine=local"), small_net(), SAMPLE, path)
    skipped = build_engine(compose_config("task=export", "export.engine=none"), small_net(), SAMPLE, path)
    assert (skipped.path, skipped.note) == (None, "not built (export.engine=none)")


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_TENSORRT and torch.cuda.is_available()), reason="needs TensorRT and a CUDA GPU")
def test_the_engine_is_built_here_and_deserialises(tmp_path):
    import tensorrt as trt

    path = tmp_path / "model.engine"
    engine = build_engine(compose_config("task=export", "export.engine=local"), small_net(), SAMPLE, path)
    assert engine.path == path and engine.facts["tensorrt"] == trt.__version__
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    loaded = runtime.deserialize_cuda_engine(path.read_bytes())
    assert loaded is not None and loaded.num_io_tensors == 2
