"""Fine-tune throughput: our loop (`hybridsweep.train.fit`) against the plain loop a user would write.

    python benchmarks/finetune_throughput.py --quick        # a few steps per run, under a minute on 2 cores
    python benchmarks/finetune_throughput.py                # 30 steps per run
    python benchmarks/finetune_throughput.py --device cuda  # on a GPU our augmentation runs on the device

Both train the same ResNet-56 (CIFAR-10 reference weights, 10 classes) on the same CIFAR-10 JPEG images with the
same SGD step (Nesterov momentum 0.9, weight decay 5e-4, lr 0.01, per-step cosine schedule), batch size, number of
steps and torch threads:

- ours:  `load_dataset("imagefolder", <tarball>, stats="cifar10")` (decoded once to a uint8 tensor cache) and
         `fit(...)`: batched crop/flip/normalise on the training device, channels_last, a tqdm bar, bf16 autocast
         on CUDA. Timed by `fit` itself (`FitStats.seconds`: the whole loop, first batch included).
- plain: torchvision `ImageFolder` over the tarball unpacked once into `<cache>/unpacked/<sha256>/`,
         `Compose([RandomCrop(32, padding=4), RandomHorizontalFlip(), ToTensor(), Normalize(...)])`,
         `DataLoader(shuffle=True, num_workers=...)` (persistent workers, pinned memory on CUDA) and the same step
         (bf16 autocast on CUDA too, so only the input pipeline and memory format differ). Timed in steady state:
         the DataLoader iterator is created once (a user's epoch amortises worker start-up over 390 steps) and
         each run is timed over its steps after the loader has warmed up.

Each side is warmed up once, then runs alternate (ours, plain, ours, plain, ...) so that noise from other work on
the machine hits both; the table shows each run and the median images/s. The last line is `speedup_vs_plain=<x>`
(median ours / median plain); the goal on a 2-core CPU is >= 1.3.

On a busy machine, two OpenMP threads on two cores collapse when other processes take a core (the threads spin at
every barrier waiting for a descheduled peer): steps then take several times longer and vary wildly. Compare runs
only at a similar load average (printed), or try `OMP_WAIT_POLICY=PASSIVE` / `--threads 1`.
"""

import argparse
import copy
import hashlib
import os
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from machine import load_average
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from hybridsweep.config import TrainConfig
from hybridsweep.data import CIFAR_STATS, load_dataset
from hybridsweep.models import build_model, load_weights
from hybridsweep.train import fit, resolve_device

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
ARCHIVE = DATA / "cifar10-jpg.tar.gz"
WEIGHTS = DATA / "weights" / "cifar10_resnet56.pth"


def unpack_once(archive: Path, cache_root: Path) -> Path:
    """Unpack the tarball into `<cache>/unpacked/<sha256>/` (once; later runs reuse it) and return that folder."""
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    target = cache_root / "unpacked" / sha
    if (target / "train").is_dir() and (target / "test").is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{sha[:12]}."))
    print(f"unpacking {archive.name} once into {target} ...", flush=True)
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4: refuse links and paths leaving `tmp`
            tar.extractall(tmp, filter="data")
        else:
            tar.extractall(tmp)
    os.replace(tmp, target)
    return target


def pretrained_resnet56(cache_root: Path) -> torch.nn.Module:
    model = build_model("resnet56", num_classes=10)
    load_weights(model, str(WEIGHTS), model_name="resnet56", dataset="cifar10", cache_dir=cache_root / "weights")
    return model


def recipe(steps: int, batch_size: int, device: torch.device) -> TrainConfig:
    return TrainConfig(epochs=1, max_steps=steps, batch_size=batch_size, amp=device.type == "cuda")


def plain_loader(root: Path, batch_size: int, workers: int, device: torch.device, seed: int):
    mean, std = CIFAR_STATS["cifar10"]
    transform = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    train = datasets.ImageFolder(str(root / "train"), transform=transform)
    return DataLoader(
        train,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )


class PlainLoop:
    """The loop a user writes: model, SGD with the same settings as `fit`, one DataLoader iterator kept across runs."""

    def __init__(self, model: torch.nn.Module, loader: DataLoader, device: torch.device, total_steps: int):
        self.model = model.to(device).train()
        self.device = device
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
        self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=total_steps)
        self.loader = loader
        self.batches = iter(loader)

    def _next(self):
        try:
            return next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            return next(self.batches)

    def step(self) -> None:
        x, y = self._next()
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")
        with autocast:
            loss = F.cross_entropy(self.model(x).float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()

    def run(self, steps: int, warmup: int) -> tuple[int, float]:
        """`warmup` untimed steps (the loader's queue reaches steady state), then `steps` timed ones."""
        for _ in range(warmup):
            self.step()
        self._sync()
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        self._sync()
        return steps * self.loader.batch_size, time.perf_counter() - start

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few steps per run (under a minute on 2 cores)")
    parser.add_argument("--steps", type=int, default=None, help="timed SGD steps per run (default 30; --quick 4)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--rounds", type=int, default=None, help="(ours, plain) pairs, alternating (default 3; --quick 2)"
    )
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for both loops (default: all cores)")
    parser.add_argument(
        "--workers", type=int, default=None, help="plain loop's DataLoader workers (default: 1 on <= 2 cores, else 4)"
    )
    parser.add_argument("--cache-dir", default=os.environ.get("HYBRIDSWEEP_CACHE", "~/.cache/hybridsweep"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    steps = args.steps or (4 if args.quick else 30)
    rounds = args.rounds or (2 if args.quick else 3)
    cores = os.cpu_count() or 1
    threads = args.threads or cores
    workers = args.workers if args.workers is not None else (1 if cores <= 2 else 4)
    device = resolve_device(args.device)
    cache_root = Path(args.cache_dir).expanduser()
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    wall = time.perf_counter()

    start = time.perf_counter()
    ds = load_dataset(
        "imagefolder", str(ARCHIVE), stats="cifar10", train_subset=None, test_subset=None, cache_root=cache_root
    )
    ds_s = time.perf_counter() - start
    start = time.perf_counter()
    root = unpack_once(ARCHIVE, cache_root)
    unpack_s = time.perf_counter() - start
    weights = pretrained_resnet56(cache_root)
    print(
        f"device={device} threads={threads} plain workers={workers} batch={args.batch_size} steps/run={steps} "
        f"rounds={rounds} cores={cores} load average (1/5/15 min) at start: {load_average()}"
    )
    print(f"decoded tensors loaded in {ds_s:.1f}s; ImageFolder tree ready in {unpack_s:.1f}s ({root})")

    ours_model = copy.deepcopy(weights)
    # fit's schedule spans one call, so warm-up and runs each get a fresh cosine over their steps; negligible here.
    ours_recipe = recipe(steps, args.batch_size, device)
    warm_recipe = recipe(2, args.batch_size, device)
    plain = PlainLoop(
        copy.deepcopy(weights),
        plain_loader(root, args.batch_size, workers, device, args.seed),
        device,
        total_steps=(rounds * steps + 2 * rounds + 2),
    )

    def run_ours(seed: int) -> tuple[int, float]:
        stats = fit(ours_model, ds, ours_recipe, device=device, seed=seed, desc="ours")
        return stats.images, stats.seconds

    # warm-up: allocator, oneDNN/cuDNN kernel choice, DataLoader workers
    fit(ours_model, ds, warm_recipe, device=device, seed=args.seed, desc="ours warm-up")
    plain.run(steps=0, warmup=2)

    runs: dict[str, list[float]] = {"ours": [], "plain": []}
    for r in range(rounds):
        images, seconds = run_ours(args.seed + 1 + r)
        runs["ours"].append(images / seconds)
        images, seconds = plain.run(steps, warmup=1)
        runs["plain"].append(images / seconds)
        print(f"round {r + 1}: ours {runs['ours'][-1]:.0f} img/s, plain {runs['plain'][-1]:.0f} img/s", flush=True)

    ours, base = statistics.median(runs["ours"]), statistics.median(runs["plain"])
    print()
    print("| loop  | input pipeline                                        | runs (img/s)      | median img/s |")
    print("|-------|-------------------------------------------------------|-------------------|--------------|")
    pipelines = {
        "ours": "decoded uint8 cache, batched aug on device, chan_last",
        "plain": f"ImageFolder + PIL transforms, DataLoader({workers} workers)",
    }
    for name in ("ours", "plain"):
        shown = ", ".join(f"{v:.0f}" for v in runs[name])
        print(f"| {name:<5} | {pipelines[name]:<53} | {shown:<17} | {statistics.median(runs[name]):>12.0f} |")
    print(f"load average at end: {load_average(at_start=False)}; total wall time {time.perf_counter() - wall:.1f}s")
    print(f"speedup_vs_plain={ours / base:.2f}")


if __name__ == "__main__":
    main()
