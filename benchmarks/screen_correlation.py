"""Does adaptive-BN accuracy rank pruning plans as fine-tuning does? Spearman against the experiments' real trials.

    python benchmarks/screen_correlation.py --quick   # 12 plans, adaptive BN judged on 2,000 test images
    python benchmarks/screen_correlation.py           # every committed plan, the full 10,000 test images

The plans are the committed trials of `experiments/` (budgets x depth/width splits x criteria x orders, ResNet-56
on the CIFAR-10 JPEG images, one fine-tune epoch). A plan is rebuilt from the baseline exactly as its trial built
it (same config, same importance scores; the rebuilt model must have the trial's parameter count), so only
adaptive BN runs here: BatchNorm statistics re-estimated on 2,000 class-balanced training images, then top-1 on
the test set. A row that already logged `adaptive_bn/top1` is taken as it is. Fine-tuned top-1 and plain
post-pruning top-1 come from the committed CSVs.

Last line: `spearman_abn=<x> spearman_plain=<y> within_budget_abn=<u> within_budget_plain=<v>`; the goal is
x >= 0.8 and x > y. Across budgets, FLOPs alone order most plans, so the figures within one FLOP budget (the
mean Spearman over the budget groups with 3 or more plans, what a search with a list of budgets compares) say
more about what the screen adds.
"""

import argparse
import copy
import time
from pathlib import Path

from machine import load_average
from scipy.stats import spearmanr

from hybridsweep.adaptive_bn import recalibrate
from hybridsweep.experiments.runner import RESULTS_FILE, read_results, variants
from hybridsweep.metrics.complexity import count
from hybridsweep.search.objective import compose_trial_config
from hybridsweep.train import evaluate, resolve_device
from hybridsweep.trial import prune_model
from hybridsweep.workbench import workbench

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = ("depth_vs_width", "block_scores", "order", "finetune_start")
BN_IMAGES = 2000


def plans(limit: int | None) -> list[tuple[str, dict, tuple[str, ...]]]:
    """(experiment, committed row, the trial's overrides) for every pruned trial with a fine-tuned top-1."""
    found = []
    for name in EXPERIMENTS:
        rows = {r["variant"]: r for r in read_results(REPO / "experiments" / name / RESULTS_FILE)}
        experiment = compose_trial_config([f"+experiment={name}"]).experiment
        for variant in variants(experiment):
            row = rows.get(variant.name)
            if row and row.get("finetuned/top1") and float(row.get("param.blocks_removed") or 0) + float(
                    row.get("param.channel_ratio") or 0) > 0:
                found.append((name, row, variant.overrides))
    if limit is not None:  # spread a short run over the experiments rather than taking the first one's rows
        found = found[::max(1, len(found) // limit)][:limit]
    return found


def adaptive_bn_top1(name: str, row: dict, overrides: tuple[str, ...], test_subset: int | None) -> tuple[float, str]:
    if row.get("adaptive_bn/top1") and test_subset is None:
        return float(row["adaptive_bn/top1"]), "logged by the trial"
    cfg = compose_trial_config([f"+experiment={name}", "task=prune", *overrides,
                                f"data.test_subset={'null' if test_subset is None else test_subset}"])
    bench = workbench(cfg)
    device = resolve_device(cfg.device)
    ds = bench.dataset(cfg)
    base = bench.baseline(cfg, ds, device)
    model, _, _ = prune_model(cfg, copy.deepcopy(base.model).cpu(), bench.scores(cfg, ds, base), ds.input_shape)
    params = count(model, ds.input_shape).params
    if params != int(float(row["params"])):
        raise SystemExit(f"{name} {row['variant']}: rebuilt {params} params, the trial had {row['params']}")
    recalibrate(model, ds, BN_IMAGES, device=device, seed=cfg.seed)
    acc = evaluate(model, ds, device=device, batch_size=cfg.finetune.eval_batch_size, desc="adaptive BN")
    return acc.top1, f"rebuilt, {acc.images} test images"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="12 plans, 2,000 test images")
    args = parser.parse_args()
    test_subset = 2000 if args.quick else None
    chosen = plans(12 if args.quick else None)
    print(f"load average at start: {load_average()}")
    print(f"{len(chosen)} plans from {', '.join(EXPERIMENTS)}; adaptive BN on {BN_IMAGES} training images")
    start = time.perf_counter()
    table = []
    for name, row, overrides in chosen:
        abn, how = adaptive_bn_top1(name, row, overrides, test_subset)
        table.append((float(row["finetuned/top1"]), abn, float(row["pruned/top1"]), row.get("param.budget_flops")))
        print(f"  {name:15s} {row['variant']:70s} plain {table[-1][2]:6.2f}  adaptive BN {abn:6.2f}  "
              f"fine-tuned {table[-1][0]:6.2f}  ({how})", flush=True)
    tuned, abn, plain, budgets = zip(*table, strict=True)
    groups = [[row for row in table if row[3] == b] for b in dict.fromkeys(budgets) if b not in (None, "", "null")]
    groups = [g for g in groups if len(g) >= 3]
    within = {i: sum(spearmanr([r[i] for r in g], [r[0] for r in g]).statistic for g in groups) / len(groups)
              for i in (1, 2)} if groups else {1: float("nan"), 2: float("nan")}
    print(f"{time.perf_counter() - start:.0f} s, load average at end: {load_average(at_start=False)}; within one "
          f"budget: {len(groups)} groups of {', '.join(str(len(g)) for g in groups)} plans")
    print(f"spearman_abn={spearmanr(abn, tuned).statistic:.3f} spearman_plain={spearmanr(plain, tuned).statistic:.3f} "
          f"within_budget_abn={within[1]:.3f} within_budget_plain={within[2]:.3f}")


if __name__ == "__main__":
    main()
