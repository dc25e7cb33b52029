"""Compose the real Hydra config the way `python -m hybridsweep` does, for tests."""

from pathlib import Path

from hybridsweep.search.objective import compose_trial_config


def compose_config(*overrides: str):
    """The package's own composition (what a search's trials and the benchmarks use), so tests see the same."""
    return compose_trial_config(overrides)


def cheap_real_overrides(shared_data: Path, cache: Path, *, train: int, test: int, steps: int) -> list[str]:
    """ResNet-20 with its real weights on small class-balanced subsets of the real CIFAR-10 JPEGs."""
    return [
        "model=resnet20",
        f"model.weights={shared_data}/weights/cifar10_resnet20.pth",
        "data=imagefolder",
        f"data.root={shared_data}/cifar10-jpg.tar.gz",
        "data.stats=cifar10",
        f"data.train_subset={train}",
        f"data.test_subset={test}",
        "data.calibration_size=32",
        f"screen.bn_images={min(train, 256)}",
        "finetune.epochs=1",
        f"finetune.max_steps={steps}",
        "finetune.batch_size=64",
        "latency.round_runs=10",
        "latency.max_runs=40",
        f"paths.cache_dir={cache}",
    ]
