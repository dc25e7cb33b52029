"""hybridsweep: channel and layer pruning of CNNs for edge devices, searched with Optuna, tracked in MLflow."""

from pathlib import Path

__version__ = "0.1.0"


def conf_dir() -> Path:
    """The Hydra config folder: shipped inside the wheel, or the repository's top-level conf/ in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"hybridsweep's conf/ folder is missing beside {here}; reinstall the package")
