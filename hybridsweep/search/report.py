"""Pareto fronts as files: a table (CSV), an interactive plotly page (HTML) and a picture (PNG).

A study's front is computed per budget group (a list of budgets gives one front per budget) from its complete,
feasible trials (every `trial.set_constraint` value <= 0), one trial per architecture. Once the final latency
pass has run (`remeasure.py`), the front is drawn from its re-measured figures, and the unpruned baseline
(measured in the same pass) is drawn as the reference point. `report` draws several studies in one plot
(`task=report`); `hypervolume` scores a front for the search-efficiency benchmark.

The PNG is drawn with matplotlib: plotly's kaleido needs a Chrome download, which fails offline. The HTML loads
plotly.js from a `plotly.min.js` beside it (written once per folder) instead of inlining 4.6 MB per file.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

FRONT_FILES = ("front.html", "front.png", "front.csv")
PLOTLY_JS = "plotly.min.js"
_PLAN_KEYS = ("budget", "depth_share", "order", "criterion", "finetune_lr")
FINAL_ATTR = "final_latency"  # study user attr: {trial number: re-measured latency (ms)}
BASELINE_ATTR = "baseline"  # study user attr: the unpruned model's top1, params, flops, latency_ms


def objective_names(study: optuna.Study) -> list[str]:
    return list(study.metric_names or [f"objective{i}" for i in range(len(study.directions))])


def is_feasible(trial: FrozenTrial) -> bool:
    return all(v <= 0 for v in trial.constraints.values())


def losses(values: Sequence[float], directions: Sequence[StudyDirection]) -> tuple[float, ...]:
    return tuple(-v if d == StudyDirection.MAXIMIZE else v for v, d in zip(values, directions, strict=True))


def non_dominated(points: Sequence[Sequence[float]]) -> list[bool]:
    """For loss vectors (lower is better): True where no other point dominates."""
    flags = []
    for i, p in enumerate(points):
        dominated = any(
            all(a <= b for a, b in zip(q, p, strict=True)) and any(a < b for a, b in zip(q, p, strict=True))
            for j, q in enumerate(points)
            if j != i
        )
        flags.append(not dominated)
    return flags


def front_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per complete trial, with `pareto` set for the trials on their budget group's front. After the
    final latency pass, the front is taken among the re-measured trials with their final figures; trials of an
    architecture that another trial of the study already reached with a better first objective never join it."""
    names = objective_names(study)
    final = {int(k): v for k, v in (study.user_attrs.get(FINAL_ATTR) or {}).items()}
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best_of_arch: dict[str, FrozenTrial] = {}
    for t in trials:
        arch = t.user_attrs.get("arch")
        if arch and (arch not in best_of_arch or losses(t.values, study.directions)[0]
                     < losses(best_of_arch[arch].values, study.directions)[0]):
            best_of_arch[arch] = t

    def values(t: FrozenTrial) -> list[float]:
        out = list(t.values)
        if final and len(out) > 1:
            out[1] = final[t.number]  # the latency objective comes second
        return out

    groups: dict[str, list[FrozenTrial]] = {}
    for t in trials:
        distinct = best_of_arch.get(t.user_attrs.get("arch"), t) is t
        if distinct and is_feasible(t) and (not final or t.number in final):
            groups.setdefault(str(t.user_attrs.get("budget_group", "all")), []).append(t)
    on_front: set[int] = set()
    for members in groups.values():
        flags = non_dominated([losses(values(t), study.directions) for t in members])
        on_front |= {t.number for t, flag in zip(members, flags, strict=True) if flag}
    rows = []
    for t in trials:
        plan = t.user_attrs.get("plan", {})
        row: dict[str, Any] = {
            "study": study.study_name,
            "trial": t.number,
            "budget_group": str(t.user_attrs.get("budget_group", "all")),
            "pareto": t.number in on_front,
            "feasible": is_feasible(t),
        }
        row |= dict(zip(names, t.values, strict=True))
        row["final_latency_ms"] = final.get(t.number)
        row |= {key: plan.get(key, t.params.get(key)) for key in _PLAN_KEYS}
        row |= {
            "flops_ratio": t.user_attrs.get("flops_ratio"),
            "blocks_removed": t.user_attrs.get("blocks_removed"),
            "channel_ratio": t.user_attrs.get("channel_ratio"),
            "arch": t.user_attrs.get("arch"),
            "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
        }
        rows.append(row)
    rows.sort(key=lambda r: (r["study"], r["budget_group"], [r[n] for n in names]))
    return rows


def baseline_row(study: optuna.Study) -> dict[str, Any] | None:
    """The unpruned model as a row of the front's table (after the final pass), or None before it."""
    base = study.user_attrs.get(BASELINE_ATTR)
    if not base:
        return None
    names = objective_names(study)
    known = {"finetuned/top1": base["top1"], "params": base["params"], "flops": base["flops"]}
    row: dict[str, Any] = {"study": study.study_name, "trial": "baseline (unpruned)", "budget_group": "1",
                           "pareto": False, "feasible": True}
    row |= {n: (base["latency_ms"] if n.startswith("latency/") else known.get(n)) for n in names}
    row |= {"final_latency_ms": base["latency_ms"], "flops_ratio": 1.0, "blocks_removed": 0, "channel_ratio": 0.0}
    return row


def _axes(names: Sequence[str], directions: Sequence[StudyDirection]) -> tuple[str, str | None]:
    """y: the first objective (accuracy by default), x: the second (latency), if any."""
    return names[0], (names[1] if len(names) > 1 else None)


def _label(name: str, direction: StudyDirection | None) -> str:
    if name.startswith("latency/"):
        backend = name.split("/")[1]
        text = f"latency on {backend}, batch 1, ms (final pass where re-measured)"
    else:
        names = {"finetuned/top1": "top-1 after fine-tuning, %", "params": "parameters", "flops": "FLOPs"}
        text = names.get(name, name)
    if direction is None:
        return text
    return f"{text} ({'higher' if direction == StudyDirection.MAXIMIZE else 'lower'} is better)"


def _x_value(x_name: str | None):
    """Where a row is drawn on x: its final re-measured latency when it has one."""
    if x_name is None:
        return lambda r: r["trial"]
    if x_name.startswith("latency/"):
        return lambda r: r["final_latency_ms"] if r.get("final_latency_ms") is not None else r[x_name]
    return lambda r: r[x_name]


def _series(rows: Sequence[dict], names: Sequence[str]) -> dict[tuple[str, str], list[dict]]:
    series: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        series.setdefault((row["study"], row["budget_group"]), []).append(row)
    return series


def _series_name(study: str, group: str, several_studies: bool) -> str:
    budget = "" if group == "all" else f"budget {group}"
    if several_studies:
        return f"{study} {budget}".strip()
    return budget or study


def _hover(row: dict, names: Sequence[str]) -> str:
    parts = [f"{row['study']} trial {row['trial']}"]
    parts += [f"{n}: {row[n]:.4g}" for n in names]
    parts += [f"{k}: {row[k]:.4g}" if isinstance(row[k], float) else f"{k}: {row[k]}" for k in _PLAN_KEYS
              if row.get(k) is not None]
    if row.get("flops_ratio") is not None:
        parts.append(f"FLOPs kept: {row['flops_ratio']:.3f}")
    if not row["feasible"]:
        parts.append("infeasible (over the FLOP budget)")
    return "<br>".join(parts)


def plotly_figure(rows: Sequence[dict], names: Sequence[str], directions: Sequence[StudyDirection], title: str,
                  baselines: Sequence[dict] = ()):
    import plotly.graph_objects as go

    y_name, x_name = _axes(names, directions)
    fig = go.Figure()
    series = _series(rows, names)
    several = len({study for study, _ in series}) > 1
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]
    for i, ((study, group), members) in enumerate(sorted(series.items())):
        color = palette[i % len(palette)]
        label = _series_name(study, group, several)
        x_of = _x_value(x_name)
        others = [r for r in members if not r["pareto"]]
        front = sorted((r for r in members if r["pareto"]), key=x_of)
        fig.add_trace(go.Scatter(
            x=[x_of(r) for r in others], y=[r[y_name] for r in others], mode="markers", name=f"{label}: other trials",
            legendgroup=label, marker={"color": color, "opacity": 0.35, "size": 8,
                                       "symbol": ["circle-open" if r["feasible"] else "x" for r in others]},
            text=[_hover(r, names) for r in others], hoverinfo="text",
        ))
        fig.add_trace(go.Scatter(
            x=[x_of(r) for r in front], y=[r[y_name] for r in front], mode="lines+markers",
            name=f"{label}: Pareto front", legendgroup=label, line={"color": color, "shape": "hv"},
            marker={"color": color, "size": 10}, text=[_hover(r, names) for r in front], hoverinfo="text",
        ))
    for base in _distinct_baselines(baselines, x_name):
        fig.add_trace(go.Scatter(
            x=[_x_value(x_name)(base)], y=[base[y_name]], mode="markers", name="unpruned baseline",
            marker={"color": "black", "size": 16, "symbol": "star"}, hoverinfo="text",
            text=[f"unpruned baseline<br>{y_name}: {base[y_name]:.4g}<br>latency: {base['final_latency_ms']:.4g} ms"],
        ))
    direction = dict(zip(names, directions, strict=True))
    fig.update_layout(
        title=title, template="plotly_white", hovermode="closest",
        xaxis_title=_label(x_name, direction[x_name]) if x_name else "trial",
        yaxis_title=_label(y_name, direction[y_name]),
    )
    return fig


def _distinct_baselines(baselines: Sequence[dict], x_name: str | None) -> list[dict]:
    """One star per distinct baseline figure (studies re-measured in one pass share theirs)."""
    seen, out = set(), []
    for base in baselines:
        key = (base.get("final_latency_ms"), base.get("finetuned/top1"))
        if x_name is not None and key not in seen:
            seen.add(key)
            out.append(base)
    return out


def _png(rows: Sequence[dict], names: Sequence[str], directions: Sequence[StudyDirection], title: str,
         path: Path, baselines: Sequence[dict] = ()) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    y_name, x_name = _axes(names, directions)
    fig = Figure(figsize=(8, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    series = _series(rows, names)
    several = len({study for study, _ in series}) > 1
    for i, ((study, group), members) in enumerate(sorted(series.items())):
        color = f"C{i % 10}"
        label = _series_name(study, group, several)
        x_of = _x_value(x_name)
        others = [r for r in members if not r["pareto"]]
        front = sorted((r for r in members if r["pareto"]), key=x_of)
        feasible = [r for r in others if r["feasible"]]
        infeasible = [r for r in others if not r["feasible"]]
        ax.scatter([x_of(r) for r in feasible], [r[y_name] for r in feasible], facecolors="none",
                   edgecolors=color, alpha=0.5)
        ax.scatter([x_of(r) for r in infeasible], [r[y_name] for r in infeasible], marker="x", color=color,
                   alpha=0.5)
        ax.step([x_of(r) for r in front], [r[y_name] for r in front], where="post", color=color, marker="o",
                label=f"{label} (front: {len(front)} of {len(members)})")
    for base in _distinct_baselines(baselines, x_name):
        ax.scatter([_x_value(x_name)(base)], [base[y_name]], marker="*", s=220, color="black", zorder=5,
                   label=f"unpruned baseline ({base[y_name]:.4g}, {base['final_latency_ms']:.3g} ms)")
    direction = dict(zip(names, directions, strict=True))
    ax.set_xlabel(_label(x_name, direction[x_name]) if x_name else "trial")
    ax.set_ylabel(_label(y_name, direction[y_name]))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if rows:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def write_csv(rows: Sequence[dict], path: Path) -> Path:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns or ["study", "trial"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_front(rows: Sequence[dict], names: Sequence[str], directions: Sequence[StudyDirection], out_dir: Path,
                title: str, baselines: Sequence[dict] = ()) -> list[Path]:
    """front.html (interactive, offline: plotly.min.js beside it), front.png, front.csv (baseline rows first)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    html, png, table = (out_dir / name for name in FRONT_FILES)
    # "directory" writes plotly.min.js once per folder and points the page at it
    plotly_figure(rows, names, directions, title, baselines).write_html(html, include_plotlyjs="directory",
                                                                        full_html=True)
    _png(rows, names, directions, title, png, baselines)
    write_csv([*baselines, *rows], table)
    return [html, png, table]


def study_title(study: optuna.Study, rows: Sequence[dict]) -> str:
    fronts = sum(r["pareto"] for r in rows)
    return f"{study.study_name}: {len(rows)} complete trials, {fronts} on the Pareto front"


def write_study_front(study: optuna.Study, out_dir: Path) -> list[Path]:
    rows = front_rows(study)
    base = baseline_row(study)
    return write_front(rows, objective_names(study), study.directions, out_dir, study_title(study, rows),
                       [base] if base else [])


def load_studies(study_names: Iterable[str] | None, storage) -> list[optuna.Study]:
    """Studies to draw in one plot; `storage` is a URL/path (as `search.storage`) or a storage object;
    `study_names` None means every study in it. Their objectives must match."""
    from hybridsweep.errors import UserError
    from hybridsweep.search.storage import open_storage

    store = open_storage(storage) if isinstance(storage, str | Path) else storage
    available = optuna.get_all_study_names(store)
    names = list(study_names) if study_names else available
    if not names:
        raise UserError(f"search.storage={storage}: there is no study to report")
    missing = [n for n in names if n not in available]
    if missing:
        raise UserError(
            f"search.studies: no study {', '.join(missing)} in {storage}; it holds: {', '.join(available) or 'none'}"
        )
    studies = [optuna.load_study(study_name=n, storage=store) for n in names]
    first = studies[0]
    for s in studies[1:]:
        if objective_names(s) != objective_names(first) or s.directions != first.directions:
            raise UserError(
                f"search.studies: {s.study_name} has objectives {objective_names(s)}, {first.study_name} has "
                f"{objective_names(first)}; only studies with the same objectives share one plot"
            )
    return studies


def report(studies: Sequence[optuna.Study], out_dir: str | Path) -> list[Path]:
    """Draw several studies' Pareto fronts (and their baselines) in one plot."""
    rows = [row for s in studies for row in front_rows(s)]
    baselines = [b for b in (baseline_row(s) for s in studies) if b]
    title = f"Pareto fronts: {', '.join(s.study_name for s in studies)}"
    first = studies[0]
    return write_front(rows, objective_names(first), first.directions, Path(out_dir), title, baselines)


def report_from_config(cfg) -> list[Path]:
    """`task=report`: search.studies (default: every study) in search.storage (default sqlite:///optuna.db).
    Their front candidates and the baseline are re-measured together first (the baseline and latency settings
    come from the first study's own command line), then the overlaid fronts are written to the run's output
    folder and logged as an MLflow run of their own, tagged with the studies it compares."""
    from hybridsweep.config import output_dir
    from hybridsweep.redaction import HIDDEN
    from hybridsweep.search.objective import compose_trial_config
    from hybridsweep.search.remeasure import remeasure
    from hybridsweep.tracking import Tracker

    search = cfg.get("search") or {}
    storage = search.get("storage") or "sqlite:///optuna.db"
    names = search.get("studies") or None
    if isinstance(names, str):
        names = [names]
    studies = load_studies(names, str(storage))
    out_dir = output_dir(cfg)
    first_command = studies[0].user_attrs.get("base_overrides")
    study_cfg = compose_trial_config(first_command) if first_command else cfg
    if HIDDEN in str(study_cfg.tracking.uri):  # stored with its password hidden: the report's own setting has it
        study_cfg.tracking.uri = cfg.tracking.uri
    remeasure(studies, study_cfg)
    paths = report(studies, out_dir / "report")
    run_id = Tracker.from_config(study_cfg.tracking).log_report([s.study_name for s in studies], paths)
    print("report: " + "  ".join(str(p) for p in paths) + (f"\n  MLflow run {run_id}" if run_id else ""))
    return paths


def hypervolume(rows: Sequence[dict], names: Sequence[str], directions: Sequence[StudyDirection],
                reference: Sequence[float]) -> float:
    """Hypervolume of the feasible rows' objective values against `reference` (in objective units; for a
    maximised objective the reference is its lower bound)."""
    import numpy as np
    from optuna._hypervolume import compute_hypervolume

    ref = np.asarray(losses(reference, directions), dtype=float)
    points = [losses([r[n] for n in names], directions) for r in rows if r["feasible"]]
    points = [p for p in points if all(a < b for a, b in zip(p, ref, strict=True)) and all(map(math.isfinite, p))]
    if not points:
        return 0.0
    return float(compute_hypervolume(np.asarray(points, dtype=float), ref))


# --- the front as text, for the end of a search -----------------------------------------------------------------


def front_table(rows: list[dict], objectives: list[str], baseline: dict | None = None) -> str:
    """The Pareto trials as a plain text table, best top-1 first, under the unpruned baseline when measured."""
    columns = ["trial", "budget_group", *objectives, "final_latency_ms", "flops_ratio", "blocks_removed",
               "channel_ratio", "order"]
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: -r.get(objectives[0], 0))
    front = ([baseline] if baseline else []) + front

    def cell(value) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    table = [columns] + [[cell(r.get(c)) for c in columns] for r in front]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(line, widths, strict=True)) for line in table]
    return "Pareto front:\n" + "\n".join(lines)
