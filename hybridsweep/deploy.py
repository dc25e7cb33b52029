"""`task=export`: one trial of a finished search, as the files a user deploys.

`python -m hybridsweep task=export search.study_name=NAME pick=knee` picks a trial (`search/pick.py`), fetches
its pruned model from its MLflow run, and writes `<export.dir>/<study>-<trial>/`: `model.onnx` (checked against
PyTorch in ONNX Runtime), `model.pt` + `plan.json` (reloadable with `weights_only=True`, see `artifacts.py`), a
TensorRT engine where one can be built (`export.engine`), and `MODEL_CARD.md` (`model_card.py`). The study's own
command line supplies the model, data and MLflow store, so the export needs neither the data set nor a GPU.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import optuna

from hybridsweep.artifacts import PLAN_FILE, WEIGHTS_FILE, load_pruned
from hybridsweep.errors import DeviceUnavailable, UserError
from hybridsweep.export import OnnxMismatchError, check_onnx, export_onnx
from hybridsweep.search.pick import pick

ENGINE_FILE = "model.engine"


@dataclass
class Engine:
    """What became of the TensorRT engine, for the model card."""

    path: Path | None = None
    facts: dict[str, str] = field(default_factory=dict)
    note: str = ""  # why there is none, or how it was built
    fp16: bool = True  # export.fp16: the trtexec command the card suggests when there is none


def load_study(cfg) -> optuna.Study:
    """`search.study_name` in `search.storage`; a missing or unknown name lists the studies there."""
    from hybridsweep.search.report import load_studies

    name = cfg.search.get("study_name")
    return load_studies([name] if name else [], str(cfg.search.storage), setting="search.study_name")[0]


def export_trial(cfg) -> Path:
    """Write the picked trial's deployable files; returns their folder."""
    from hybridsweep.baseline import build_architecture
    from hybridsweep.search.objective import study_config
    from hybridsweep.tracking import Tracker

    study = load_study(cfg)
    picked = pick(study, cfg.pick.rule, cfg.pick.max_latency_ms)
    number = picked.row["trial"]
    run_id = picked.row.get("mlflow_run_id")
    ran = study_config(study, cfg)
    if not run_id or not ran.tracking.enabled:
        raise UserError(f"trial {number} of study {study.study_name} has no MLflow run (the search ran with "
                        "tracking.enabled=false), so its model was not kept; export a search run with tracking on")
    tracker = Tracker(str(ran.tracking.uri))
    fetched = tracker.download_model(run_id)
    run = tracker.run(run_id)
    meta = _meta(fetched)
    model, plan = load_pruned(build_architecture(ran.model, meta["num_classes"]), fetched)
    input_shape = _sample_shape(fetched / "model.onnx")

    out = Path(cfg.export.dir) / f"{study.study_name}-{number}".replace("/", "-")
    out.mkdir(parents=True, exist_ok=True)
    for name in (PLAN_FILE, WEIGHTS_FILE):
        shutil.copyfile(fetched / name, out / name)
    onnx_path = export_onnx(model, out / "model.onnx", input_shape=input_shape)
    try:
        onnx_error = check_onnx(model, onnx_path)
    except OnnxMismatchError as exc:
        raise UserError(f"task=export: {exc}; the ONNX file does not compute what the model does") from exc
    (out / ENGINE_FILE).unlink(missing_ok=True)  # an engine of an earlier export must not outlive this one
    engine = build_engine(cfg, model, input_shape, out / ENGINE_FILE)

    from hybridsweep.model_card import write_model_card

    card = write_model_card(out, study=study, picked=picked, plan=plan, model=model, ran=ran,
                            architecture=build_architecture(ran.model, meta["num_classes"]),
                            run=run, input_shape=input_shape, onnx_error=onnx_error,
                            engine=engine)
    print(f"export: trial {number} of study {study.study_name} ({picked.why})\n  {out}/: "
          + ", ".join(p.name for p in sorted(out.iterdir())) + f"\n  model card: {card}")
    return out


def build_engine(cfg, model, input_shape: tuple[int, ...], path: Path) -> Engine:
    """The TensorRT engine `export.engine` asks for. `auto` builds locally when TensorRT and a GPU are here and
    says why not otherwise; `local` and `jetson` fail with the reason instead."""
    choice, fp16 = cfg.export.engine, cfg.export.fp16
    if choice == "none":
        return Engine(note="not built (export.engine=none)", fp16=fp16)
    if choice == "jetson":
        from hybridsweep.config import backend_settings
        from hybridsweep.metrics.latency import LATENCY_BACKENDS

        if cfg.latency.backend != "jetson":
            raise UserError("export.engine=jetson builds on the device of latency=jetson: add latency=jetson "
                            "latency.host=... (the same settings a search measures with)")
        settings = backend_settings(cfg.latency)
        # the deployed engine: batch 1, and export.fp16 rather than the precision latencies are measured at
        settings |= {"batch_size": 1, "precision": "fp16" if fp16 else "fp32"}
        device = LATENCY_BACKENDS.build("jetson", **settings)
        facts = device.build_engine(model, input_shape=input_shape, out_path=path)
        return Engine(path, facts, f"built on {facts.get('device_model', device.host)} with its trtexec", fp16)
    from hybridsweep.metrics.latency.tensorrt import write_engine

    try:
        version = write_engine(model, path, input_shape=input_shape, fp16=cfg.export.fp16)
    except DeviceUnavailable as exc:
        if choice == "local":
            raise UserError(f"export.engine=local: {exc}") from exc
        print(f"export: no TensorRT engine ({exc}); build one on the target with trtexec (see the model card)",
              file=sys.stderr)
        return Engine(note=f"not built here ({exc})", fp16=fp16)
    import torch

    return Engine(path, {"tensorrt": version, "gpu": torch.cuda.get_device_name(),
                         "precision": "fp16" if fp16 else "fp32"}, "built here with TensorRT's Python API", fp16)


def _meta(folder: Path) -> dict:
    import json

    meta = json.loads((folder / PLAN_FILE).read_text()).get("meta") or {}
    if "num_classes" not in meta:
        raise UserError(f"{folder / PLAN_FILE}: no meta.num_classes; the trial was saved by an older hybridsweep")
    return meta


def _sample_shape(onnx_path: Path) -> tuple[int, ...]:
    """One sample's (C, H, W): the trial's own ONNX input without its batch axis."""
    dims = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return tuple(int(d.dim_value) for d in dims[1:])

