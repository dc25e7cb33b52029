"""Models by name: CIFAR ResNets and MobileNetV2, each with `residual_blocks()` for depth pruning.

`build_model("resnet56", num_classes=100)` makes a fresh network; `load_weights` fills it from a file or from
the published reference weights.
"""

import inspect
from functools import partial

from torch import nn

from hybridsweep.errors import UserError
from hybridsweep.models.mobilenetv2 import MobileNetV2
from hybridsweep.models.resnet import cifar_resnet
from hybridsweep.models.weights import load_weights
from hybridsweep.registry import Registry

__all__ = ["MODELS", "build_model", "load_weights"]

MODELS: Registry[nn.Module] = Registry("model", "model")

for _depth in (20, 32, 44, 56, 110):
    MODELS.register(f"resnet{_depth}")(partial(cifar_resnet, _depth))


@MODELS.register("mobilenetv2")
def _mobilenetv2(num_classes: int, width_mult: float = 1.0) -> nn.Module:
    if not width_mult > 0:
        raise UserError(
            f"model.width_mult={width_mult} must be positive; reference weights exist for 0.5, 0.75, 1.0, 1.4"
        )
    return MobileNetV2(num_classes, width_mult)


def build_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """A freshly initialised model; a setting the model does not take is a user mistake, not a TypeError."""
    factory = MODELS.get(name)
    accepted = sorted(set(inspect.signature(factory).parameters) - {"num_classes"})
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        takes = f"it takes {', '.join(accepted)}" if accepted else "it takes no extra settings"
        raise UserError(f"model.{unknown[0]}: model {name} has no such setting ({takes}); remove it")
    return factory(num_classes=num_classes, **kwargs)
