"""`python -m hybridsweep`: check the command line, compose the config with Hydra, validate it, dispatch the task.

A user mistake is one line and exit 2. Ctrl-C (exit 130) and SIGTERM (exit 143: SLURM's scancel, `timeout`,
`docker stop`) end the running trial the same way: its MLflow run KILLED, a search's trial FAIL, the parent run
closed, one line, no traceback; rerunning the same command resumes.
"""

import signal
import sys

import hydra
from omegaconf import DictConfig

from hybridsweep import conf_dir
from hybridsweep.command_line import check_group_choices, check_keys, expand_shorthands
from hybridsweep.config import register_configs, validate
from hybridsweep.errors import UserError


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C so that the same clean-up runs."""


def _on_signal(signum, frame) -> None:
    # a second signal during the clean-up ends the process at once (the default action)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _job(cfg: DictConfig):
    from hybridsweep.tasks import run_task

    try:
        validate(cfg)
        return run_task(cfg)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    sys.argv[1:] = expand_shorthands(sys.argv[1:])  # Hydra reads sys.argv
    try:
        check_group_choices(sys.argv[1:], conf_dir())
        check_keys(sys.argv[1:], conf_dir())
        register_configs()
        hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")(_job)()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as exc:
        from hybridsweep.tracking.runs import MultirunParentCallback

        MultirunParentCallback.interrupted = True  # a multirun's parent run ends KILLED, like its job's
        name, code = ("SIGTERM", 143) if isinstance(exc, Terminated) else ("Ctrl-C", 130)
        print(f"stopped by {name}: the running trial's MLflow run is marked KILLED (a search's trial FAIL); "
              "rerun the same command to resume", file=sys.stderr)
        sys.exit(code)


if __name__ == "__main__":
    main()
