"""The trained network every trial starts from: pretrained weights, or trained once and cached.

`baseline_id` names the baseline's content, so caches built on it (importance scores) are keyed correctly.
"""

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from hybridsweep.cache import Cache, digest, file_digest
from hybridsweep.config import to_plain
from hybridsweep.data import Dataset
from hybridsweep.models import build_model, load_weights


@dataclass(frozen=True)
class Baseline:
    model: nn.Module
    baseline_id: str


def model_kwargs(model_cfg) -> dict:
    return {"width_mult": model_cfg.width_mult} if model_cfg.name == "mobilenetv2" else {}


def build_architecture(model_cfg, num_classes: int) -> nn.Module:
    return build_model(model_cfg.name, num_classes=num_classes, **model_kwargs(model_cfg))


def load_baseline(cfg, ds: Dataset, device, cache: Cache) -> Baseline:
    """Build the model and give it trained weights: from model.weights, or by training once (cached)."""
    model = build_architecture(cfg.model, len(ds.classes))
    spec = cfg.model.weights
    if spec is not None:
        load_weights(model, spec, model_name=cfg.model.name, dataset=cfg.data.name, cache_dir=cache.root / "weights")
        source = spec if spec == "reference" else file_digest(Path(spec).expanduser())
        return Baseline(model, digest(cfg.model.name, model_kwargs(cfg.model), cfg.data.name, source))

    key = digest(cfg.model.name, model_kwargs(cfg.model), ds.fingerprint, to_plain(cfg.baseline), cfg.seed)

    def train():
        from hybridsweep.train import fit

        print(f"no model.weights given: training a {cfg.model.name} baseline once ({cfg.baseline.epochs} epochs)")
        fit(model, ds, cfg.baseline, device=device, seed=cfg.seed, desc="baseline")
        return {k: v.cpu() for k, v in model.state_dict().items()}

    state = cache.get_or_build("baselines", key, train)
    model.load_state_dict(state)
    return Baseline(model, key)
