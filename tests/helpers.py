"""Compose the real Hydra config the way `python -m hybridsweep` does, for tests."""

from pathlib import Path

from hydra import compose, initialize_config_dir

from hybridsweep import conf_dir
from hybridsweep.config import register_configs


def compose_config(*overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


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
