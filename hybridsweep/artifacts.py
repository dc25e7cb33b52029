"""A pruned model on disk: its plan (JSON) and a plain state dict, reloadable with `weights_only=True`.

Reloading builds the baseline architecture, removes the plan's blocks, then resizes every conv, BN and linear
layer to the shapes stored in the state dict. Torch-Pruning's own serialisation pickles whole module dicts,
which `weights_only` loading refuses, hence this small resizer.
"""

import json
from pathlib import Path

import torch
from torch import nn

from hybridsweep.errors import UserError
from hybridsweep.pruning.layer import remove_blocks
from hybridsweep.pruning.plan import PrunePlan

PLAN_FILE = "plan.json"
WEIGHTS_FILE = "model.pt"


def save_pruned(model: nn.Module, plan: PrunePlan, folder: Path, meta: dict | None = None) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    plan_path, weights_path = folder / PLAN_FILE, folder / WEIGHTS_FILE
    record = json.loads(plan.to_json()) | {"meta": meta or {}}
    plan_path.write_text(json.dumps(record, indent=2))
    torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, weights_path)
    return plan_path, weights_path


def _resize(module: nn.Module, name: str, state: dict[str, torch.Tensor]) -> None:
    weight = state.get(f"{name}.weight")
    if weight is None:
        return
    if isinstance(module, nn.Conv2d):
        depthwise = module.groups > 1 and module.groups == module.in_channels
        module.out_channels = weight.shape[0]
        module.in_channels = weight.shape[0] if depthwise else weight.shape[1] * module.groups
        if depthwise:
            module.groups = module.in_channels
    elif isinstance(module, nn.BatchNorm2d):
        module.num_features = weight.shape[0]
        module.running_mean = torch.zeros(weight.shape[0])
        module.running_var = torch.ones(weight.shape[0])
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = weight.shape
    else:
        return
    module.weight = nn.Parameter(torch.empty_like(weight))
    if getattr(module, "bias", None) is not None:
        module.bias = nn.Parameter(torch.empty_like(state[f"{name}.bias"]))


def load_pruned(architecture: nn.Module, folder: Path) -> tuple[nn.Module, PrunePlan]:
    """Rebuild a saved pruned model from a fresh (unpruned) instance of its architecture."""
    try:
        record = json.loads((folder / PLAN_FILE).read_text())
        record.pop("meta", None)
        plan = PrunePlan.from_json(json.dumps(record))
        state = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(
            f"{folder}: not a readable pruned model ({exc}); it needs {PLAN_FILE} and {WEIGHTS_FILE}"
        ) from exc
    remove_blocks(architecture, plan.removed_blocks)
    for name, module in architecture.named_modules():
        _resize(module, name, state)
    try:
        architecture.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"{folder}: the state dict does not fit the plan's architecture ({str(exc)[:200]})") from exc
    return architecture, plan
