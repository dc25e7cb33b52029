"""The search space: which settings a search samples, in which ranges, and the overrides a sampled plan becomes.

In-memory Optuna studies and FixedTrial only: no trial is run.
"""

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import FixedTrial

from hybridsweep.config import checked
from hybridsweep.errors import UserError
from hybridsweep.search.space import fixed_keys, parse_space
from tests.helpers import compose_config

CRITERIA = ("l1", "l2", "fmrank", "bnscale", "taylor")


def space_of(*command_line: str):
    """The space `python -m hybridsweep <command_line>` searches, its settings checked as a search checks them."""
    cfg = compose_config(*command_line)
    return parse_space(checked(cfg.search), cfg, fixed_keys(command_line)), cfg


def test_nsga2_searches_its_four_ranges_and_fixes_the_criterion_given_on_the_command_line():
    space, _ = space_of("search=nsga2", "+criterion=l1")
    assert space.fixed == {"criterion": "l1"}
    assert space.describe() == (
        "depth_share in [0, 1]; budget.flops in [0.5, 0.75]; order in ['layer_first', 'channel_first']; "
        "finetune.lr in [0.001, 0.05] (log)"
    )


def test_a_sampled_plan_has_optuna_distributions_and_the_fixed_values():
    space, _ = space_of("search=nsga2", "+criterion=l1")
    study = optuna.create_study(storage=None, directions=["maximize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    plan = space.suggest(trial)
    assert trial.distributions == {
        "depth_share": FloatDistribution(0.0, 1.0),
        "budget": CategoricalDistribution([0.5, 0.75]),
        "order": CategoricalDistribution(["layer_first", "channel_first"]),
        "finetune_lr": FloatDistribution(0.001, 0.05, log=True),
    }
    assert plan == {**trial.params, "criterion": "l1"}


def test_a_plan_becomes_hydra_overrides_and_a_budget_group():
    space, _ = space_of("search=nsga2", "+criterion=l1")
    plan = space.suggest(FixedTrial({"depth_share": 0.25, "budget": 0.75, "order": "channel_first",
                                     "finetune_lr": 0.01}))
    assert plan == {"depth_share": 0.25, "budget": 0.75, "order": "channel_first", "finetune_lr": 0.01,
                    "criterion": "l1"}
    # the fixed criterion is on the command line already
    assert space.overrides(plan) == ["depth_share=0.25", "budget.flops=0.75", "order=channel_first",
                                     "finetune.lr=0.01"]
    assert space.budget_group(plan) == "0.75"  # a list of budgets: one front per budget


@pytest.mark.parametrize("criterion_args,override",
                         [((), "+criterion=fmrank"), (("+criterion=l1",), "criterion=fmrank")])
def test_a_searched_criterion_is_added_or_swapped_as_the_config_needs(criterion_args, override):
    """A config without a criterion needs `+criterion=`; one that has one (an experiment's) `criterion=`."""
    cfg = compose_config("search=random", *criterion_args)
    space = parse_space(checked(cfg.search), cfg, fixed_keys(["search=random"]))
    (dim,) = [d for d in space.dims if d.name == "criterion"]
    assert dim.choices == CRITERIA
    plan = space.suggest(FixedTrial({"depth_share": 0.5, "budget": 0.5, "order": "layer_first",
                                     "criterion": "fmrank", "finetune_lr": 0.001}))
    assert override in space.overrides(plan)


def test_a_budget_range_is_searched_continuously_as_one_front():
    space, _ = space_of("search=tpe", "+criterion=l1", "search.budget_range=[0.4,0.9]")
    (dim,) = [d for d in space.dims if d.name == "budget"]
    assert (dim.low, dim.high, dim.choices) == (0.4, 0.9, None)  # the range wins over search.budgets
    assert space.budget_group({"budget": 0.52}) == "all"


def test_command_line_keys_and_null_entries_keep_the_config_value():
    space, cfg = space_of("search=nsga2", "+criterion=l1", "depth_share=0.3", "search.lr=null")
    assert space.fixed == {"depth_share": 0.3, "criterion": "l1", "finetune_lr": float(cfg.finetune.lr)}
    assert [d.name for d in space.dims] == ["budget", "order"]


@pytest.mark.parametrize(
    "override,message",
    [
        ("search.depth_share=[0.2,1.5]", r"search\.depth_share=\[0.2, 1.5\] is out of range"),
        ("search.budget_range=[0.9,0.4]", r"search\.budget_range=.* is an empty range"),
        ("search.budgets=[]", r"search\.budgets=\[\] leaves nothing to search"),
        ("search.budgets=[0.5,1.2]", r"1\.2 is not a fraction of the baseline's FLOPs"),
        ("search.orders=[sideways]", r"search\.orders: sideways is unknown"),
        ("search.criteria=[l3]", r"search\.criteria: l3 is unknown"),
        ("search.lr=[0,0.1]", r"learning rates are > 0"),
        ("search.budgets=null", r"a search needs a FLOP budget"),
        ("search.max_latency_ms=0", r"search\.max_latency_ms=0 is invalid: it must be > 0"),
        ("search.max_latency_ms=-1.5", r"search\.max_latency_ms=-1\.5 is invalid"),
        ("search.min_top1=0", r"search\.min_top1=0 is out of range: top-1 is a percentage in \(0, 100\]"),
        ("search.min_top1=100.5", r"search\.min_top1=100\.5 is out of range"),
    ],
)
def test_a_bad_space_is_one_user_error(override, message):
    with pytest.raises(UserError, match=message):
        space_of("search=nsga2", override)  # no +criterion: the criteria are searched, so checked too


def test_everything_fixed_leaves_no_space():
    with pytest.raises(UserError, match="the search space is empty"):
        space_of("search=nsga2", "+criterion=l1", "depth_share=0.5", "budget.flops=0.5", "order=layer_first",
                 "finetune.lr=0.01")


def test_thresholds_default_to_none_and_take_values_in_range():
    assert (checked(compose_config("search=nsga2").search).max_latency_ms,
            checked(compose_config("search=nsga2").search).min_top1) == (None, None)
    settings = checked(compose_config("search=nsga2", "search.max_latency_ms=2.5", "search.min_top1=100").search)
    assert (settings.max_latency_ms, settings.min_top1) == (2.5, 100.0)
