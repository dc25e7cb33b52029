"""Every config file composes; bad settings fail with one line naming the setting."""

import re
import subprocess
import sys

import pytest

from hybridsweep import conf_dir
from hybridsweep.command_line import check_group_choices, check_keys, expand_shorthands
from hybridsweep.config import validate
from hybridsweep.errors import UserError
from tests.helpers import compose_config

GROUPS = sorted(p.name for p in conf_dir().iterdir() if p.is_dir() and any(p.glob("*.yaml")))


@pytest.mark.parametrize(
    "group,option",
    [(g, p.stem) for g in GROUPS for p in sorted((conf_dir() / g).glob("*.yaml")) if not p.stem.startswith("base_")],
)
def test_every_config_file_composes(group, option, tmp_path):
    prefix = "+" if group in ("criterion", "experiment", "fidelity") else ""
    overrides = [f"{prefix}{group}={option}"]
    if group != "criterion":
        overrides.append("+criterion=l1")
    if option == "imagefolder":
        overrides.append(f"data.root={tmp_path}")
    if option == "jetson":
        overrides.append("latency.host=127.0.0.1")  # a required setting: validate builds the backend
    cfg = compose_config(*overrides)
    assert cfg.task == ("experiment" if group == "experiment" else "prune")  # only an experiment sets a task
    if group == "criterion":
        assert cfg.criterion.name == option
    validate(cfg)


def test_defaults_are_the_paper_setting():
    cfg = compose_config("+criterion=fmrank")
    assert (cfg.model.name, cfg.data.name, cfg.criterion.name) == ("resnet56", "cifar100", "fmrank")
    assert cfg.tracking.uri == "sqlite:///mlflow.db"


@pytest.mark.parametrize(
    "override,setting",
    [
        ("channel_ratio=1.0", "channel_ratio"),
        ("channel_ratio=-0.1", "channel_ratio"),
        ("layer_ratio=1.5", "layer_ratio"),
        ("depth_share=1.2", "depth_share"),
        ("budget.flops=1.5", "budget.flops"),
        ("budget.flops=0", "budget.flops"),
        ("finetune.epochs=-1", "finetune.epochs"),
        ("finetune.batch_size=0", "finetune.batch_size"),
        ("baseline.epochs=0", "baseline.epochs"),
        ("finetune.lr=0", "finetune.lr"),
        ("order=sideways", "order"),
        ("layer.score_norm=global", "layer.score_norm"),
        ("prune.scope=everywhere", "prune.scope"),
        ("model.weights=/nonexistent/w.pth", "model.weights"),
        ("data.root=/nonexistent/data", "data.root"),
        ("task=nap", "task"),
    ],
)
def test_out_of_range_settings_name_the_setting(override, setting):
    cfg = compose_config("+criterion=l1", override)
    with pytest.raises(UserError) as err:
        validate(cfg)
    assert str(err.value).startswith(setting)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("override,message", [
    ("pick.rule=best", "pick=best is unknown; choose one of: knee, max_top1, fastest, trial:N"),
    ("pick.rule=trial:x", "pick=trial:x is unknown"),
    ("pick.max_latency_ms=0", "pick.max_latency_ms=0 is invalid: it must be > 0 (ms)"),
    ("export.engine=gpu", "export.engine=gpu is unknown; choose one of: auto, local, jetson, none"),
])
def test_export_settings_name_the_setting(override, message):
    with pytest.raises(UserError, match=re.escape(message)):
        validate(compose_config("task=export", override))


def test_pick_is_short_for_pick_rule_and_nothing_else_is_rewritten():
    assert expand_shorthands(["task=export", "pick=trial:3", "pick.max_latency_ms=2", "-m", "+pick2=x"]) == [
        "task=export", "pick.rule=trial:3", "pick.max_latency_ms=2", "-m", "+pick2=x"]
    assert expand_shorthands(["pick=knee,fastest"]) == ["pick.rule=knee,fastest"]


def test_missing_criterion_lists_the_choices():
    with pytest.raises(UserError, match="add \\+criterion=NAME, one of: bnscale, fmrank, l1, l2, random, taylor"):
        validate(compose_config())


def test_unknown_group_option_is_one_line():
    with pytest.raises(UserError, match="criterion=nope is unknown; choose one of: bnscale, fmrank"):
        check_group_choices(["+criterion=nope"], conf_dir())
    with pytest.raises(UserError, match="model=resnet57"):
        check_group_choices(["model=resnet20,resnet57"], conf_dir())
    check_group_choices(["+criterion=l1,fmrank", "model.name=x", "-m"], conf_dir())


@pytest.mark.parametrize(
    "args,needle",
    [
        (["+criterion=nope"], "error: criterion=nope is unknown"),
        (["+criterion=l1", "channel_ratio=1.5"], "error: channel_ratio=1.5 is out of range"),
        ([], "error: no pruning criterion chosen"),
        (["task=export", "pick=best"], "error: pick=best is unknown"),
    ],
)
def test_cli_user_mistakes_exit_nonzero_without_traceback(args, needle, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "hybridsweep", *args, "tracking.enabled=false"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert out.returncode != 0
    assert needle in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


@pytest.mark.parametrize(
    "typed,nearest",
    [("chanel_ratio=0.3", "channel_ratio"), ("+chanel_ratio=0.3", "channel_ratio"),
     ("+latency.thread=2", "latency.threads"), ("search.n_trial=3", "search.n_trials"),
     ("~finetune.lrr", "finetune.lr")],
)
def test_a_misspelt_key_names_the_nearest_setting(typed, nearest):
    with pytest.raises(UserError, match=rf"is not a setting; did you mean {nearest.replace('.', '[.]')}\?$"):
        check_keys([typed], conf_dir())


def test_real_keys_groups_and_free_form_settings_pass():
    check_keys(["channel_ratio=0.3", "latency.round_runs=10", "search.worker=0,1", "+criterion=l1",
                "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "~search.lr", "+experiment=order",
                "experiment.run_missing=false", "+data.stats.mean=[0.5,0.5,0.5]", "-m"], conf_dir())


def test_a_plus_on_a_schema_setting_says_to_drop_it():
    with pytest.raises(UserError, match=r"^latency[.]round_runs is always a setting, so it takes no '\+': "
                                        r"write latency[.]round_runs=10$"):
        check_keys(["+latency.round_runs=10"], conf_dir())


@pytest.mark.parametrize("typed,fix", [("search.criteria=l1", "search.criteria=[l1]"),
                                       ("search.budgets=0.5", "search.budgets=[0.5]")])
def test_a_scalar_for_a_list_setting_says_how_to_write_the_list(typed, fix):
    with pytest.raises(UserError, match=re.escape(f"{typed.split('=')[0]} is a list: write {fix}") + "$"):
        check_keys([typed], conf_dir())
