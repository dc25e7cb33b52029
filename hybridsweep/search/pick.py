"""Which trial of a finished study to deploy (`task=export pick=...`).

The candidates are the study's feasible Pareto trials of every budget group, thinned to the ones no other of
them dominates (a trial on the 0.75-budget front may be beaten outright by one on the 0.5 front), each with its
final re-measured latency when the final pass ran. Rules:
- `knee`: the best trade-off. With top-1 and the second objective (latency) scaled to [0, 1] over the
  candidates, the front's two ends sit at (1, 0) and (0, 1), so the point farthest beyond the chord between
  them is the one with the largest sum of the two scaled values; ties go to the higher top-1.
- `max_top1`: the most accurate; `fastest`: the lowest latency (the study needs a latency objective).
- `trial:N`: that trial, on the front or not, as long as it finished and logged a model.
`pick.max_latency_ms` first drops candidates slower than it, so `pick=max_top1 pick.max_latency_ms=3` is the most
accurate model that runs in 3 ms.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from hybridsweep.errors import UserError
from hybridsweep.search.front import front_rows, losses, non_dominated, objective_names

RULES = ("knee", "max_top1", "fastest")
TOP1 = "finetuned/top1"


def parse_rule(rule: str) -> str | int:
    """A rule name, or the trial number of `trial:N`."""
    if rule in RULES:
        return rule
    if match := re.fullmatch(r"trial:(\d+)", str(rule)):
        return int(match[1])
    raise UserError(f"pick={rule} is unknown; choose one of: {', '.join(RULES)}, trial:N (a trial number)")


@dataclass(frozen=True)
class Picked:
    row: dict[str, Any]  # the trial's front row (front.front_rows)
    why: str  # one line: the rule and what it compared


def latency_of(row: dict[str, Any], names: list[str]) -> float | None:
    """The trial's latency: the final pass's figure when there was one, else its own measurement."""
    if row.get("final_latency_ms") is not None:
        return float(row["final_latency_ms"])
    key = next((n for n in names if n.startswith("latency/")), None)
    return None if key is None or row.get(key) is None else float(row[key])


def candidates(study: optuna.Study) -> list[dict[str, Any]]:
    """The feasible front trials of every budget group that none of the others dominates."""
    names = objective_names(study)
    front = [r for r in front_rows(study) if r["pareto"] and r["feasible"]]

    def values(row: dict[str, Any]) -> list[float]:
        return [latency_of(row, names) if n.startswith("latency/") else row[n] for n in names]

    flags = non_dominated([losses(values(r), study.directions) for r in front])
    return [r for r, flag in zip(front, flags, strict=True) if flag]


def pick(study: optuna.Study, rule: str, max_latency_ms: float | None = None) -> Picked:
    """The trial `rule` chooses; UserError naming the study's state when none fits."""
    chosen = parse_rule(rule)
    if isinstance(chosen, int):
        if max_latency_ms is not None:
            raise UserError(f"pick=trial:{chosen} names one trial, and pick.max_latency_ms narrows the front: "
                            "give one of them")
        return _by_number(study, chosen)
    names = objective_names(study)
    has_latency = any(n.startswith("latency/") for n in names)
    if (chosen == "fastest" or max_latency_ms is not None) and not has_latency:
        setting = "pick=fastest" if chosen == "fastest" else "pick.max_latency_ms"
        raise UserError(f"{setting}: study {study.study_name} has no latency objective (its objectives: "
                        f"{', '.join(names)}); use pick=knee, pick=max_top1 or pick=trial:N")
    rows = candidates(study)
    if not rows:
        raise UserError(f"study {study.study_name} has no complete feasible trial to export "
                        f"({_states(study)}); pick=trial:N exports a trial off the front")
    if max_latency_ms is not None:
        fast = [r for r in rows if latency_of(r, names) <= max_latency_ms]
        if not fast:
            quickest = min(rows, key=lambda r: latency_of(r, names))
            raise UserError(f"pick.max_latency_ms={max_latency_ms:g}: no front trial of study {study.study_name} "
                            f"is that fast; the fastest is trial {quickest['trial']} at "
                            f"{latency_of(quickest, names):.3f} ms")
        rows = fast
    among = f"{len(rows)} front trial{'s' if len(rows) != 1 else ''}" + (
        f" at or under {max_latency_ms:g} ms" if max_latency_ms is not None else "")
    if chosen == "max_top1":
        row = max(rows, key=lambda r: (r[TOP1], -r["trial"]))
        return Picked(row, f"pick=max_top1: the highest top-1 of {among}")
    if chosen == "fastest":
        row = min(rows, key=lambda r: (latency_of(r, names), -r[TOP1], r["trial"]))
        return Picked(row, f"pick=fastest: the lowest latency of {among}")
    return Picked(knee(rows, names), f"pick=knee: the best top-1/{_second(names)} trade-off of {among}")


def knee(rows: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """The knee of a front (see the module docstring): the largest sum of top-1 and the second objective, each
    scaled to [0, 1] over `rows` with 1 the better end."""
    second = names[1] if len(names) > 1 else TOP1

    def cost(row: dict[str, Any]) -> float:
        return latency_of(row, names) if second.startswith("latency/") else float(row[second])

    top1 = [float(r[TOP1]) for r in rows]
    costs = [cost(r) for r in rows]

    def scaled(value: float, values: list[float]) -> float:
        low, high = min(values), max(values)
        return 0.0 if high == low else (value - low) / (high - low)

    def score(row: dict[str, Any]) -> tuple[float, float, int]:
        utility = scaled(float(row[TOP1]), top1) + 1.0 - scaled(cost(row), costs)
        return utility, float(row[TOP1]), -row["trial"]

    return max(rows, key=score)


def _by_number(study: optuna.Study, number: int) -> Picked:
    trials = study.get_trials(deepcopy=False)
    if not 0 <= number < len(trials):
        raise UserError(f"pick=trial:{number}: study {study.study_name} has no trial {number} (it has trials "
                        f"0 to {len(trials) - 1})" if trials else f"pick=trial:{number}: study {study.study_name} "
                        "has no trials")
    trial = trials[number]
    if trial.state != TrialState.COMPLETE:
        reason = trial.user_attrs.get("screened_out") or trial.user_attrs.get("error") or ""
        raise UserError(f"pick=trial:{number}: trial {number} of study {study.study_name} is {trial.state.name}, "
                        f"so it has no fine-tuned model to export" + (f" ({reason})" if reason else ""))
    row = next(r for r in front_rows(study) if r["trial"] == number)
    place = "on the front" if row["pareto"] else "off the front"
    return Picked(row, f"pick=trial:{number}: chosen by number ({place})")


def _second(names: list[str]) -> str:
    return "latency" if len(names) > 1 and names[1].startswith("latency/") else (names[1] if len(names) > 1 else "")


def _states(study: optuna.Study) -> str:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return ", ".join(f"{n} {state}" for state, n in counts.items()) or "no trials"
