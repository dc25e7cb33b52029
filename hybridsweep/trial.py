"""One pruning trial end to end: baseline -> scores -> plan -> prune -> count -> fine-tune -> evaluate ->
latency -> artefacts, all logged to one MLflow run. A search calls the same function for every trial.
"""

import copy
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from hybridsweep.adaptive_bn import recalibrate
from hybridsweep.artifacts import save_pruned
from hybridsweep.config import to_plain
from hybridsweep.export import export_onnx
from hybridsweep.metrics.complexity import count
from hybridsweep.metrics.latency import LatencyResult
from hybridsweep.pruning.layer import removable_count
from hybridsweep.pruning.plan import BUDGET_TOLERANCE, PrunePlan, apply_plan, plan_from_ratios, solve_budget
from hybridsweep.tracking import NullLogger, RunLogger, git_commit, trial_run
from hybridsweep.train import evaluate, fit, resolve_device
from hybridsweep.workbench import Workbench


@dataclass
class TrialResult:
    plan: PrunePlan
    metrics: dict[str, float]
    output_dir: Path
    run_id: str | None
    tags: dict[str, str] = field(default_factory=dict)


def trial_params(cfg) -> dict:
    """What the trial was asked for; what its plan resolved to (the effective ratios) is logged after pruning."""
    return {
        "criterion": cfg.criterion.name,
        "order": cfg.order,
        "budget_flops": cfg.budget.flops,
        "depth_share": cfg.depth_share,
        "score_norm": cfg.layer.score_norm,
        "round_to": cfg.prune.round_to,
        "iterative_steps": cfg.prune.iterative_steps,
        "scope": cfg.prune.scope,
        "seed": cfg.seed,
        "model": cfg.model.name,
        "weights": cfg.model.weights,
        "data": cfg.data.name,
        "data_root": cfg.data.root,
        "train_subset": cfg.data.train_subset,
        "test_subset": cfg.data.test_subset,
        "finetune_epochs": cfg.finetune.epochs,
        "finetune_max_steps": cfg.finetune.max_steps,
        "finetune_lr": cfg.finetune.lr,
        "distill": cfg.finetune.distill,
        "screen_bn_images": cfg.screen.bn_images,
        "finetune_from_adaptive_bn": cfg.screen.finetune_from_adaptive_bn,
        "latency_backend": cfg.latency.backend,
        "git_commit": git_commit(),
    }


def latency_gain(latency: LatencyResult | None, baseline: LatencyResult | None) -> dict[str, float]:
    """The pruned model against the unpruned one on the same backend; nothing when either is missing or they
    come from different sources (a prediction is never compared with a measurement)."""
    if latency is None or baseline is None or (latency.backend, latency.source) != (baseline.backend, baseline.source):
        return {}
    return {
        **baseline.as_metrics("baseline/latency"),
        "latency_reduction_pct": 100.0 * (1 - latency.median_ms / baseline.median_ms),
        "speedup": baseline.median_ms / latency.median_ms,
    }


def prune_model(cfg, model, scores, input_shape: tuple[int, ...]) -> tuple[torch.nn.Module, PrunePlan, dict]:
    """Prune `model` (a copy of the baseline) by the configured ratios or FLOP budget, counting FLOPs on a sample
    of `input_shape` (the data set's); budget metrics aside."""
    options = {
        "order": cfg.order,
        "score_norm": cfg.layer.score_norm,
        "round_to": cfg.prune.round_to,
        "iterative_steps": cfg.prune.iterative_steps,
        "scope": cfg.prune.scope,
    }
    if cfg.budget.flops is None:
        plan = plan_from_ratios(model, cfg.channel_ratio, cfg.layer_ratio, **options)
        return model, apply_plan(model, plan, scores, input_shape), {}
    solved = solve_budget(model, scores, cfg.budget.flops, cfg.depth_share, input_shape, **options)
    error = 100.0 * (solved.macs / solved.target_macs - 1)
    if abs(error) > 100 * BUDGET_TOLERANCE:
        print(f"warning: the closest plan found is {error:+.2f}% off budget.flops={cfg.budget.flops}")
    return solved.model, solved.plan, {"budget/flops_error_pct": error, "budget/solver_evaluations": solved.evaluations}


def adaptive_bn(cfg, model, ds, device, eval_kw) -> tuple[torch.nn.Module, dict[str, float]]:
    """`adaptive_bn/top1`: the pruned model's accuracy once its BatchNorm statistics are re-estimated (a cheap
    guide to its fine-tuned accuracy). Returns the model fine-tuning starts from and the metrics."""
    if not cfg.screen.bn_images:
        return model, {}
    start = time.perf_counter()
    candidate = model if cfg.screen.finetune_from_adaptive_bn else copy.deepcopy(model)
    if not recalibrate(candidate, ds, cfg.screen.bn_images, device=device, seed=cfg.seed):
        print(f"note: {cfg.model.name} has no BatchNorm layer, so adaptive BN is skipped (screen.bn_images)")
        return model, {}
    acc = evaluate(candidate, ds, desc="evaluate adaptive BN", **eval_kw)
    return candidate, {"adaptive_bn/top1": acc.top1, "adaptive_bn/top5": acc.top5,
                       "time/adaptive_bn_s": time.perf_counter() - start}


def pruned_model_digest(model: torch.nn.Module, cfg) -> str:
    """What a fine-tune's result depends on: the pruned weights (names, shapes, values), the fine-tune recipe,
    the adaptive-BN start and the seed. Two plans with the same digest fine-tune to the same model."""
    h = hashlib.sha256(json.dumps([to_plain(cfg.finetune), to_plain(cfg.screen), cfg.seed], sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        h.update(f"{name}{tuple(tensor.shape)}".encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def run_trial(
    cfg, workbench: Workbench, output_dir: Path, run_name: str | None = None, on_epoch_end=None,
    run_tags: dict[str, str] | None = None, run: RunLogger | NullLogger | None = None, on_pruned=None,
) -> TrialResult:
    """`on_pruned(model)` runs once the model is pruned, before anything is evaluated or fine-tuned, and
    `on_epoch_end(epoch, model)` after each fine-tune epoch but the last; either may raise to stop the trial.
    `run_tags` are set on the run when it opens (an experiment marks which variant the run is). `run` is the
    MLflow run to log to when the caller made it (a search does, before the trial starts)."""
    device = resolve_device(cfg.device)
    ds = workbench.dataset(cfg)
    base = workbench.baseline(cfg, ds, device)
    tags = {"hybridsweep.kind": "trial", "criterion": cfg.criterion.name, **(run_tags or {})}
    with trial_run(cfg.tracking, run_name or f"{cfg.criterion.name}-{cfg.model.name}", tags, run) as log:
        log.params(trial_params(cfg))
        log.dict(OmegaConf.to_container(cfg, resolve=False), "config.yaml")
        metrics: dict[str, float] = {}
        baseline_complexity = count(base.model, ds.input_shape)
        before = workbench.baseline_accuracy(cfg, ds, base, device)

        start = time.perf_counter()
        scores = workbench.scores(cfg, ds, base)
        metrics["time/score_s"] = time.perf_counter() - start

        start = time.perf_counter()
        model = copy.deepcopy(base.model).cpu().to(memory_format=torch.contiguous_format)
        model, plan, budget_metrics = prune_model(cfg, model, scores, ds.input_shape)
        metrics["time/prune_s"] = time.perf_counter() - start
        if on_pruned is not None:
            on_pruned(model)
        complexity = count(model, ds.input_shape)
        # a ratio trial logs the ratios asked for; a budget trial the ones its solved plan used
        layer_ratio = cfg.layer_ratio if cfg.budget.flops is None else plan.blocks / max(removable_count(base.model), 1)
        log.params({
            "channel_ratio": round(plan.channel_ratio, 6),
            "layer_ratio": round(layer_ratio, 6),
            "blocks_removed": plan.blocks,
            "removed_blocks": ",".join(plan.removed_blocks) or "none",
            "solved_scope": plan.scope,
        })

        eval_kw = {"device": device, "batch_size": cfg.finetune.eval_batch_size}
        pruned = evaluate(model, ds, desc="evaluate pruned", **eval_kw)
        model, screen_metrics = adaptive_bn(cfg, model, ds, device, eval_kw)
        teacher = copy.deepcopy(base.model) if cfg.finetune.distill > 0 else None
        stats = fit(model, ds, cfg.finetune, device=device, seed=cfg.seed, teacher=teacher, on_epoch_end=on_epoch_end)
        tuned = evaluate(model, ds, desc="evaluate fine-tuned", **eval_kw)

        model = model.cpu().to(memory_format=torch.contiguous_format).eval()
        settings = to_plain(cfg.latency)
        latency, how = workbench.latency(model, settings, ds.input_shape)
        latency_tags = (latency.as_tags() if latency is not None else {}) | how
        base_latency, _ = workbench.latency(base.model, settings, ds.input_shape)

        metrics = {
            "finetuned/top1": tuned.top1,  # the objectives first: MLflow's compare view lists metrics in order
            **(latency.as_metrics() if latency is not None else {}),
            **latency_gain(latency, base_latency),
            **metrics,
            "baseline/top1": before.top1,
            "baseline/top5": before.top5,
            "pruned/top1": pruned.top1,
            "pruned/top5": pruned.top5,
            **screen_metrics,
            "finetuned/top5": tuned.top5,
            "top1_drop": before.top1 - tuned.top1,
            **{f"baseline/{k}": v for k, v in baseline_complexity.as_metrics().items()},
            **complexity.as_metrics(),
            **complexity.reductions(baseline_complexity),
            **budget_metrics,
            "finetune/steps": stats.steps,
            "finetune/seconds": stats.seconds,
            "finetune/images_per_s": stats.images_per_second,
        }
        # the pruned model as an MLflow Model (runs:/<run id>/model), its metrics filed under it too
        model_id = log.model(model, np.zeros((1, *ds.input_shape), dtype=np.float32))
        log.metrics(metrics, model_id=model_id)
        log.tags(latency_tags)

        folder = output_dir / "pruned"
        meta = {"model": cfg.model.name, "data": cfg.data.name, "num_classes": len(ds.classes)}
        for path in save_pruned(model, plan, folder, meta):
            log.artifact(path, "model")
        log.artifact(export_onnx(model, folder / "model.onnx", input_shape=ds.input_shape), "model")
        return TrialResult(plan=plan, metrics=metrics, output_dir=folder, run_id=log.run_id, tags=latency_tags)
