"""What pruning costs next to fine-tuning: score + plan/prune + count for ResNet-56, then one real trial.

    python benchmarks/prune_cost.py --quick                  # trial capped at 60 SGD steps, 1000 test images
    python benchmarks/prune_cost.py                          # a real one-epoch trial (full train split, 390 steps)
    python benchmarks/prune_cost.py --criterion fmrank       # a criterion that looks at data (scores cost more)

Part 1 times, for ResNet-56 with the CIFAR-10 reference weights, each stage of the path a trial takes before
fine-tuning, at four plans: explicit ratios (channel 0.3 / layer 0.2, layer_first and channel_first) and FLOP
budgets (keep 0.75 with depth_share 0.5, keep 0.5 with depth_share 0.3):
  score  `Workbench.scores` -- cold: a fresh Workbench on an empty temporary cache folder (computed and written),
         warm: a second fresh Workbench on the same folder (read back from disk, as a later process of a sweep);
  prune  deepcopy of the baseline + `plan_from_ratios`/`apply_plan`, or `solve_budget` (as `run_trial` does);
  count  `count(pruned model)` (params and MACs, one forward pass).
Decoded images come from the real cache (`--cache-dir`) so that only the score cache is temporary.

Part 2 runs ONE `run_trial` (tracking disabled) with the composed config, at the plan whose prune step was slowest
in part 1, on a fresh temporary cache: scores are cold, while data, baseline and the baseline's accuracy are loaded
beforehand, as they are for every trial of a sweep after the first. The wall clock around `run_trial` is the total.
  overhead = time/score_s + time/prune_s (metrics the trial returns) + count time (the trial counts the baseline
             and the pruned model; it does not time that, so both counts are timed here separately)
  not overhead: SGD steps (finetune/seconds), latency timing, and the rest of the trial (evaluating the pruned and
             the fine-tuned model, saving the model, ONNX export), which is printed as "rest" for reference.
The last line is `overhead_share=<overhead / trial wall time>`; the goal is < 0.05 for a one-epoch trial. With
--quick the trial is capped at 60 steps, so an estimate for a full epoch (390 steps at the measured step time) is
printed too.
"""

import argparse
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from machine import load_average

from hybridsweep.config import validate
from hybridsweep.metrics.complexity import count
from hybridsweep.pruning.plan import apply_plan
from hybridsweep.search.objective import compose_trial_config
from hybridsweep.train import resolve_device
from hybridsweep.trial import prune_model, run_trial
from hybridsweep.workbench import Workbench

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
ARCHIVE = DATA / "cifar10-jpg.tar.gz"
WEIGHTS = DATA / "weights" / "cifar10_resnet56.pth"
FULL_EPOCH_STEPS = 50_000 // 128

PLANS = {
    "ratios c0.3/l0.2 layer_first": ["channel_ratio=0.3", "layer_ratio=0.2", "order=layer_first"],
    "ratios c0.3/l0.2 channel_first": ["channel_ratio=0.3", "layer_ratio=0.2", "order=channel_first"],
    "budget 0.75 depth_share 0.5": ["budget.flops=0.75", "depth_share=0.5"],
    "budget 0.5 depth_share 0.3": ["budget.flops=0.5", "depth_share=0.3"],
}


def config(criterion: str, cache_dir: Path, device: str, *extra: str):
    cfg = compose_trial_config([
        f"+criterion={criterion}",
        "model=resnet56",
        f"model.weights={WEIGHTS}",
        "data=imagefolder",
        f"data.root={ARCHIVE}",
        "data.stats=cifar10",
        f"paths.cache_dir={cache_dir}",
        "tracking.enabled=false",
        f"device={device}",
        *extra,
    ])
    validate(cfg)
    return cfg


def workbench(cache_dir: Path, shared: Workbench) -> Workbench:
    """A fresh Workbench (empty memory) on `cache_dir` whose decoded data comes from the real cache."""
    bench = Workbench(cache_dir)
    bench.dataset = shared.dataset
    return bench


def prune(cfg, base_model, scores, input_shape):
    """The plan/prune step of `run_trial`, on a copy of the baseline."""
    model = copy.deepcopy(base_model).cpu().to(memory_format=torch.contiguous_format)
    model, plan, _ = prune_model(cfg, model, scores, input_shape)
    return model, plan


def timed(fn, *args):
    start = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="trial capped at 60 SGD steps and 1000 test images")
    parser.add_argument(
        "--criterion", default="l1", help="importance criterion (l1, l2, bnscale, fmrank, taylor, random)"
    )
    parser.add_argument("--device", default="auto", help="training device of the trial (auto: cuda if available)")
    parser.add_argument(
        "--cache-dir",
        default=os.environ.get("HYBRIDSWEEP_CACHE", "~/.cache/hybridsweep"),
        help="the real cache holding the decoded images (only read)",
    )
    args = parser.parse_args()
    wall = time.perf_counter()
    device = resolve_device(args.device)
    real_cache = Path(args.cache_dir).expanduser()
    print(
        f"criterion={args.criterion} device={device} torch threads={torch.get_num_threads()} "
        f"cores={os.cpu_count()} load average (1/5/15 min) at start: {load_average()}"
    )

    with tempfile.TemporaryDirectory(prefix="hybridsweep-prune-cost-") as tmp_dir:
        tmp = Path(tmp_dir)
        shared = Workbench(real_cache)
        setup_cfg = config(args.criterion, tmp / "setup", args.device)
        (ds, data_s) = timed(shared.dataset, setup_cfg)
        bench = workbench(tmp / "setup", shared)
        base, base_s = timed(bench.baseline, setup_cfg, ds, device)
        base_model = base.model
        _, count_base_s = timed(count, base_model, ds.input_shape)
        print(
            f"data loaded in {data_s:.1f}s (from {real_cache}), baseline in {base_s:.2f}s, "
            f"count(baseline) {1000 * count_base_s:.0f} ms"
        )

        # ---- part 1: score + plan/prune + count at each plan, cold and warm scores ----------------------------
        rows = []
        prune_times: dict[str, list[float]] = {}
        for i, (name, overrides) in enumerate(PLANS.items()):
            cache_dir = tmp / f"plan{i}"
            cfg = config(args.criterion, cache_dir, args.device, *overrides)
            for state in ("cold", "warm"):
                # cold: the folder is empty, so the scores are computed and written; warm: a new Workbench (no
                # memory) on the same folder reads them back from disk
                scores, score_s = timed(workbench(cache_dir, shared).scores, cfg, ds, base)
                (pruned, plan), prune_s = timed(prune, cfg, base_model, scores, ds.input_shape)
                complexity, count_s = timed(count, pruned, ds.input_shape)
                prune_times.setdefault(name, []).append(prune_s)
                keep = complexity.macs / count(base_model, ds.input_shape).macs
                rows.append((name, state, score_s, prune_s, count_s, plan, keep))
                print(
                    f"  {name:<32} {state}: score {score_s:.3f}s prune {prune_s:.2f}s count {count_s:.3f}s", flush=True
                )

        print()
        print(f"Part 1: ResNet-56 (CIFAR-10 weights), criterion {args.criterion}; seconds per stage")
        print(
            "| plan                           | scores | score s | plan+prune s | count s | total s | blocks | "
            "channel ratio | MACs kept |"
        )
        print(
            "|--------------------------------|--------|---------|--------------|---------|---------|--------|"
            "---------------|-----------|"
        )
        for name, state, score_s, prune_s, count_s, plan, keep in rows:
            print(
                f"| {name:<30} | {state:<6} | {score_s:7.3f} | {prune_s:12.2f} | {count_s:7.3f} | "
                f"{score_s + prune_s + count_s:7.2f} | {plan.blocks:6d} | {plan.channel_ratio:13.3f} | "
                f"{keep:9.3f} |"
            )

        # ---- part 2: one real trial ---------------------------------------------------------------------------
        slowest = max(prune_times, key=lambda k: statistics.median(prune_times[k]))
        extra = ["finetune.epochs=1"]
        if args.quick:
            extra += ["finetune.max_steps=60", "data.test_subset=1000"]
        trial_cache = tmp / "trial"
        cfg = config(args.criterion, trial_cache, args.device, *PLANS[slowest], *extra)
        bench = workbench(trial_cache, shared)
        # what every trial of a sweep after the first finds ready: data, baseline, baseline accuracy (in memory)
        ds = bench.dataset(cfg)
        base = bench.baseline(cfg, ds, device)
        bench.baseline_accuracy(cfg, ds, base, device)
        print(
            f"\nPart 2: one trial at '{slowest}' (slowest prune above), {' '.join(extra)}, cold scores, "
            f"load average {load_average()}",
            flush=True,
        )
        result, trial_s = timed(run_trial, cfg, bench, tmp / "trial-out")
        m = result.metrics
        # the trial's two count() calls are untimed there: time the same two counts here
        _, count_base_s = timed(count, base.model, ds.input_shape)
        replay = copy.deepcopy(base.model).cpu().to(memory_format=torch.contiguous_format)
        apply_plan(replay, result.plan, bench.scores(cfg, ds, base), ds.input_shape)
        _, count_pruned_s = timed(count, replay, ds.input_shape)
        count_s = count_base_s + count_pruned_s
        score_s, prune_s, ft_s = m["time/score_s"], m["time/prune_s"], m["finetune/seconds"]
        overhead = score_s + prune_s + count_s
        rest = trial_s - overhead - ft_s
        share = overhead / trial_s
        step_s = ft_s / m["finetune/steps"]
        print("| part of the trial                                   | seconds | share of trial |")
        print("|-----------------------------------------------------|---------|----------------|")
        for label, seconds in (
            ("score (time/score_s, cold)", score_s),
            ("plan + prune (time/prune_s)", prune_s),
            ("count baseline + pruned (timed here)", count_s),
            (f"SGD steps (finetune/seconds, {m['finetune/steps']:.0f} steps)", ft_s),
            ("rest: evaluate x2, latency timing, save, ONNX export", rest),
            ("trial wall time (run_trial)", trial_s),
        ):
            print(f"| {label:<51} | {seconds:7.2f} | {seconds / trial_s:14.3f} |")
        print(
            f"overhead = score + plan/prune + count = {overhead:.2f}s of {trial_s:.2f}s; step time "
            f"{step_s:.3f}s ({m['finetune/images_per_s']:.0f} img/s); finetuned top-1 {m['finetuned/top1']:.2f}%, "
            f"plan: {result.plan.blocks} blocks + channel ratio {result.plan.channel_ratio:.3f}"
        )
        if args.quick:
            full = trial_s - ft_s + FULL_EPOCH_STEPS * step_s
            print(
                f"extrapolated to a full epoch ({FULL_EPOCH_STEPS} steps at the measured {step_s:.3f}s/step; "
                f"evaluation left at the 1000-image subset, so this is an upper bound): trial ~{full:.0f}s, "
                f"overhead_share ~{overhead / full:.3f}"
            )
        print(
            f"load average at end: {load_average(at_start=False)}; "
            f"benchmark wall time {time.perf_counter() - wall:.1f}s"
        )
        print(f"overhead_share={share:.3f}")


if __name__ == "__main__":
    main()
