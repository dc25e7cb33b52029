"""`python -m hybridsweep --help` is our own page (conf/hydra/help/hybridsweep.yaml): tasks, groups, examples."""

import re
import subprocess
import sys

import pytest

from hybridsweep import conf_dir
from hybridsweep.config import TASKS


@pytest.fixture(scope="module")
def help_text(tmp_path_factory) -> str:
    out = subprocess.run([sys.executable, "-m", "hybridsweep", "--help"], capture_output=True, text=True,
                         cwd=tmp_path_factory.mktemp("help"), timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_help_lists_every_task(help_text):
    listed = re.findall(r"^  (\w+) {2,}\S", help_text, flags=re.MULTILINE)
    assert listed == list(TASKS)


def test_help_lists_each_group_with_exactly_its_options(help_text):
    """The list is written by hand (Hydra's would show base_* schemas): it must follow conf/."""
    groups = {p.name: sorted(f.stem for f in p.glob("*.yaml") if not f.stem.startswith("base_"))
              for p in conf_dir().iterdir() if p.is_dir() and p.name != "hydra"}
    for group, options in groups.items():
        line = re.search(rf"^  {group}: ([^(\n]+)", help_text, flags=re.MULTILINE)
        assert line, f"--help does not list the group {group}"
        assert line.group(1).strip().split(", ") == options
    launchers = re.search(r"^  hydra/launcher: (.+)$", help_text, flags=re.MULTILINE).group(1)
    assert all(f.stem in launchers for f in (conf_dir() / "hydra" / "launcher").glob("*.yaml"))


def test_help_shows_examples_and_the_composed_config_without_hydra_branding(help_text):
    assert "python -m hybridsweep +criterion=fmrank search=nsga2 budget.flops=0.75" in help_text
    assert len(re.findall(r"^  python -m hybridsweep ", help_text, flags=re.MULTILINE)) == 6
    assert "\n  name: resnet56\n" in help_text  # the composed config's model
    assert "base_" not in help_text
    assert "powered by hydra" not in help_text.lower()
