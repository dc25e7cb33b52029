"""Models build, take the real reference weights key for key, survive block removal and channel pruning, and
every weights mistake ends in a one-line `UserError` that names `model.weights`."""

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from torch import nn

from hybridsweep.errors import UserError
from hybridsweep.models import MODELS, build_model, load_weights
from hybridsweep.models import weights as weights_module

BATCH = torch.randn(2, 3, 32, 32)


def parameter_count(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def remove_removable_blocks(model: nn.Module) -> list[str]:
    """Depth pruning as layer.py does it: swap the block for nn.Identity in its parent Sequential."""
    removed = []
    for name, _, removable in model.residual_blocks():
        if removable:
            parent, index = name.rsplit(".", 1)
            setattr(model.get_submodule(parent), index, nn.Identity())
            removed.append(name)
    return removed


def weights_error(model: nn.Module, spec: str, model_name: str, dataset: str, cache_dir: Path) -> str:
    with pytest.raises(UserError) as caught:
        load_weights(model, spec, model_name=model_name, dataset=dataset, cache_dir=cache_dir)
    message = str(caught.value)
    assert "model.weights" in message
    assert "\n" not in message
    return message


def test_every_shared_weights_file_loads_key_for_key(shared_data, tmp_path):
    files = sorted((shared_data / "weights").glob("*.pth"))
    assert files
    for path in files:
        dataset, model_name = path.stem.split("_")
        model = build_model(model_name, num_classes=10 if dataset == "cifar10" else 100)
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert list(state) == list(model.state_dict())
        load_weights(model, str(path), model_name=model_name, dataset=dataset, cache_dir=tmp_path)
        assert all(torch.equal(model.state_dict()[key], tensor) for key, tensor in state.items())


def test_resnet56_cifar100_has_the_published_parameter_count():
    assert parameter_count(build_model("resnet56", num_classes=100)) == 861_620


@pytest.mark.parametrize(
    ("width_mult", "num_classes", "millions"),
    [(0.5, 10, 0.70), (0.75, 10, 1.37), (1.0, 10, 2.24), (1.4, 10, 4.33), (1.0, 100, 2.35), (1.4, 100, 4.50)],
)
def test_mobilenetv2_matches_the_published_parameter_counts(width_mult, num_classes, millions):
    model = build_model("mobilenetv2", num_classes=num_classes, width_mult=width_mult)
    assert round(parameter_count(model) / 1e6, 2) == millions


@torch.no_grad()
@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_maps_a_batch_to_class_scores(name):
    model = build_model(name, num_classes=100).eval()
    assert model(BATCH).shape == (2, 100)


@torch.no_grad()
def test_mobilenetv2_widths_map_a_batch_to_class_scores():
    for width_mult in (0.5, 0.75, 1.4):
        model = build_model("mobilenetv2", num_classes=10, width_mult=width_mult).eval()
        assert model(BATCH).shape == (2, 10)


def test_resnet56_lists_its_blocks_in_forward_order():
    blocks = build_model("resnet56", num_classes=100).residual_blocks()
    assert [name for name, _, _ in blocks] == [
        f"layer{stage}.{index}" for stage in (1, 2, 3) for index in range(9)
    ]
    assert [name for name, _, removable in blocks if not removable] == ["layer2.0", "layer3.0"]


def test_mobilenetv2_only_blocks_with_a_shortcut_are_removable():
    blocks = build_model("mobilenetv2", num_classes=10).residual_blocks()
    assert len(blocks) == 17
    assert all(removable == block.use_res_connect for _, block, removable in blocks)
    assert sum(removable for _, _, removable in blocks) == 10


@torch.no_grad()
@pytest.mark.parametrize("name", ["resnet20", "resnet56", "resnet110", "mobilenetv2"])
def test_removing_every_removable_block_keeps_the_net_working(name):
    model = build_model(name, num_classes=10).eval()
    keys_before = set(model.state_dict())
    removed = remove_removable_blocks(model)
    assert removed
    assert all(not removable for _, _, removable in model.residual_blocks())
    assert set(model.state_dict()) < keys_before  # the remaining blocks keep their names
    assert model(BATCH).shape == (2, 10)


@pytest.mark.parametrize(("name", "kwargs"), [("resnet20", {}), ("mobilenetv2", {"width_mult": 0.5})])
def test_torch_pruning_traces_and_prunes_a_depth_pruned_model(name, kwargs):
    model = build_model(name, num_classes=10, **kwargs).eval()
    remove_removable_blocks(model)
    params_before = parameter_count(model)
    classifier = [module for module in model.modules() if isinstance(module, nn.Linear)]
    pruner = tp.pruner.MetaPruner(
        model,
        BATCH,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=0.3,
        ignored_layers=classifier,
    )
    pruner.step()
    assert parameter_count(model) < params_before
    assert model(BATCH).shape == (2, 10)


def test_build_model_rejects_settings_the_model_does_not_take():
    with pytest.raises(UserError, match="model.width_mult"):
        build_model("resnet56", num_classes=100, width_mult=0.5)
    with pytest.raises(UserError, match="model.width_mult"):
        build_model("mobilenetv2", num_classes=100, width_mult=0)
    with pytest.raises(UserError, match="resnet56"):
        build_model("resnet57", num_classes=100)


def test_a_checkpoint_with_a_state_dict_key_loads(shared_data, tmp_path):
    state = torch.load(shared_data / "weights" / "cifar10_resnet20.pth", weights_only=True)
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": state, "epoch": 3}, checkpoint)
    model = build_model("resnet20", num_classes=10)
    load_weights(model, str(checkpoint), model_name="resnet20", dataset="cifar10", cache_dir=tmp_path)
    assert torch.equal(model.fc.weight, state["fc.weight"])


def test_missing_file(tmp_path):
    message = weights_error(
        build_model("resnet20", 10), str(tmp_path / "nope.pth"), "resnet20", "cifar10", tmp_path
    )
    assert "no file at" in message and "nope.pth" in message


def test_corrupt_and_truncated_files(shared_data, tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a torch file\xff" * 64)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((shared_data / "weights" / "cifar10_resnet20.pth").read_bytes()[:50_000])
    for path in (garbage, truncated):
        message = weights_error(build_model("resnet20", 10), str(path), "resnet20", "cifar10", tmp_path)
        assert "corrupt" in message and path.name in message


def test_a_pickled_whole_model_is_refused_without_running_it(tmp_path):
    path = tmp_path / "whole_model.pth"
    torch.save(build_model("resnet20", 10), path)
    message = weights_error(build_model("resnet20", 10), str(path), "resnet20", "cifar10", tmp_path)
    assert "state_dict()" in message


def test_cifar10_weights_into_a_cifar100_model_name_the_data_to_use(shared_data, tmp_path):
    path = shared_data / "weights" / "cifar10_resnet56.pth"
    message = weights_error(build_model("resnet56", 100), str(path), "resnet56", "cifar100", tmp_path)
    assert "fc.weight (10, 64) vs (100, 64)" in message
    assert "data=cifar10" in message


def test_weights_of_another_depth_name_the_model_to_use(shared_data, tmp_path):
    path = shared_data / "weights" / "cifar100_resnet20.pth"
    message = weights_error(build_model("resnet56", 100), str(path), "resnet56", "cifar100", tmp_path)
    assert "missing: layer1.3.conv1.weight" in message
    assert "model=resnet20" in message and "data=" not in message.split("looks like")[1]


def test_no_reference_for_resnet110(tmp_path):
    message = weights_error(build_model("resnet110", 100), "reference", "resnet110", "cifar100", tmp_path)
    assert "resnet110" in message and "resnet56" in message


def test_no_reference_for_an_odd_mobilenetv2_width(tmp_path):
    model = build_model("mobilenetv2", 100, width_mult=0.6)
    message = weights_error(model, "reference", "mobilenetv2", "cifar100", tmp_path)
    assert "mobilenetv2(width_mult=0.5)" in message


def test_reference_download_failure_says_how_to_work_offline(tmp_path, monkeypatch):
    url = "http://127.0.0.1:9/x-00000000.pt"
    monkeypatch.setitem(weights_module.REFERENCE_URLS, ("cifar100", "resnet20"), url)
    message = weights_error(
        build_model("resnet20", 100), "reference", "resnet20", "cifar100", tmp_path / "hub"
    )
    assert f"could not download {url}" in message
    assert "model.weights=/path/to/x-00000000.pt" in message


def test_reference_is_fetched_once_checked_and_cached(shared_data, tmp_path, monkeypatch):
    """A file:// URL stands in for GitHub, so the whole download path runs offline."""
    source = shared_data / "weights" / "cifar100_resnet20.pth"
    hash_prefix = hashlib.sha256(source.read_bytes()).hexdigest()[:8]
    release = tmp_path / "release" / f"cifar100_resnet20-{hash_prefix}.pt"
    release.parent.mkdir()
    shutil.copy(source, release)
    monkeypatch.setitem(weights_module.REFERENCE_URLS, ("cifar100", "resnet20"), release.as_uri())
    cache_dir = tmp_path / "hub"
    for _ in range(2):  # the second load must come from the cache
        model = build_model("resnet20", 100)
        load_weights(model, "reference", model_name="resnet20", dataset="cifar100", cache_dir=cache_dir)
        assert (cache_dir / release.name).is_file()
        release.unlink(missing_ok=True)
    assert torch.equal(model.fc.weight, torch.load(source, weights_only=True)["fc.weight"])
