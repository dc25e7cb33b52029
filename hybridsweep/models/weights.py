"""Fill a model from a state-dict file or from the published reference weights (`model.weights=reference`).

Every way this can go wrong (no file, a corrupt file, weights of another model or data set, no internet) is
a user mistake with a one-line fix, so each becomes a `UserError` that names `model.weights` and says what
to do. Files are always read with `weights_only=True`: a checkpoint must never run code.
"""

from http.client import HTTPException
from pathlib import Path
from pickle import UnpicklingError

import torch
from torch import nn

from hybridsweep.errors import UserError

_RELEASES = "https://github.com/chenyaofo/pytorch-cifar-models/releases/download"
_RESNET, _MOBILENETV2 = f"{_RELEASES}/resnet", f"{_RELEASES}/mobilenetv2"

# (data set, architecture) -> chenyaofo/pytorch-cifar-models release file; the suffix is a sha256 prefix,
# which torch.hub checks.
REFERENCE_URLS: dict[tuple[str, str], str] = {
    ("cifar10", "resnet20"): f"{_RESNET}/cifar10_resnet20-4118986f.pt",
    ("cifar10", "resnet32"): f"{_RESNET}/cifar10_resnet32-ef93fc4d.pt",
    ("cifar10", "resnet44"): f"{_RESNET}/cifar10_resnet44-2a3cabcb.pt",
    ("cifar10", "resnet56"): f"{_RESNET}/cifar10_resnet56-187c023a.pt",
    ("cifar100", "resnet20"): f"{_RESNET}/cifar100_resnet20-23dac2f1.pt",
    ("cifar100", "resnet32"): f"{_RESNET}/cifar100_resnet32-84213ce6.pt",
    ("cifar100", "resnet44"): f"{_RESNET}/cifar100_resnet44-ffe32858.pt",
    ("cifar100", "resnet56"): f"{_RESNET}/cifar100_resnet56-f2eff4c8.pt",
    ("cifar10", "mobilenetv2(width_mult=0.5)"): f"{_MOBILENETV2}/cifar10_mobilenetv2_x0_5-ca14ced9.pt",
    ("cifar10", "mobilenetv2(width_mult=0.75)"): f"{_MOBILENETV2}/cifar10_mobilenetv2_x0_75-a53c314e.pt",
    ("cifar10", "mobilenetv2(width_mult=1.0)"): f"{_MOBILENETV2}/cifar10_mobilenetv2_x1_0-fe6a5b48.pt",
    ("cifar10", "mobilenetv2(width_mult=1.4)"): f"{_MOBILENETV2}/cifar10_mobilenetv2_x1_4-3bbbd6e2.pt",
    ("cifar100", "mobilenetv2(width_mult=0.5)"): f"{_MOBILENETV2}/cifar100_mobilenetv2_x0_5-9f915757.pt",
    ("cifar100", "mobilenetv2(width_mult=0.75)"): f"{_MOBILENETV2}/cifar100_mobilenetv2_x0_75-d7891e60.pt",
    ("cifar100", "mobilenetv2(width_mult=1.0)"): f"{_MOBILENETV2}/cifar100_mobilenetv2_x1_0-1311f9ff.pt",
    ("cifar100", "mobilenetv2(width_mult=1.4)"): f"{_MOBILENETV2}/cifar100_mobilenetv2_x1_4-8a269f5e.pt",
}

_DATASET_BY_CLASSES = {10: "cifar10", 100: "cifar100"}
_MOBILENETV2_WIDTH_BY_STEM = {16: 0.5, 24: 0.75, 32: 1.0, 48: 1.4}


def load_weights(model: nn.Module, spec: str, *, model_name: str, dataset: str, cache_dir: Path) -> None:
    """Load `spec` (a state-dict path, or "reference") into `model` in place, after checking that it fits."""
    if spec == "reference":
        source = _reference_url(model, model_name, dataset)
        state = _as_state_dict(_download(source, cache_dir), source)
    else:
        path = Path(spec).expanduser()
        source = str(path)
        state = _as_state_dict(_read_file(path), source)
    _check_fits(model, state, source, model_name, dataset)
    model.load_state_dict(state)


def _architecture(model: nn.Module, model_name: str) -> str:
    """The name the reference table and the messages use: MobileNetV2 weights differ per width."""
    width_mult = getattr(model, "width_mult", None)
    return model_name if width_mult is None else f"{model_name}(width_mult={float(width_mult)})"


def _reference_url(model: nn.Module, model_name: str, dataset: str) -> str:
    architecture = _architecture(model, model_name)
    url = REFERENCE_URLS.get((dataset, architecture))
    if url is None:
        architectures = ", ".join(dict.fromkeys(arch for _, arch in REFERENCE_URLS))
        datasets = ", ".join(dict.fromkeys(data for data, _ in REFERENCE_URLS))
        raise UserError(
            f"model.weights=reference: no published weights for {architecture} on {dataset}; they exist for "
            f"{architectures} on {datasets}; pass a local state dict instead: model.weights=/path/to/file.pth"
        )
    return url


def _download(url: str, cache_dir: Path) -> object:
    try:
        return torch.hub.load_state_dict_from_url(
            url, model_dir=str(cache_dir), map_location="cpu", check_hash=True, weights_only=True
        )
    except (OSError, RuntimeError, HTTPException, UnpicklingError) as error:
        reason = getattr(error, "reason", None) or error  # URLError keeps the useful part in .reason
        raise UserError(
            f"model.weights=reference: could not download {url} ({reason}); on a machine without internet "
            f"pass a local file: model.weights=/path/to/{url.rsplit('/', 1)[-1]}"
        ) from None


def _read_file(path: Path) -> object:
    if not path.is_file():
        raise UserError(
            f"model.weights: no file at {path}; pass the path of a state dict saved with "
            "torch.save(model.state_dict(), path), or model.weights=reference for the published weights"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file; to the user they all mean the same
        if "Unsupported global" in str(error):
            raise UserError(
                f"model.weights: {path} holds pickled Python objects (a whole model?), not only tensors; "
                "load it where it was made and save model.state_dict() instead"
            ) from None
        raise UserError(
            f"model.weights: {path} is corrupt or not a PyTorch file ({type(error).__name__}); "
            "copy or save it again, or use model.weights=reference"
        ) from None


def _as_state_dict(loaded: object, source: str) -> dict[str, torch.Tensor]:
    """Accept a plain state dict or a training checkpoint that keeps one under "state_dict"."""
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not (isinstance(loaded, dict) and all(isinstance(value, torch.Tensor) for value in loaded.values())):
        raise UserError(
            f"model.weights: {source} holds a {type(loaded).__name__}, not a state dict of tensors; "
            "save model.state_dict() (or a dict with it under 'state_dict')"
        )
    return loaded


def _check_fits(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, model_name: str, dataset: str
) -> None:
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = [
        f"{key} {tuple(state[key].shape)} vs {tuple(tensor.shape)}"
        for key, tensor in expected.items()
        if key in state and state[key].shape != tensor.shape
    ]
    if not (missing or unexpected or mismatched):
        return
    found = [("missing", missing), ("unexpected", unexpected), ("shape in file vs model", mismatched)]
    problems = "; ".join(f"{label}: {_first_few(keys)}" for label, keys in found if keys)
    model_classes = _num_classes(expected)
    architecture = _architecture(model, model_name)
    raise UserError(
        f"model.weights: {source} does not fit {architecture} with {model_classes} classes "
        f"(data={dataset}): {problems}{_origin_hint(state, model, model_name, model_classes)}"
    )


def _first_few(keys: list[str], limit: int = 3) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _num_classes(state: dict[str, torch.Tensor]) -> int | None:
    """Outputs of the classifier: the last matrix in a state dict (state dicts follow module order)."""
    return next((tensor.shape[0] for tensor in reversed(state.values()) if tensor.dim() == 2), None)


def _guess_architecture(state: dict[str, torch.Tensor]) -> str | None:
    if "layer1.0.conv1.weight" in state:
        blocks_per_stage = len({key.split(".")[1] for key in state if key.startswith("layer1.")})
        return f"resnet{6 * blocks_per_stage + 2}"
    if "features.0.0.weight" in state:
        width_mult = _MOBILENETV2_WIDTH_BY_STEM.get(state["features.0.0.weight"].shape[0])
        return "mobilenetv2" if width_mult is None else f"mobilenetv2(width_mult={width_mult})"
    return None


def _as_settings(architecture: str) -> str:
    """The command-line form: "mobilenetv2(width_mult=0.5)" -> "model=mobilenetv2 model.width_mult=0.5"."""
    name, _, arguments = architecture.partition("(")
    return f"model={name}" + (f" model.{arguments.rstrip(')')}" if arguments else "")


def _origin_hint(
    state: dict[str, torch.Tensor], model: nn.Module, model_name: str, model_classes: int | None
) -> str:
    """Say which model and data the file was probably made for, so the fix is one setting away."""
    architecture, file_classes = _guess_architecture(state), _num_classes(state)
    fixes = []
    if architecture is not None and architecture != _architecture(model, model_name):
        fixes.append(_as_settings(architecture))
    if file_classes is not None and file_classes != model_classes:
        fixes.append(f"data={_DATASET_BY_CLASSES.get(file_classes, f'<data with {file_classes} classes>')}")
    if not fixes:
        return "; use the weights saved for this model and data"
    looks_like = f"{architecture or 'an unknown model'} with {file_classes} classes"
    return f"; the file looks like {looks_like}: use {' '.join(fixes)} or the matching weights"
