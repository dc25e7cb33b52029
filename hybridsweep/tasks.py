"""The jobs `python -m hybridsweep task=...` runs, each a small function over the composed config."""

import copy
from pathlib import Path

import torch
from omegaconf import DictConfig

from hybridsweep.config import backend_settings, output_dir
from hybridsweep.errors import UserError
from hybridsweep.train import resolve_device
from hybridsweep.workbench import workbench


def _data_shape(cfg) -> tuple[int, tuple[int, int, int]]:
    """The class count and sample shape (C, H, W) of the configured data set, which a model is built and timed
    for; reading them from the data (decoded once, then cached) is what keeps data=imagefolder right."""
    try:
        ds = workbench(cfg).dataset(cfg)
    except UserError as exc:
        raise UserError(
            f"task={cfg.task} builds {cfg.model.name} for the classes and image size of data={cfg.data.name}, "
            f"so it needs that data set: {exc}"
        ) from exc
    return ds.num_classes, ds.input_shape


def evaluate_baseline(cfg: DictConfig) -> dict:
    bench = workbench(cfg)
    device = resolve_device(cfg.device)
    ds = bench.dataset(cfg)
    base = bench.baseline(cfg, ds, device)
    acc = bench.baseline_accuracy(cfg, ds, base, device)
    print(
        f"{cfg.model.name} on {cfg.data.name}: top-1 {acc.top1:.2f}%  top-5 {acc.top5:.2f}%  "
        f"({acc.images} test images, device {device})"
    )
    return {"top1": acc.top1, "top5": acc.top5}


def prune(cfg: DictConfig) -> dict:
    from hybridsweep.trial import run_trial

    result = run_trial(cfg, workbench(cfg), output_dir(cfg))
    m = result.metrics
    latency_key = next((k for k in m if k.startswith("latency/") and k.endswith("/median_ms")), None)
    latency_text = f"{latency_key} {m[latency_key]:.3f}" if latency_key else "latency: none (see tags)"
    print(
        f"plan: {result.plan.blocks} blocks removed ({', '.join(result.plan.removed_blocks) or 'none'}), "
        f"channel ratio {result.plan.channel_ratio:.3f}, order {result.plan.order}\n"
        f"top-1 {m['baseline/top1']:.2f}% -> pruned {m['pruned/top1']:.2f}%"
        + (f" -> adaptive BN {m['adaptive_bn/top1']:.2f}%" if "adaptive_bn/top1" in m else "")
        + f" -> fine-tuned {m['finetuned/top1']:.2f}%\n"
        f"params {m['params']:,} (-{m['params_reduction_pct']:.1f}%)  FLOPs {m['flops']:,} "
        f"(-{m['flops_reduction_pct']:.1f}%)  {latency_text}\n"
        f"pruned model: {result.output_dir}  MLflow run: {result.run_id or 'tracking disabled'} "
        f"(browse with: make ui)"
    )
    return m


def latency(cfg: DictConfig) -> dict:
    from hybridsweep.baseline import build_architecture
    from hybridsweep.metrics.latency import measure_latency

    num_classes, input_shape = _data_shape(cfg)
    model = build_architecture(cfg.model, num_classes).eval()
    result = measure_latency(model, cfg.latency.backend, input_shape=input_shape, **backend_settings(cfg.latency))
    size = "x".join(map(str, input_shape))
    print(
        f"{cfg.model.name} latency at {size} ({result.source}, {result.backend} on {result.device}, "
        f"batch {result.batch_size}): "
        f"median {result.median_ms:.3f} ms  p90 {result.p90_ms:.3f} ms  over {result.runs} runs"
    )
    return result.as_metrics()


def calibrate(cfg: DictConfig) -> dict:
    """Build a LUT latency profile on the configured measuring backend (e.g. latency=jetson latency.host=...)."""
    from hybridsweep.calibration import calibrate as calibrate_profile

    settings = backend_settings(cfg.latency)
    num_classes, input_shape = _data_shape(cfg)
    out = Path(cfg.calibration.out or f"{cfg.latency.backend}-{cfg.model.name}.json")
    path = calibrate_profile(
        cfg.latency.backend,
        settings,
        model_name=cfg.model.name,
        num_classes=num_classes,
        input_shape=input_shape,
        out_path=out,
        whole_models=cfg.calibration.whole_models,
        passes=cfg.calibration.passes,
        seed=cfg.seed,
    )
    print(f"profile written: {path.resolve()}  use it with: latency=lut latency.profile={path.resolve()}")
    return {}


def search(cfg: DictConfig) -> dict:
    from hybridsweep.search import run_search

    study = run_search(cfg)  # reads the command line from HydraConfig to compose each trial
    return {"trials": len(study.trials), "pareto_trials": len(study.best_trials)}


def experiment(cfg: DictConfig) -> dict:
    from hybridsweep.experiments import run_experiment

    return {"results": str(run_experiment(cfg, _command_line()))}


def experiment_report(cfg: DictConfig) -> dict:
    """Rebuild an experiment's table and plots from its committed results.csv alone (seconds, no store)."""
    from hybridsweep.experiments import report_from_csv

    return {"files": [str(p) for p in report_from_csv(cfg)]}


def _command_line() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task)


def report(cfg: DictConfig) -> dict:
    from hybridsweep.search import report_from_config

    return {"files": [str(p) for p in report_from_config(cfg)]}


def export(cfg: DictConfig) -> dict:
    """One trial of a finished search as deployable files: task=export search.study_name=NAME pick=knee."""
    from hybridsweep.deploy import export_trial

    return {"folder": str(export_trial(cfg))}


TASKS = {
    "prune": prune,
    "evaluate": evaluate_baseline,
    "train_baseline": evaluate_baseline,  # loading the baseline trains it once when model.weights=null
    "latency": latency,
    "calibrate": calibrate,
    "search": search,
    "report": report,
    "export": export,
    "experiment": experiment,
    "experiment_report": experiment_report,
}


def run_task(cfg: DictConfig):
    """Dispatch `task`; a trial with a search configured (search=nsga2 ...) becomes that search."""
    torch.manual_seed(cfg.seed)
    task = "search" if cfg.task == "prune" and cfg.search.sampler != "none" else cfg.task
    return TASKS[task](copy.deepcopy(cfg))
