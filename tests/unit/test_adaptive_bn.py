"""Adaptive BN re-estimates BatchNorm statistics from data (and nothing else), and says when there are none."""

import pytest
import torch
from torch import nn

from hybridsweep.adaptive_bn import recalibrate
from hybridsweep.data.augment import normalize
from hybridsweep.data.sources import Dataset
from hybridsweep.errors import UserError
from hybridsweep.search.screen import ScreenSettings


def tiny_dataset(n: int = 64) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.arange(n) % 4
    return Dataset("tiny", ["a", "b", "c", "d"], x, y, x[:16], y[:16], (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "tiny")


def test_statistics_become_those_of_the_features_and_weights_stay():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))
    bn = model[1]
    bn.running_mean.fill_(7.0)  # statistics of "the old network"
    bn.running_var.fill_(9.0)
    weights = [p.detach().clone() for p in model.parameters()]
    ds = tiny_dataset()
    assert recalibrate(model, ds, 64, device=torch.device("cpu")) == 1
    with torch.no_grad():
        features = model[0](normalize(ds.train_x, ds.mean, ds.std, channels_last=False))
    assert torch.allclose(bn.running_mean, features.mean(dim=(0, 2, 3)), atol=1e-4)
    assert torch.allclose(bn.running_var, features.var(dim=(0, 2, 3), unbiased=True), rtol=1e-3)
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))
    assert bn.momentum == 0.1 and not model.training


def test_a_model_without_batchnorm_is_left_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    before = [p.detach().clone() for p in model.parameters()]
    assert recalibrate(model, tiny_dataset(), 32, device=torch.device("cpu")) == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_more_images_than_the_training_set_names_the_setting():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(UserError, match=r"^screen\.bn_images=65 is larger than the train split \(64 images\)"):
        recalibrate(model, tiny_dataset(), 65, device=torch.device("cpu"))


@pytest.mark.parametrize(
    "screen,message",
    [({"candidates": 0}, r"search\.screen\.candidates=0 is invalid"),
     ({"candidates": 2.5}, r"search\.screen\.candidates=2\.5 is invalid"),
     ({"latency": "guess"}, r"search\.screen\.latency=guess is unknown"),
     ({"candidate": 4}, r"search\.screen\.candidate is not a setting")],
)
def test_bad_screen_settings_are_one_line(screen, message):
    with pytest.raises(UserError, match=message):
        ScreenSettings.from_config({"screen": screen})


def test_no_screen_section_means_no_screening():
    assert ScreenSettings.from_config({}).candidates == 1
