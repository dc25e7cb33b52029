"""After each trial of a search: one progress line, the front published (files, parent run, pareto tags, the
Model Registry), and the guard that stops a search whose trials only fail."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from hybridsweep.errors import first_line
from hybridsweep.search.objective import stop
from hybridsweep.search.report import baseline_row, front_rows, objective_names, study_title, write_front
from hybridsweep.search.screen import SCREENED_OUT, counted
from hybridsweep.search.workers import fail_dead_trials
from hybridsweep.tracking import Tracker

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
BUSY_LOAD_PER_CORE = 1.5  # a load average above this per core during a measurement: other work is running


class AfterTrial:
    """`after(study, frozen_trial)`: a callback of Optuna's loop, called by the screened loop too; it keeps the
    failures in a row (`failures`) for the search to report, and says when this run is `finished`."""

    def __init__(self, tracker: Tracker, out_dir: Path, max_failures: int, n_trials: int, register: bool = True,
                 lock: Callable[[], AbstractContextManager] = nullcontext):
        self.tracker, self.out_dir, self.max_failures, self.n_trials = tracker, out_dir, max_failures, n_trials
        self.register = register  # search.register: the front's models into the Model Registry
        self.lock = lock  # the study's lock: two workers finishing together would both retry a dead worker's trial
        self.failures: list[FrozenTrial] = []
        self.failed_here = 0  # every failure of this run, in a row or not
        self.surplus = False  # a trial found the study's total reached (other workers fill it): this run is done
        self.durations: list[float] = []
        self.warned_busy = False

    def publish(self, study: optuna.Study) -> list[Path]:
        try:
            rows = front_rows(study)
            base = baseline_row(study)
            files = write_front(rows, objective_names(study), study.directions, self.out_dir,
                                study_title(study, rows), [base] if base else [])
            self.tracker.mark_pareto(rows)
            self.tracker.log_front(files, len(rows), sum(r["pareto"] for r in rows), len(study.trials))
        except Exception as exc:  # a plot must never cost the study
            print(f"warning: could not publish the Pareto front: {first_line(exc)}", file=sys.stderr)
            return []
        if self.register:
            try:
                self.tracker.register_front(rows, study.study_name)
            except Exception as exc:  # nor the registry
                print(f"warning: could not register the Pareto front's models: {first_line(exc)}", file=sys.stderr)
        return files

    def progress(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """`trial 3/24 · depth_share 0.55 · 4 blocks, width 0.06 · top-1 86.5% (−0.2) · 6.3 ms (−21%) · on front`"""
        done = sum(counted(t) for t in study.get_trials(deepcopy=False))
        parts = [f"trial {trial.number} ({done}/{self.n_trials} finished)"]
        if SCREENED_OUT in trial.user_attrs:
            print(f"trial {trial.number} screened out · {trial.user_attrs[SCREENED_OUT]}", flush=True)
            return
        if trial.state != TrialState.COMPLETE:
            reason = trial.user_attrs.get("error") or trial.state.name.lower()
            print(" · ".join([*parts, f"{trial.state.name}: {str(reason)[:160]}"]), flush=True)
            return
        a, plan = trial.user_attrs, trial.user_attrs.get("plan", {})
        if "depth_share" in plan:
            parts.append(f"depth_share {plan['depth_share']:.2f}")
        parts.append(f"{a.get('blocks_removed', '?')} blocks, width {a.get('channel_ratio', 0):.3f}")
        names = objective_names(study)
        for name, value in zip(names, trial.values, strict=True):
            if name == "finetuned/top1":
                drop = value - a["baseline/top1"] if "baseline/top1" in a else None
                parts.append(f"top-1 {value:.2f}%" + (f" ({drop:+.2f})" if drop is not None else ""))
            elif name.startswith("latency/"):
                gain = a.get("latency_reduction_pct")
                parts.append(f"{value:.2f} ms" + (f" ({-gain:+.0f}%)" if gain is not None else ""))
            else:
                parts.append(f"{name} {value:.4g}")
        on_front = any(r["trial"] == trial.number and r["pareto"] for r in front_rows(study))
        parts.append("on front" if on_front else "off front")
        if trial.duration is not None:
            self.durations.append(trial.duration.total_seconds())
            left = max(self.n_trials - done, 0) * sum(self.durations) / len(self.durations)
            parts.append(f"{self.durations[-1]:.0f} s" + (f", about {left / 60:.0f} min left" if left else ""))
        print(" · ".join(parts), flush=True)
        load = a.get("load_avg")
        cores = os.cpu_count() or 1
        # the search's own fine-tuning keeps about `cores` threads busy: only more than that is other work
        if not self.warned_busy and load not in (None, "unknown") and float(load) > BUSY_LOAD_PER_CORE * cores:
            self.warned_busy = True
            print(f"warning: the machine is busy (load average {float(load):.1f} on {cores} cores): per-trial "
                  "latencies read its load; the front is drawn from one interleaved re-measure at the end",
                  file=sys.stderr)

    def finished(self, study: optuna.Study) -> bool:
        """The study's total is reached, counting what was fine-tuned (a screened-out plan or a twin ran nothing)
        or filled by trials other workers are running (a surplus trial), or the failure guard tripped. A failed
        trial (a plan that could not be built or fine-tuned) is replaced while the guard is on; with the guard off
        (`max_consecutive_failures=0`) this run's failures count toward the total instead, so a run that only
        fails still ends."""
        if self.surplus or (self.max_failures and len(self.failures) >= self.max_failures):
            return True
        spent = sum(counted(t) for t in study.get_trials(deepcopy=False))
        return spent + (0 if self.max_failures else self.failed_here) >= self.n_trials

    def record(self, trial: FrozenTrial) -> None:
        self.surplus |= bool(trial.user_attrs.get("surplus"))
        if trial.state == TrialState.FAIL and not trial.user_attrs.get("surplus"):
            self.failures.append(trial)
            self.failed_here += 1
        elif trial.state in FINISHED and SCREENED_OUT not in trial.user_attrs:  # a screened-out plan ran nothing
            self.failures.clear()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.record(trial)
        if self.finished(study):
            stop(study)
        try:
            with self.lock():
                fail_dead_trials(study, self.tracker)  # a killed fellow worker's trial must not hold its place
        except Exception as exc:  # bookkeeping must never cost the study
            print(f"warning: could not check other workers' trials: {first_line(exc)}", file=sys.stderr)
        if not trial.user_attrs.get("surplus"):
            self.progress(study, trial)
        if SCREENED_OUT not in trial.user_attrs:  # the front only changes with a fine-tuned trial
            self.publish(study)
