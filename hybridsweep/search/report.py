"""Pareto fronts as files: a table (CSV), an interactive plotly page (HTML) and a picture (PNG).

`write_front` writes a study's front (the search loop calls it as trials finish); `report` draws several studies
in one plot (`task=report`). Which trials are on a front is `front.py`'s; how it is drawn, `plots.py`'s. The HTML
loads plotly.js from a `plotly.min.js` beside it (written once per folder) instead of inlining 4.6 MB per file.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path

import optuna
from optuna.study import StudyDirection

from hybridsweep.search.front import baseline_row, front_rows, objective_names
from hybridsweep.search.plots import plotly_figure, png_figure

FRONT_FILES = ("front.html", "front.png", "front.csv")


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
    png_figure(rows, names, directions, title, png, baselines)
    write_csv([*baselines, *rows], table)
    return [html, png, table]


def study_title(study: optuna.Study, rows: Sequence[dict]) -> str:
    fronts = sum(r["pareto"] for r in rows)
    return f"{study.study_name}: {len(rows)} complete trials, {fronts} on the Pareto front"


def load_studies(study_names: Iterable[str] | None, storage, setting: str = "search.studies") -> list[optuna.Study]:
    """Studies to draw in one plot; `storage` is a URL/path (as `search.storage`) or a storage object;
    `study_names` None means every study in it. Their objectives must match. `setting` names the option the
    names came from, for the error."""
    from hybridsweep.errors import UserError
    from hybridsweep.redaction import redact
    from hybridsweep.search.storage import open_existing

    store = open_existing(storage) if isinstance(storage, str | Path) else storage
    available = optuna.get_all_study_names(store)
    shown = f"search.storage={redact(str(storage))}"
    if not available:
        raise UserError(f"{shown} holds no study; point it at a search's storage")
    names = list(study_names) if study_names is not None else available
    missing = [n for n in names if n not in available]
    if not names or missing:
        what = f"{setting}={','.join(missing)}: no such study" if missing else f"set {setting}=NAME"
        raise UserError(f"{what}; {shown} holds: {', '.join(available)}")
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
    from hybridsweep.search.objective import study_config
    from hybridsweep.search.remeasure import remeasure
    from hybridsweep.tracking import Tracker

    search = cfg.get("search") or {}
    storage = search.get("storage") or "sqlite:///optuna.db"
    names = search.get("studies") or None
    if isinstance(names, str):
        names = [names]
    studies = load_studies(names, str(storage))
    out_dir = output_dir(cfg)
    study_cfg = study_config(studies[0], cfg)
    remeasure(studies, study_cfg)
    paths = report(studies, out_dir / "report")
    run_id = Tracker.from_config(study_cfg.tracking).log_report([s.study_name for s in studies], paths)
    print("report: " + "  ".join(str(p) for p in paths) + (f"\n  MLflow run {run_id}" if run_id else ""))
    return paths


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
