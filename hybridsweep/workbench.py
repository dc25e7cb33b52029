"""What trials share: decoded data, the baseline, its accuracy, its importance scores, and measured latencies.

Each is built once and kept on disk in the content-addressed cache (across processes and sweeps) and in
memory (across the trials of one process), so a sweep's second trial starts straight at pruning. A latency is
kept per architecture (see `architecture_signature`), backend settings and host: two trials that reach the same
pruned shapes get the same figure, measured once, instead of two readings of the machine's load.
"""

import socket
from pathlib import Path

import torch

from hybridsweep.baseline import Baseline, load_baseline
from hybridsweep.cache import Cache, digest
from hybridsweep.config import to_plain
from hybridsweep.data import Dataset, calibration_batch, load_dataset
from hybridsweep.data.augment import normalize
from hybridsweep.metrics.complexity import architecture_signature
from hybridsweep.metrics.latency import LatencyResult
from hybridsweep.metrics.latency.fallback import measure_or_fallback
from hybridsweep.pruning.criteria import CRITERIA, Scores
from hybridsweep.train import Accuracy, evaluate


class Workbench:
    def __init__(self, cache_dir: str | Path):
        self.cache = Cache(cache_dir)
        self._memo: dict[str, object] = {}

    def _remember(self, key: str, build):
        if key not in self._memo:
            self._memo[key] = build()
        return self._memo[key]

    def dataset(self, cfg) -> Dataset:
        d = cfg.data
        stats = to_plain(d.stats) if not isinstance(d.stats, str) else d.stats
        key = digest("dataset", d.name, d.root, stats, d.train_subset, d.test_subset, cfg.seed)
        return self._remember(
            key,
            lambda: load_dataset(
                d.name,
                d.root,
                stats=stats,
                train_subset=d.train_subset,
                test_subset=d.test_subset,
                cache_root=self.cache.root,
                download=d.download,
                seed=cfg.seed,
            ),
        )

    def baseline(self, cfg, ds: Dataset, device) -> Baseline:
        key = digest("baseline", to_plain(cfg.model), ds.fingerprint, cfg.seed)
        return self._remember(key, lambda: load_baseline(cfg, ds, device, self.cache))

    def baseline_accuracy(self, cfg, ds: Dataset, base: Baseline, device) -> Accuracy:
        key = digest("accuracy", base.baseline_id, ds.fingerprint)

        def measure():
            import copy

            acc = evaluate(copy.deepcopy(base.model), ds, device=device, batch_size=cfg.finetune.eval_batch_size)
            return {"top1": acc.top1, "top5": acc.top5, "images": acc.images}

        values = self._remember(key, lambda: self.cache.get_or_build("accuracy", key, measure))
        return Accuracy(**values)

    def calibration(self, cfg, ds: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = calibration_batch(ds, cfg.data.calibration_size, cfg.seed, setting="data.calibration_size")
        return normalize(x, ds.mean, ds.std, channels_last=False), y

    def scores(self, cfg, ds: Dataset, base: Baseline) -> Scores:
        """Importance scores of the baseline under the trial's criterion, computed once per calibration set."""
        name = cfg.criterion.name
        criterion = CRITERIA.build(name, seed=cfg.seed)
        calibration_id = (ds.fingerprint, cfg.data.calibration_size, cfg.seed) if criterion.needs_data else None
        key = digest("scores", base.baseline_id, name, cfg.seed, calibration_id)

        def compute() -> Scores:
            import copy

            model = copy.deepcopy(base.model).cpu().to(memory_format=torch.contiguous_format)
            calibration = self.calibration(cfg, ds) if criterion.needs_data else None
            return criterion.scores(model, calibration)

        return self._remember(key, lambda: self.cache.get_or_build("scores", key, compute))

    def latency(
        self, model: torch.nn.Module, settings: dict, input_shape: tuple[int, ...]
    ) -> tuple[LatencyResult | None, dict[str, str]]:
        """`measure_or_fallback` once per (architecture, latency settings, host); tags say which architecture
        and whether this figure was reused. Only measurements are kept: a fallback prediction is not."""
        arch = architecture_signature(model)
        key = digest("latency", arch, settings, tuple(input_shape), socket.gethostname())
        record = self._memo.get(key) or self.cache.get("latency", key)
        if record is not None:
            self._memo[key] = record
            return LatencyResult.from_record(record), {"latency.arch": arch, "latency.reused": "yes"}
        result, tags = measure_or_fallback(model, settings, input_shape=input_shape)
        if result is not None and result.source == "measured" and not tags:
            self._memo[key] = result.as_record()
            self.cache.put("latency", key, self._memo[key])
        return result, {**tags, "latency.arch": arch, "latency.reused": "no"}


_WORKBENCHES: dict[str, Workbench] = {}


def workbench(cfg) -> Workbench:
    """One per cache folder and process: a multirun's jobs share decoded data, baseline and scores in memory."""
    root = str(Path(cfg.paths.cache_dir).expanduser())
    return _WORKBENCHES.setdefault(root, Workbench(root))
