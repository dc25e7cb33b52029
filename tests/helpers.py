"""Compose the real Hydra config the way `python -m hybridsweep` does, for tests."""

from hydra import compose, initialize_config_dir

from hybridsweep import conf_dir
from hybridsweep.config import register_configs


def compose_config(*overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))
