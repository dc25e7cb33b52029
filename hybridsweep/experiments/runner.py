"""`task=experiment` (`python -m hybridsweep +experiment=NAME`): the trials an experiment names, resumable.

An experiment (conf/experiment/NAME.yaml) is a grid of config values plus extra variants, each one trial, and
optionally an Optuna study. Its MLflow store, study and trial folders live in `experiment.store` (outside the
repository); its committed results in `experiment.results`. A run:
1. runs each variant that has no FINISHED run in the store and no row in the committed results.csv (so a
   rerun, or another session with the CSV but a lost store, only runs what is missing), then the study, if any;
2. re-measures every trial's model and the baseline in one interleaved latency pass (`final_latency`) and logs
   the figures on each run;
3. writes results.csv (one row per trial: params, metrics, latency tags, run id) and rebuilds the report.
"""

from __future__ import annotations

import csv
import itertools
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from hybridsweep.config import to_plain
from hybridsweep.errors import UserError

RESULTS_FILE = "results.csv"
VARIANT_TAG = "experiment.variant"
# latency tags worth a column: how each figure was obtained
TAG_COLUMNS = ("latency.source", "latency.backend", "latency.device", "latency.statistic", "latency.converged",
               "latency.load_avg", "latency.arch", "latency.final.statistic", "latency.final.converged",
               "latency.final.load_avg", "latency.final.pass", "optuna.trial", "pareto")


@dataclass(frozen=True)
class Variant:
    name: str  # what the results call it: "criterion=l1 budget.flops=0.75 depth_share=0.5" or its own name
    overrides: tuple[str, ...]


def _override(key: str, value) -> str:
    if key == "criterion":
        return f"+criterion={value}"
    return f"{key}={'null' if value is None else value}"


def variants(experiment) -> list[Variant]:
    """Every combination of `experiment.grid`, then `experiment.variants`, in a stable order."""
    grid = to_plain(experiment.grid) or {}
    found = []
    if grid:
        keys = list(grid)
        for combo in itertools.product(*([v] if not isinstance(v, list) else v for v in grid.values())):
            pairs = list(zip(keys, combo, strict=True))
            found.append(Variant(" ".join(f"{k}={v}" for k, v in pairs), tuple(_override(k, v) for k, v in pairs)))
    for extra in to_plain(experiment.variants) or []:
        if not isinstance(extra, dict) or "name" not in extra:
            raise UserError(f"experiment.variants: {extra} needs a name and a list of overrides")
        found.append(Variant(str(extra["name"]), tuple(extra.get("overrides") or ())))
    names = [v.name for v in found]
    if len(set(names)) != len(names):
        raise UserError(f"experiment {experiment.name}: two variants share a name ({names})")
    return found


def expected_trials(cfg) -> int:
    """How many trials the finished experiment has: its variants, plus its study's n_trials."""
    return len(variants(cfg.experiment)) + (int(cfg.search.n_trials) if cfg.experiment.search else 0)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name.replace(" ", "__"))


def check_inputs(cfg) -> None:
    """The data and weights an experiment reads, named with the way to get them, before any work starts."""
    hint = ("the CPU experiments read ../shared/data (set HYBRIDSWEEP_SHARED_DATA to its folder elsewhere), or "
            "choose fidelity=gpu, which downloads CIFAR-100 and the reference weights")
    for setting, value in (("model.weights", cfg.model.weights), ("data.root", cfg.data.root)):
        if value not in (None, "reference") and not Path(value).expanduser().exists():
            raise UserError(f"experiment {cfg.experiment.name}: {setting}={value} is missing; {hint}")


def read_results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def write_results(rows: list[dict], path: Path) -> Path:
    first = ["variant", "run_id"]
    columns = first + sorted({k for row in rows for k in row} - set(first))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: (r.get("variant", ""), r.get("run_id", ""))))
    return path


def _row(run) -> dict:
    tags = run.data.tags
    variant = tags.get(VARIANT_TAG) or f"trial {tags.get('optuna.trial', '?')}"
    row = {"variant": variant, "run_id": run.info.run_id}
    row |= {f"param.{k}": v for k, v in run.data.params.items()}
    row |= {k: v for k, v in run.data.metrics.items()}
    row |= {f"tag.{k}": tags[k] for k in TAG_COLUMNS if k in tags}
    return row


class ExperimentRunner:
    def __init__(self, cfg: DictConfig, command_line: list[str]):
        from hybridsweep.search.objective import trial_base_overrides

        self.cfg = cfg
        self.exp = cfg.experiment
        self.store = Path(str(self.exp.store)).expanduser()
        self.results = Path(str(self.exp.results))
        self.uri = str(cfg.tracking.uri)
        self.base = trial_base_overrides(command_line)
        self.command_line = command_line

    def tracker(self):
        from hybridsweep.tracking import Tracker

        return Tracker(self.uri, str(self.exp.name), self.store / "artifacts")

    # --- 1. the trials ----------------------------------------------------------------------------------------

    def run_missing(self) -> int:
        from hybridsweep.config import validate
        from hybridsweep.search.objective import compose_trial_config
        from hybridsweep.trial import run_trial
        from hybridsweep.workbench import workbench

        tracker = self.tracker()
        stale = tracker.close_stale_runs(VARIANT_TAG)
        if stale:
            print(f"experiment {self.exp.name}: {stale} run(s) left RUNNING by a killed run marked KILLED; rerunning")
        done = {r.data.tags.get(VARIANT_TAG) for r in tracker.finished_trial_runs()}
        done |= {row.get("variant") for row in read_results(self.results / RESULTS_FILE)}
        todo = [v for v in variants(self.exp) if v.name not in done]
        total = len(variants(self.exp))
        print(f"experiment {self.exp.name}: {total - len(todo)} of {total} variants finished; running {len(todo)}. "
              f"Store: {self.store}")
        spent: list[float] = []
        for index, variant in enumerate(todo, start=1):
            out = self.store / "trials" / _slug(variant.name)
            cfg = compose_trial_config([*self.base, *variant.overrides, f"paths.output_dir={out}"])
            validate(cfg)
            start = time.perf_counter()
            result = run_trial(cfg, workbench(cfg), out, run_name=variant.name, run_tags={VARIANT_TAG: variant.name})
            spent.append(time.perf_counter() - start)
            m = result.metrics
            latency = next((f"{v:.2f} ms" for k, v in m.items()
                            if k.endswith("/median_ms") and k.startswith("latency/")), "no latency")
            eta = (len(todo) - index) * sum(spent) / len(spent)
            print(f"experiment {self.exp.name}: {index}/{len(todo)} {variant.name} · "
                  f"top-1 {m['finetuned/top1']:.2f}% · "
                  f"{latency} · {spent[-1]:.0f} s · about {eta / 60:.0f} min left", flush=True)
        return len(todo)

    def run_search(self) -> None:
        from hybridsweep.search import run_search

        run_search(self.cfg, overrides=self.command_line)

    # --- 2. the final latency pass, 3. results.csv ------------------------------------------------------------

    def remeasure_and_collect(self) -> Path:
        from hybridsweep.final_latency import load_run_models, try_measure_final
        from hybridsweep.train import resolve_device
        from hybridsweep.workbench import workbench

        tracker = self.tracker()
        runs = tracker.finished_trial_runs()
        if runs:
            bench = workbench(self.cfg)
            ds = bench.dataset(self.cfg)
            base = bench.baseline(self.cfg, ds, resolve_device(self.cfg.device))
            models = load_run_models(tracker, {r.info.run_id: f"run {r.info.run_id}" for r in runs}, self.cfg.model,
                                     len(ds.classes))
            print(f"experiment {self.exp.name}: re-measuring {len(models)} models and the baseline, interleaved")
            final = try_measure_final(models, base.model, to_plain(self.cfg.latency), ds.input_shape)
            if final is not None:
                for run_id in models:
                    tracker.update_run(run_id, final.metrics(run_id), final.tags(run_id))
                runs = tracker.finished_trial_runs()
        rows = [_row(run) for run in runs]
        in_store = {row["run_id"] for row in rows}
        kept = [row for row in read_results(self.results / RESULTS_FILE) if row.get("run_id") not in in_store]
        if kept:
            print(f"experiment {self.exp.name}: keeping {len(kept)} committed rows whose runs are not in this store")
        return write_results(rows + kept, self.results / RESULTS_FILE)


def run_experiment(cfg: DictConfig, command_line: list[str]) -> Path:
    from hybridsweep.experiments.report import write_report

    if not cfg.get("experiment") or cfg.experiment.get("name") in (None, "???"):
        raise UserError("task=experiment needs an experiment: add +experiment=NAME (make experiment NAME=...)")
    from hybridsweep.cache import file_lock

    check_inputs(cfg)
    runner = ExperimentRunner(cfg, command_line)
    runner.store.mkdir(parents=True, exist_ok=True)
    waiting = f"experiment {cfg.experiment.name}: another run holds {runner.store}; waiting for it to finish"
    with file_lock(runner.store / "runner.lock", waiting):  # one runner per store: a second waits, skips what is done
        if cfg.experiment.run_missing:
            runner.run_missing()
            if cfg.experiment.search:
                runner.run_search()
        csv_path = runner.remeasure_and_collect()
    files = write_report(cfg.experiment.report, csv_path, expected_trials(cfg))
    print(f"experiment {cfg.experiment.name}: {csv_path}" + "".join(f"\n  {f}" for f in files))
    return csv_path
