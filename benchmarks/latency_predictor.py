"""How well does the lut predictor track measured latency? Held-out pruned ResNet-56 plans, predicted vs measured.

    python benchmarks/latency_predictor.py --quick          # shipped CPU profile, ~1 minute on an idle 2-core CPU
    python benchmarks/latency_predictor.py --calibrate      # calibrate a fresh CPU profile first (~1 more minute)

Plans are seeded random (channel ratio in [0, 0.7], layer ratio in [0, 0.6], both orders, some round_to=8) and
never one the profile's correction was fitted on. Each is predicted from the profile and measured on the `cpu`
backend (1 thread, batch 1) in passes over all plans, each pass in a shuffled order (5 passes, 3 with --quick);
"measured" is a plan's fastest pass, since other work and slow spells of a shared machine only ever slow a run
down (the profile is calibrated the same way). The first plan is measured again at the end, which shows how
much the machine's drift alone moves a measurement. The last line is `mape=<x> spearman=<y> repeat_diff=<z>`;
the goals are MAPE <= 0.05, Spearman >= 0.95 and repeat_diff < 0.05. The load average is printed because other
work slows the measurements, not the predictions.
"""

import argparse
import copy
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from hybridsweep.calibration import calibrate, plan_key
from hybridsweep.metrics.complexity import count
from hybridsweep.metrics.latency import LATENCY_BACKENDS
from hybridsweep.metrics.latency.lut import DEFAULT_PROFILE
from hybridsweep.metrics.latency.profile import load_profile
from hybridsweep.models import build_model
from hybridsweep.pruning.criteria import CRITERIA
from hybridsweep.pruning.plan import apply_plan, plan_from_ratios

CIFAR_SAMPLE = (3, 32, 32)  # --calibrate measures at CIFAR's image size, as the shipped profile was
SAME_PLAN_KEYS = ("channel_ratio", "blocks", "order", "round_to")


def held_out_plans(model, n: int, seed: int, calibration: list[dict]):
    """`n` random plans, skipping any whose ratios, block count, order and round_to a calibration model had."""
    used = {tuple(m["plan"][k] for k in SAME_PLAN_KEYS) for m in calibration}
    rng = random.Random(seed)
    plans = []
    while len(plans) < n:
        plan = plan_from_ratios(
            model,
            round(rng.uniform(0.0, 0.7), 3),
            round(rng.uniform(0.0, 0.6), 3),
            order=rng.choice(("layer_first", "channel_first")),
            round_to=8 if rng.random() < 0.3 else None,
        )
        if tuple(plan_key(plan)[k] for k in SAME_PLAN_KEYS) not in used:
            plans.append(plan)
    return plans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer timing repeats and passes (still every plan)")
    parser.add_argument("--calibrate", action="store_true", help="calibrate a fresh cpu profile first")
    parser.add_argument("--profile", default=DEFAULT_PROFILE, help="shipped profile name or path")
    parser.add_argument("--plans", type=int, default=40, help="held-out plans (at least 30)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the held-out plans")
    parser.add_argument("--passes", type=int, help="measuring passes over all plans (default 5, --quick 3)")
    args = parser.parse_args()
    if args.plans < 30:
        parser.error("--plans must be at least 30")
    start = time.perf_counter()
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    timing = {"warmup": 5, "round_runs": 10, "max_runs": 60} if args.quick else {"warmup": 10, "max_runs": 300}
    passes = args.passes or (3 if args.quick else 5)
    backend = LATENCY_BACKENDS.build("cpu", threads=1, batch_size=1, **timing)

    profile_arg = args.profile
    if args.calibrate:
        profile_arg = str(Path(tempfile.mkdtemp(prefix="hybridsweep-lut-")) / "cpu-fresh.json")
        calibrate(
            "cpu",
            {"threads": 1, "batch_size": 1, "warmup": 10, "max_runs": 200},
            num_classes=100,
            input_shape=CIFAR_SAMPLE,
            out_path=Path(profile_arg),
            whole_models=12,
            passes=5,
        )
        print(f"calibrated {profile_arg} in {time.perf_counter() - start:.0f} s")
    profile = load_profile(profile_arg)
    print(
        f"profile {profile.name}: {profile.backend} on {profile.device}, created {profile.created}, "
        f"correction {profile.correction.a:.4f} x sum + {profile.correction.b:.4f} ms"
    )

    input_shape = tuple(profile.meta["input_shape"])  # the size the profile was calibrated at, the one it predicts
    torch.manual_seed(args.seed)
    model = build_model("resnet56", num_classes=int((profile.meta or {}).get("num_classes", 100))).eval()
    scores = CRITERIA.build("l1").scores(model, None)
    base_macs = count(model, input_shape).macs
    plans, models = [], []
    for plan in held_out_plans(model, args.plans, args.seed, list(profile.correction.models)):
        pruned = copy.deepcopy(model)
        plans.append(apply_plan(pruned, plan, scores, input_shape))
        models.append(pruned)
    predicted = np.array([profile.predict(m, input_shape).median_ms for m in models])

    # passes x plans, each pass in its own shuffled order: this machine has slow spells lasting tens of seconds,
    # and a fixed order would put the same plans in the same spell in every pass.
    runs = np.zeros((passes, len(models)))
    rng = random.Random(args.seed)
    for index in range(passes):
        for plan_index in rng.sample(range(len(models)), len(models)):
            runs[index, plan_index] = backend.measure(models[plan_index], input_shape=input_shape).median_ms
        print(f"measuring pass {index + 1}/{passes} done at {time.perf_counter() - start:.0f} s", flush=True)
    measured = runs.min(axis=0)
    repeat = min(backend.measure(models[0], input_shape=input_shape).median_ms for _ in range(passes))

    columns = ("#", 3), ("ch", 6), ("blk", 3), ("order", 13), ("rt", 4), ("MACs%", 6), ("pred", 7), ("meas", 7)
    print(" ".join(f"{name:>{width}}" for name, width in columns), "  err%", "spread%")
    for index, (plan, pruned) in enumerate(zip(plans, models, strict=True)):
        macs = count(pruned, input_shape).macs / base_macs
        spread = runs[:, index].max() / measured[index] - 1
        print(
            f"{index:>3} {plan.channel_ratio:>6.3f} {plan.blocks:>3} {plan.order:>13} {plan.round_to or '-':>4} "
            f"{100 * macs:>6.1f} {predicted[index]:>7.3f} {measured[index]:>7.3f} "
            f"{100 * (predicted[index] / measured[index] - 1):>+6.1f} {100 * spread:>7.1f}"
        )
    mape = float(np.mean(np.abs(predicted - measured) / measured))
    spearman = float(spearmanr(predicted, measured).statistic)
    repeat_diff = abs(measured[0] - repeat) / measured[0]
    print(f"repeat of plan 0: {measured[0]:.3f} ms, then {repeat:.3f} ms at the end")
    print(f"load average at end: {os.getloadavg()[0]:.2f}; {len(plans)} plans in {time.perf_counter() - start:.0f} s")
    print(f"mape={mape:.4f} spearman={spearman:.4f} repeat_diff={repeat_diff:.4f}")


if __name__ == "__main__":
    main()
