"""`python -m hybridsweep`: compose the config with Hydra, validate it, dispatch the task. No logic lives here."""

import sys

import hydra
from omegaconf import DictConfig

from hybridsweep import conf_dir
from hybridsweep.config import check_group_choices, register_configs, validate
from hybridsweep.errors import UserError


def _job(cfg: DictConfig):
    from hybridsweep.tasks import run_task

    try:
        validate(cfg)
        return run_task(cfg)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    try:
        check_group_choices(sys.argv[1:], conf_dir())
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    register_configs()
    hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")(_job)()


if __name__ == "__main__":
    main()
