"""MODEL_CARD.md for an exported trial: what the model is, how good and how fast against its baseline, how its
latency was obtained, what was removed, the files beside it and the command that reproduces it. Every figure is
read from the trial's MLflow run and the study; nothing is measured again here except the ONNX check."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import optuna
from torch import nn

from hybridsweep.pruning.plan import PrunePlan
from hybridsweep.search.front import BASELINE_ATTR

CARD_FILE = "MODEL_CARD.md"


def write_model_card(out: Path, *, study: optuna.Study, picked, plan: PrunePlan, model: nn.Module, ran,
                     architecture: nn.Module, run, input_shape: tuple[int, ...], onnx_error: float, engine) -> Path:
    """`run` is the trial's MLflow Run; `ran` the config its study ran with; `engine` a deploy.Engine."""
    from hybridsweep import __version__

    metrics, tags, params = run.data.metrics, run.data.tags, run.data.params
    number = picked.row["trial"]
    latency = _latency(metrics, tags, study)
    size = "×".join(map(str, input_shape))
    lines = [
        f"# {study.study_name}, trial {number}: a pruned {ran.model.name} for {ran.data.name}",
        "",
        f"Picked by {picked.why}. Exported {datetime.date.today().isoformat()} by hybridsweep {__version__} "
        f"from MLflow run `{run.info.run_id}` (store `{_shown(ran.tracking.uri)}`).",
        "",
        "## Accuracy, size and speed",
        "",
        "| | baseline (unpruned) | this model | change |",
        "|---|---:|---:|---:|",
        _row("top-1 (%)", metrics.get("baseline/top1"), metrics.get("finetuned/top1"), "points"),
        _row("top-5 (%)", metrics.get("baseline/top5"), metrics.get("finetuned/top5"), "points"),
        _row("parameters", metrics.get("baseline/params"), metrics.get("params"), "%"),
        _row("FLOPs (multiply-accumulates)", metrics.get("baseline/flops"), metrics.get("flops"), "%"),
        _row(f"latency (ms, {latency['how']})", latency["baseline"], latency["model"], "speedup"),
        "",
        f"Accuracy is on the {ran.data.name} test set after {_finetune(params)}. Latency: {latency['method']}.",
        "",
        "## What was pruned",
        "",
        f"- criterion `{params.get('criterion')}`, order `{plan.order}`, FLOP budget "
        f"{_value(params.get('budget_flops'))} with depth share {_value(params.get('depth_share'))}",
        f"- depth: {plan.blocks} residual block(s) removed: {', '.join(plan.removed_blocks) or 'none'} "
        f"(block scores normalised: `{plan.score_norm}`)",
        f"- width: {100 * plan.channel_ratio:.1f}% of the channels of each prunable layer ({plan.scope} scope, "
        f"{plan.iterative_steps} step(s){f', rounded to multiples of {plan.round_to}' if plan.round_to else ''})",
        "",
        "<details><summary>Output channels per convolution</summary>",
        "",
        "| layer | baseline | this model |",
        "|---|---:|---:|",
        *_widths(architecture, model),
        "",
        "</details>",
        "",
        "## Files",
        "",
        f"- `model.onnx`: input `input` [batch, {', '.join(map(str, input_shape))}] float32 ({size} images, "
        f"normalised as in training), output `logits`; ONNX Runtime matches PyTorch to {onnx_error:.1e} "
        "(largest difference on a random batch of 2).",
        "- `model.pt` + `plan.json`: the state dict and the plan; reload without pickles with "
        "`hybridsweep.artifacts.load_pruned(build_architecture(...), folder)`.",
        _engine_line(engine),
        "",
        "## Reproduce",
        "",
        "```",
        _command(study, number, run.info.run_id),
        "```",
        "",
    ]
    path = out / CARD_FILE
    path.write_text("\n".join(lines))
    return path


def _latency(metrics: dict, tags: dict, study: optuna.Study) -> dict[str, Any]:
    """The trial's latency and its baseline's from one pass: the final re-measure when the trial was in it, else
    the trial's own measurement (its baseline from the same backend and source)."""
    backend = tags.get("latency.backend", "?")
    source = tags.get("latency.source", "?")
    device = tags.get("latency.device", "?")
    final = next((k for k in metrics if k.startswith("latency/") and k.endswith("/final_ms")), None)
    if final is not None:
        baseline = study.user_attrs.get(BASELINE_ATTR) or {}
        return {"how": "final pass", "model": metrics[final],
                "baseline": metrics.get(f"baseline/{final}", baseline.get("latency_ms")),
                "method": f"{tags.get('latency.final.source', source)} on {backend} ({device}), batch 1, "
                          f"{tags.get('latency.final.statistic', 'median')}, in {tags.get('latency.final.pass')}, "
                          f"load average {tags.get('latency.final.load_avg', 'unknown')}"}
    own = next((k for k in metrics if k.startswith("latency/") and k.endswith("/median_ms")), None)
    if own is None:
        return {"how": "none", "model": None, "baseline": None, "method": "not measured"}
    return {"how": "median", "model": metrics[own], "baseline": metrics.get(f"baseline/{own}"),
            "method": f"{source} on {backend} ({device}), batch 1, median, measured with the trial, load average "
                      f"{tags.get('latency.load_avg', 'unknown')}"}


def _row(label: str, baseline: float | None, model: float | None, change: str) -> str:
    def cell(value: float | None) -> str:
        if value is None:
            return "n/a"
        return f"{value:,.0f}" if value >= 1000 else f"{value:.2f}" if value >= 1 else f"{value:.3f}"

    delta = "n/a"
    if baseline is not None and model is not None:
        if change == "points":
            delta = f"{model - baseline:+.2f}"
        elif change == "speedup":
            delta = f"{baseline / model:.2f}× faster"
        else:
            delta = f"{100 * (model / baseline - 1):+.1f}%"
    return f"| {label} | {cell(baseline)} | {cell(model)} | {delta} |"


def _widths(architecture: nn.Module, model: nn.Module) -> list[str]:
    kept = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    rows = []
    for name, conv in architecture.named_modules():
        if isinstance(conv, nn.Conv2d):
            now = kept.get(name)
            rows.append(f"| `{name}` | {conv.out_channels} | {now.out_channels if now else 'removed'} |")
    return rows


def _finetune(params: dict) -> str:
    steps = params.get("finetune_max_steps")
    epochs = f"{params.get('finetune_epochs')} fine-tune epoch(s)"
    return epochs + (f" (at most {steps} steps)" if steps not in (None, "None") else "") + \
        f" at learning rate {params.get('finetune_lr')}"


def _engine_line(engine) -> str:
    if engine.path is not None:
        facts = ", ".join(f"{k} {v}" for k, v in engine.facts.items())
        return (f"- `{engine.path.name}`: a TensorRT engine for batch 1, {engine.note} ({facts}); it runs only with "
                "that TensorRT version on that GPU model.")
    return (f"- no TensorRT engine: {engine.note}. On the target: "
            f"`trtexec --onnx=model.onnx --saveEngine=model.engine{' --fp16' if engine.fp16 else ''}`.")


def _command(study: optuna.Study, number: int, run_id: str) -> str:
    overrides = study.get_trials(deepcopy=False)[number].user_attrs.get("overrides")
    if overrides is None:  # a study from before trials kept their overrides
        return f"# not recorded for this study: the trial's full config is config.yaml in MLflow run {run_id}"
    return " ".join(["python -m hybridsweep", *(study.user_attrs.get("base_overrides") or []), *overrides])


def _shown(uri: str) -> str:
    from hybridsweep.redaction import redact

    return redact(str(uri))


def _value(value) -> str:
    return "none" if value in (None, "None") else str(value)
