"""Config schemas (registered in Hydra's ConfigStore) and the range checks that turn user mistakes into one line.

Hydra checks types when it merges the YAML and command line into these dataclasses. Ranges are checked once per
setting: the root's by `validate`, each group schema's by its own `__post_init__`, which runs when the node is
built (`checked`): the criterion here, a latency backend's by its settings dataclass (`latency_schemas`), the
search's in `hybridsweep/search/settings.py`. Either way the message names the setting and what to do.
"""

import functools
import math
from dataclasses import dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any, get_type_hints

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from hybridsweep.errors import UserError

TASKS = ("prune", "evaluate", "train_baseline", "latency", "calibrate", "search", "report", "export", "experiment",
         "experiment_report")
ORDERS = ("layer_first", "channel_first")


@dataclass
class ModelConfig:
    name: str = "resnet56"
    weights: str | None = None  # a state-dict path, "reference", or null (train a baseline once, cached)
    width_mult: float = 1.0  # MobileNetV2 only


@dataclass
class DataConfig:
    name: str = "cifar100"  # cifar100 | cifar10 | imagefolder
    root: str | None = None  # local copy (folder or .tar.gz for imagefolder); null downloads to the cache
    download: bool = True
    # auto | cifar10 | cifar100 | {mean: [...], std: [...]}: a name or a mapping, which OmegaConf 2.3 cannot type
    # (no unions); data/sources.py parses it
    stats: Any = "auto"
    train_subset: int | None = None
    test_subset: int | None = None
    calibration_size: int = 256  # images for criteria that need data (fmrank, taylor)


@dataclass
class TrainConfig:
    """One SGD recipe, used for fine-tuning after pruning and for training a baseline from scratch."""

    epochs: int = 10
    max_steps: int | None = None  # stop after this many SGD steps in total (quick checks)
    batch_size: int = 128
    eval_batch_size: int = 500
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    distill: float = 0.0  # weight of knowledge distillation from the unpruned model, in [0, 1]
    temperature: float = 4.0
    channels_last: bool = True
    amp: bool = True  # bfloat16 autocast, CUDA only


@dataclass
class CriterionConfig:
    """`+criterion=NAME` (conf/criterion/): the importance score that ranks channels and blocks."""

    name: str = MISSING  # a key of hybridsweep.pruning.criteria.CRITERIA; its file in conf/criterion/ says what it does

    def __post_init__(self):
        if self.name not in criterion_choices():
            raise UserError(f"criterion={self.name} is unknown; choose one of: {', '.join(criterion_choices())}")


@dataclass
class BudgetConfig:
    flops: float | None = None  # fraction of the baseline's FLOPs to keep; null: use the explicit ratios


@dataclass
class LayerConfig:
    score_norm: str = "stage"  # stage: block scores normalised within their stage | none: the paper's raw mean


@dataclass
class PruneConfig:
    iterative_steps: int = 1
    round_to: int | None = None  # keep channel counts multiples of this (8 suits most kernels)
    scope: str = "local"  # local: channel_ratio of every layer | global: of all channels, lowest scores first


@dataclass
class ScreenConfig:
    """Adaptive BN: a pruned model's BatchNorm statistics re-estimated before fine-tuning (see adaptive_bn.py)."""

    bn_images: int | None = 2000  # class-balanced training images to re-estimate on; null: skip adaptive BN
    finetune_from_adaptive_bn: bool = True  # fine-tune from the re-estimated statistics (else from the old ones)


@dataclass
class PathsConfig:
    cache_dir: str = "~/.cache/hybridsweep"
    output_dir: str = "."


@dataclass
class TrackingConfig:
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "hybridsweep"
    enabled: bool = True


@dataclass
class CalibrationConfig:
    """task=calibrate: where the LUT profile goes and how much is measured."""

    out: str | None = None  # default <backend>-<model>.json in the working directory
    whole_models: int = 12  # pruned whole models measured to fit the overhead correction (8 fitted poorly)
    passes: int = 1  # measure every shape this often (shuffled), keep the fastest (load only slows a run)


@dataclass
class PickConfig:
    """task=export: which trial of the study. `pick=knee` on the command line is short for `pick.rule=knee`."""

    rule: str = "knee"  # knee | max_top1 | fastest | trial:N (see hybridsweep/search/pick.py)
    max_latency_ms: float | None = None  # only front trials at or under this latency (ms) are candidates

    def __post_init__(self):
        from hybridsweep.search.pick import parse_rule

        parse_rule(self.rule)
        if self.max_latency_ms is not None and not self.max_latency_ms > 0:
            raise UserError(f"pick.max_latency_ms={self.max_latency_ms:g} is invalid: it must be > 0 (ms)")


@dataclass
class ExportConfig:
    """task=export: where the deployable files go and how the TensorRT engine is built."""

    dir: str = "export"  # export/<study>-<trial>/ is written under this folder
    engine: str = "auto"  # auto: local TensorRT when it and a GPU are here | local | jetson (trtexec over SSH,
    # with the latency=jetson settings) | none
    fp16: bool = True  # build the engine with FP16 kernels allowed

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise UserError(f"export.engine={self.engine} is unknown; choose one of: {', '.join(ENGINES)}")


ENGINES = ("auto", "local", "jetson", "none")


@dataclass
class LatencyConfig:
    """`latency=NAME` (conf/latency/): the backend, and what stands in when its device cannot measure. Each
    backend's schema adds the backend's own settings (`latency_schemas`)."""

    backend: str = MISSING
    fallback: str | None = None  # lut | none | null: a failed measurement stops the run (metrics/latency/fallback.py)
    fallback_profile: str | None = None  # the lut fallback's profile; null: the shipped CPU profile

    def __post_init__(self):
        """Build the backend from its settings (no measuring): its settings dataclass checks their ranges, so a bad
        `latency.*` value fails here, not after a whole fine-tune."""
        from hybridsweep.metrics.latency import LATENCY_BACKENDS
        from hybridsweep.metrics.latency.fallback import check_fallback

        check_fallback(self.fallback)
        shared = {f.name for f in fields(LatencyConfig)}
        LATENCY_BACKENDS.build(self.backend, **{f.name: getattr(self, f.name) for f in fields(self)
                                                if f.name not in shared})


def backend_settings(latency: DictConfig | dict) -> dict:
    """A `latency` node's (or its plain dict's) backend settings, as a backend is built from them: without the
    fields every schema shares (`backend`, and the fallback, which belongs to the trial)."""
    shared = {f.name for f in fields(LatencyConfig)}
    plain = OmegaConf.to_container(latency, resolve=True) if isinstance(latency, DictConfig) else latency
    return {k: v for k, v in plain.items() if k not in shared}


@dataclass
class SearchConfig:
    """What of `search=NAME` (conf/search/) the rest of the program reads: which sampler (none: one trial, no
    study) and, for `task=report`, which studies where. Every file there extends StudyConfig, which adds a
    study's settings (hybridsweep/search/settings.py)."""

    sampler: str = "none"
    storage: str = "sqlite:///optuna.db"  # FILE.journal: several local workers | postgresql://USER:PW@HOST:PORT/DB
    studies: list[str] | None = None  # task=report: the studies drawn together; null: every study in storage


@dataclass
class Config:
    task: str = "prune"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    channel_ratio: float = 0.0
    layer_ratio: float = 0.0
    order: str = "layer_first"
    depth_share: float = 0.5
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    layer: LayerConfig = field(default_factory=LayerConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    screen: ScreenConfig = field(default_factory=ScreenConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    finetune: TrainConfig = field(default_factory=TrainConfig)
    baseline: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=200, lr=0.1, batch_size=128, distill=0.0)
    )
    criterion: CriterionConfig | None = None  # no default on purpose: +criterion=NAME
    latency: LatencyConfig = MISSING  # latency=NAME: one of latency_schemas()
    search: SearchConfig = MISSING  # search=NAME: none, or a sampler
    experiment: Any = None  # set by +experiment=NAME (conf/experiment/)
    paths: PathsConfig = field(default_factory=PathsConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    pick: PickConfig = field(default_factory=PickConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


@functools.cache
def latency_schemas() -> dict[str, type[LatencyConfig]]:
    """One schema per backend: LatencyConfig plus the fields of the backend's settings dataclass, with their types
    and defaults, so those live once, beside the code that uses them."""
    from hybridsweep.metrics.latency import BACKEND_SETTINGS

    schemas = {}
    for name, settings in BACKEND_SETTINGS.items():
        types = get_type_hints(settings)
        own = [(f.name, types[f.name], field(default=f.default)) for f in fields(settings)]
        schema = make_dataclass(f"{settings.__name__}Config", [("backend", str, field(default=name)), *own],
                                bases=(LatencyConfig,))
        schema.__module__ = __name__  # found by `__getattr__` below
        schemas[name] = schema
    return schemas


def __getattr__(name: str) -> type[LatencyConfig]:
    """A latency schema by its class name: a composed config refers to it, so pickling one (Hydra's launchers
    send the config to their worker processes) needs `hybridsweep.config.CpuLatencyConfig` to resolve."""
    for schema in latency_schemas().values():
        if schema.__name__ == name:
            return schema
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def group_schemas() -> dict[str, dict[str, type]]:
    """Per config group, the schemas its files extend by name (`defaults: [base_<name>]`)."""
    from hybridsweep.search.settings import StudyConfig

    return {
        "criterion": {"base_criterion": CriterionConfig},
        "latency": {f"base_{name}": schema for name, schema in latency_schemas().items()},
        "search": {"base_study": StudyConfig},
    }


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    for group, schemas in group_schemas().items():
        for name, schema in schemas.items():
            cs.store(group=group, name=name, node=schema)


def _in_unit_interval(name: str, value: float, closed_right: bool = False) -> None:
    ok = 0.0 <= value <= 1.0 if closed_right else 0.0 <= value < 1.0
    if not ok:
        interval = "[0, 1]" if closed_right else "[0, 1)"
        raise UserError(f"{name}={value} is out of range: it must lie in {interval}")


def _positive(name: str, value: int | None, allow_zero: bool = False, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise UserError(f"{name}={value} is invalid: it must be an integer {bound}")


def _check_train(prefix: str, t: DictConfig, allow_zero_epochs: bool) -> None:
    _positive(f"{prefix}.epochs", t.epochs, allow_zero=allow_zero_epochs)
    _positive(f"{prefix}.max_steps", t.max_steps, allow_none=True)
    _positive(f"{prefix}.batch_size", t.batch_size)
    _positive(f"{prefix}.eval_batch_size", t.eval_batch_size)
    if not (math.isfinite(t.lr) and t.lr > 0):
        raise UserError(f"{prefix}.lr={t.lr} is invalid: the learning rate must be a finite number > 0")
    _in_unit_interval(f"{prefix}.distill", t.distill, closed_right=True)


def criterion_choices() -> list[str]:
    from hybridsweep.pruning.criteria import CRITERIA

    return CRITERIA.names()


def validate(cfg: DictConfig) -> None:
    """Check ranges, choices and paths; raise UserError with a one-line message on the first problem."""
    if cfg.task not in TASKS:
        raise UserError(f"task={cfg.task} is unknown; choose one of: {', '.join(TASKS)}")
    if cfg.order not in ORDERS:
        raise UserError(f"order={cfg.order} is unknown; choose one of: {', '.join(ORDERS)}")
    _in_unit_interval("channel_ratio", cfg.channel_ratio)
    _in_unit_interval("layer_ratio", cfg.layer_ratio)
    _in_unit_interval("depth_share", cfg.depth_share, closed_right=True)
    if cfg.budget.flops is not None and not 0.0 < cfg.budget.flops <= 1.0:
        raise UserError(
            f"budget.flops={cfg.budget.flops} is out of range: it is the fraction of the baseline's FLOPs "
            "to keep, in (0, 1]"
        )
    if cfg.layer.score_norm not in ("stage", "none"):
        raise UserError(f"layer.score_norm={cfg.layer.score_norm} is unknown; choose stage or none")
    if cfg.prune.scope not in ("local", "global"):
        raise UserError(f"prune.scope={cfg.prune.scope} is unknown; choose local or global")
    _positive("prune.iterative_steps", cfg.prune.iterative_steps)
    _positive("prune.round_to", cfg.prune.round_to, allow_none=True)
    _check_train("finetune", cfg.finetune, allow_zero_epochs=True)
    _check_train("baseline", cfg.baseline, allow_zero_epochs=False)
    _positive("data.train_subset", cfg.data.train_subset, allow_none=True)
    _positive("data.test_subset", cfg.data.test_subset, allow_none=True)
    _positive("data.calibration_size", cfg.data.calibration_size)
    _positive("screen.bn_images", cfg.screen.bn_images, allow_none=True)
    if cfg.calibration.whole_models < 2:
        raise UserError(f"calibration.whole_models={cfg.calibration.whole_models} is invalid: it must be >= 2")
    _positive("calibration.passes", cfg.calibration.passes)
    weights = cfg.model.weights
    if weights not in (None, "reference") and not Path(weights).expanduser().is_file():
        raise UserError(
            f"model.weights={weights}: no such file; pass a state-dict path, model.weights=reference, "
            "or model.weights=null to train a baseline"
        )
    if cfg.data.root is not None and not Path(cfg.data.root).expanduser().exists():
        raise UserError(f"data.root={cfg.data.root}: no such file or folder; point it at a local copy")
    if cfg.data.name == "imagefolder" and cfg.data.root is None:
        raise UserError("data=imagefolder needs data.root=DIR (a train/<class>/, test/<class>/ tree or its .tar.gz)")
    if cfg.task == "prune" and cfg.criterion is None:
        raise UserError(f"no pruning criterion chosen: add +criterion=NAME, one of: {', '.join(criterion_choices())}")
    if cfg.criterion is not None:
        checked(cfg.criterion)
    if cfg.task in ("prune", "search", "latency", "calibrate", "experiment"):
        checked(cfg.latency)
    if cfg.task == "export":
        checked(cfg.pick)
        checked(cfg.export)


def checked(node: DictConfig) -> Any:
    """A typed config node as its dataclass: building it runs the dataclass's own range checks (`__post_init__`)."""
    return OmegaConf.to_object(node)


def output_dir(cfg: DictConfig) -> Path:
    """`paths.output_dir` (Hydra's run folder by default); `outputs/` when composed without Hydra's runtime (tests,
    the Compose API), where `${hydra:...}` cannot resolve."""
    try:
        return Path(cfg.paths.output_dir)
    except Exception:
        return Path("outputs")


def to_plain(cfg: DictConfig | ListConfig) -> Any:
    return OmegaConf.to_container(cfg, resolve=True)
