"""The pruning engine on the real pretrained ResNet-20/56 weights: real surgery, exact counts, plans, budgets."""

import copy
import random

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hybridsweep.artifacts import load_pruned, save_pruned
from hybridsweep.errors import UserError
from hybridsweep.export import check_onnx, export_onnx
from hybridsweep.metrics.complexity import count
from hybridsweep.models import build_model
from hybridsweep.pruning.criteria import CRITERIA, ChannelOrigin, FeatureMapRank, conv_bn_pairs
from hybridsweep.pruning.layer import block_scores, blocks_for_ratio, remove_blocks
from hybridsweep.pruning.plan import PrunePlan, apply_plan, plan_from_ratios, solve_budget

SAMPLE = (3, 32, 32)
X = torch.randn(4, *SAMPLE, generator=torch.Generator().manual_seed(0))


def _pretrained(shared_data, depth: int, classes: int = 10) -> nn.Module:
    model = build_model(f"resnet{depth}", num_classes=classes)
    model.load_state_dict(torch.load(shared_data / f"weights/cifar{classes}_resnet{depth}.pth", weights_only=True))
    return model.eval()


@pytest.fixture(scope="module")
def resnet20(shared_data):
    return _pretrained(shared_data, 20)


@pytest.fixture(scope="module")
def resnet56(shared_data):
    return _pretrained(shared_data, 56, classes=100)


@pytest.fixture(scope="module")
def l1_scores20(resnet20):
    return CRITERIA.build("l1", seed=0).scores(resnet20)


def _flop_counter_macs(model: nn.Module) -> int:
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *SAMPLE))
    return counter.get_total_flops() // 2


def test_resnet56_counts_match_reference_and_flop_counter(resnet56):
    c = count(resnet56, SAMPLE)
    assert c.params == 861_620
    assert 125.7e6 <= c.macs <= 126.9e6
    assert c.macs == _flop_counter_macs(resnet56)
    assert c.flops == 2 * c.macs


def test_random_plans_run_and_flops_fall_as_ratios_grow(resnet20, l1_scores20):
    rng = random.Random(0)
    for _ in range(4):
        order = rng.choice(["layer_first", "channel_first"])
        layer_ratio = rng.uniform(0, 0.8)
        ratios = sorted(rng.uniform(0, 0.9) for _ in range(3))
        macs = []
        for ratio in ratios:
            model = copy.deepcopy(resnet20)
            plan = apply_plan(model, plan_from_ratios(model, ratio, layer_ratio, order=order), l1_scores20, SAMPLE)
            assert model(X).shape == (4, 10)
            assert len(plan.removed_blocks) == plan.blocks
            c = count(model, SAMPLE)
            assert c.macs == _flop_counter_macs(model)  # exact counts on pruned shapes too
            macs.append(c.macs)
        assert macs == sorted(macs, reverse=True), (order, layer_ratio, ratios, macs)
    depth_macs = []
    for layer_ratio in (0.0, 0.2, 0.5, 0.8):
        model = copy.deepcopy(resnet20)
        apply_plan(model, plan_from_ratios(model, 0.0, layer_ratio), l1_scores20, SAMPLE)
        depth_macs.append(count(model, SAMPLE).macs)
    assert depth_macs == sorted(depth_macs, reverse=True) and depth_macs[0] > depth_macs[-1]


def test_channel_origin_tracks_baseline_indices(resnet20, l1_scores20):
    model = copy.deepcopy(resnet20)
    origin = ChannelOrigin(model)
    from hybridsweep.pruning.channel import prune_channels

    prune_channels(model, 0.5, l1_scores20, origin, input_shape=SAMPLE)
    name = "layer3.2.conv1"
    baseline = resnet20.get_submodule(name)
    pruned = model.get_submodule(name)
    kept = origin.index[name]
    assert torch.equal(kept, torch.topk(l1_scores20[name], len(kept)).indices.sort().values)
    in_kept = origin.index["layer3.1.conv2"]  # the stage's coupled channels feed this conv
    assert torch.equal(pruned.weight, baseline.weight[kept][:, in_kept])


def test_fmrank_equals_direct_matrix_rank():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].weight.uniform_(0.5, 2)
    images = torch.randn(6, 3, 8, 8)
    scores = FeatureMapRank(chunk=4).scores(model, (images, torch.zeros(6, dtype=torch.long)))
    with torch.no_grad():
        maps = torch.relu(model[1](model[0](images)))
    expected = [
        sum(int(torch.linalg.matrix_rank(maps[i, c])) for i in range(6)) / 6 for c in range(4)
    ]
    assert scores["0"].tolist() == pytest.approx(expected)
    assert conv_bn_pairs(model)["0"][1] is model[1]


@pytest.mark.parametrize("name", ["l1", "l2", "bnscale", "random", "fmrank", "taylor"])
def test_every_criterion_scores_every_conv(name, resnet20):
    model = copy.deepcopy(resnet20)
    criterion = CRITERIA.build(name, seed=0)
    calibration = (torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))) if criterion.needs_data else None
    scores = criterion.scores(model, calibration)
    convs = conv_bn_pairs(model)
    assert set(scores) == set(convs)
    for conv_name, (conv, _) in convs.items():
        assert scores[conv_name].shape == (conv.out_channels,)
        assert torch.isfinite(scores[conv_name]).all()
    assert all(p.grad is None for p in model.parameters())


def test_unknown_criterion_lists_choices():
    with pytest.raises(UserError, match="unknown criterion 'nope' for criterion; choose one of: bnscale, fmrank"):
        CRITERIA.build("nope")


def test_removing_blocks_leaves_a_working_network(resnet20):
    model = copy.deepcopy(resnet20)
    remove_blocks(model, ["layer1.1", "layer3.2"])
    assert isinstance(model.layer1[1], nn.Identity)
    assert model(X).shape == (4, 10)
    with pytest.raises(ValueError, match="already removed"):
        remove_blocks(model, ["layer1.1"])


def test_stage_normalised_block_scores_spread_over_stages(resnet56):
    scores = CRITERIA.build("l1").scores(resnet56)
    origin = ChannelOrigin(resnet56)
    raw = sorted(block_scores(resnet56, scores, origin, "none").items(), key=lambda kv: kv[1])[:8]
    normed = sorted(block_scores(resnet56, scores, origin, "stage").items(), key=lambda kv: kv[1])[:8]
    raw_stages = {name.split(".")[0] for name, _ in raw}
    normed_stages = {name.split(".")[0] for name, _ in normed}
    assert len(raw_stages) == 1  # raw means are not comparable across stages: all picks in one stage
    assert len(normed_stages) >= 2  # normalised within stages: the lowest blocks come from several stages


def test_orders_differ(resnet20, l1_scores20):
    results = {}
    for order in ("layer_first", "channel_first"):
        model = copy.deepcopy(resnet20)
        plan = apply_plan(model, plan_from_ratios(model, 0.5, 0.5, order=order), l1_scores20, SAMPLE)
        results[order] = (plan.removed_blocks, model(X))
    a, b = results["layer_first"], results["channel_first"]
    assert a[0] != b[0] or not torch.allclose(a[1], b[1])


@pytest.mark.parametrize("keep,share,scope", [(0.75, 0.5, "local"), (0.5, 0.3, "local"), (0.6, 1.0, "local"),
                                              (0.9, 0.0, "global")])
def test_budget_solver_lands_within_one_percent(resnet56, keep, share, scope):
    scores = CRITERIA.build("l1").scores(resnet56)
    solved = solve_budget(resnet56, scores, keep, share, SAMPLE, scope=scope)
    base = count(resnet56, SAMPLE).macs
    assert count(solved.model, SAMPLE).macs == solved.macs
    assert abs(solved.macs / (keep * base) - 1) <= 0.01
    assert count(resnet56, SAMPLE).macs == base  # the baseline is untouched
    if share > 0:
        assert solved.plan.blocks > 0


def test_infeasible_budget_and_all_blocks_are_refused(resnet20, l1_scores20):
    with pytest.raises(UserError, match="budget.flops=0.001 is infeasible"):
        solve_budget(resnet20, l1_scores20, 0.001, 0.0, SAMPLE)
    with pytest.raises(UserError, match="layer_ratio=0.99 would remove all 7 removable blocks"):
        blocks_for_ratio(resnet20, 0.99)


def test_saved_plan_and_state_dict_reload_and_export_to_onnx(resnet20, l1_scores20, tmp_path):
    model = copy.deepcopy(resnet20)
    plan = apply_plan(model, plan_from_ratios(model, 0.37, 0.3, order="channel_first"), l1_scores20, SAMPLE)
    save_pruned(model, plan, tmp_path)
    reloaded, reloaded_plan = load_pruned(build_model("resnet20", num_classes=10), tmp_path)
    assert reloaded_plan == plan
    reloaded.eval()
    assert torch.equal(reloaded(X), model(X))
    assert count(reloaded, SAMPLE) == count(model, SAMPLE)
    onnx_path = export_onnx(model, tmp_path / "model.onnx", input_shape=SAMPLE)
    assert check_onnx(model, onnx_path, atol=1e-4) <= 1e-4


def test_corrupt_saved_model_is_a_clear_error(tmp_path):
    (tmp_path / "plan.json").write_text("{not json")
    with pytest.raises(UserError, match="not a readable pruned model"):
        load_pruned(build_model("resnet20", num_classes=10), tmp_path)


def test_global_scope_prunes_layers_unevenly(resnet20, l1_scores20):
    model = copy.deepcopy(resnet20)
    apply_plan(model, PrunePlan(channel_ratio=0.3, scope="global"), l1_scores20, SAMPLE)
    kept = [m.out_channels / b.out_channels for m, b in zip(model.modules(), resnet20.modules(), strict=True)
            if isinstance(m, nn.Conv2d)]
    assert len(set(kept)) > 2 and model(X).shape == (4, 10)


def test_mobilenetv2_prunes_in_depth_and_width():
    model = build_model("mobilenetv2", num_classes=10, width_mult=0.5).eval()
    scores = CRITERIA.build("l2").scores(model)
    before = count(model, SAMPLE)
    plan = apply_plan(model, plan_from_ratios(model, 0.3, 0.3), scores, SAMPLE)
    assert plan.blocks > 0 and model(X).shape == (4, 10)
    assert count(model, SAMPLE).macs < before.macs
