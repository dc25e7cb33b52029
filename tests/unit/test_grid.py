"""search=grid: the points each searched setting takes, and the grid Optuna's GridSampler walks (in memory)."""

import optuna
import pytest

from hybridsweep.config import checked
from hybridsweep.search.space import Dimension, fixed_keys, parse_space
from tests.helpers import compose_config

# the Makefile's demo: a 3 x 3 grid over the FLOP budget and the depth/width split
DEMO = ("+criterion=l1", "search=grid", "search.budgets=null", "search.budget_range=[0.4,0.9]",
        "search.depth_share=[0,1]", "search.grid_points=3", "search.orders=null", "search.criteria=null",
        "search.lr=null")


@pytest.mark.parametrize(
    "dim,points,expected",
    [
        (Dimension("depth_share", "depth_share", low=0.0, high=1.0), 5, [0.0, 0.25, 0.5, 0.75, 1.0]),
        # rounded: 0.6, not 0.6000000000000001 (the values become overrides and trial params)
        (Dimension("budget", "budget.flops", low=0.4, high=0.9), 6, [0.4, 0.5, 0.6, 0.7, 0.8, 0.9]),
        (Dimension("finetune_lr", "finetune.lr", low=0.001, high=0.05, log=True), 3, [0.001, 0.0070710678, 0.05]),
        (Dimension("depth_share", "depth_share", low=0.2, high=0.8), 1, [0.2]),
        (Dimension("depth_share", "depth_share", low=0.3, high=0.3), 4, [0.3]),
        (Dimension("order", "order", choices=("layer_first", "channel_first")), 5, ["layer_first", "channel_first"]),
    ],
)
def test_grid_points_of_one_dimension(dim, points, expected):
    assert dim.grid(points) == expected


def test_the_shipped_grid_config():
    cfg = compose_config("search=grid")
    space = parse_space(checked(cfg.search), cfg, fixed_keys(["search=grid"]))
    assert space.grid(cfg.search.grid_points) == {
        "depth_share": [0.0, 0.25, 0.5, 0.75, 1.0],
        "budget": [0.5, 0.75],
        "order": ["layer_first", "channel_first"],
        "criterion": ["l1", "l2", "fmrank", "bnscale", "taylor"],
        "finetune_lr": [0.001, 0.0026591479, 0.0070710678, 0.0188030155, 0.05],
    }


def test_the_grid_sampler_walks_every_point_of_the_demo_once_then_stops():
    cfg = compose_config(*DEMO)
    space = parse_space(checked(cfg.search), cfg, fixed_keys(DEMO))
    grid = space.grid(cfg.search.grid_points)
    assert grid == {"depth_share": [0.0, 0.5, 1.0], "budget": [0.4, 0.65, 0.9]}
    study = optuna.create_study(storage=None, directions=["maximize", "minimize"],
                                sampler=optuna.samplers.GridSampler(grid, seed=0))
    plans = []

    def objective(trial):
        plans.append(space.suggest(trial))
        return 0.0, 0.0

    study.optimize(objective, n_trials=20)  # more than the grid: the sampler ends the study itself
    assert len(plans) == 9
    assert sorted((p["depth_share"], p["budget"]) for p in plans) == [
        (d, b) for d in (0.0, 0.5, 1.0) for b in (0.4, 0.65, 0.9)]
    assert {(p["order"], p["criterion"], p["finetune_lr"]) for p in plans} == {
        ("layer_first", "l1", float(cfg.finetune.lr))}
    assert {space.budget_group(p) for p in plans} == {"all"}  # a budget range: one front
