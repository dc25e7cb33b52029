"""The Pareto fronts drawn twice from the same rows and series: an interactive plotly figure and a matplotlib one.

One series per study and budget group: its front as a step line, its other trials as faint markers (a cross when
infeasible), the unpruned baseline as a star. The PNG is drawn with matplotlib: plotly's kaleido needs a Chrome
download, which fails offline.

Not Optuna's `plot_pareto_front`: it computes one front over all of a study's trials from their own values,
where ours is one front per budget group, one trial per architecture, on the final re-measured latency, with
the baseline drawn; and a report overlays several studies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from optuna.study import StudyDirection

from hybridsweep.search.front import CONSTRAINT_LABELS, PLAN_KEYS


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


def _axis_titles(names: Sequence[str], directions: Sequence[StudyDirection]) -> tuple[str, str]:
    y_name, x_name = _axes(names, directions)
    direction = dict(zip(names, directions, strict=True))
    return _label(x_name, direction[x_name]) if x_name else "trial", _label(y_name, direction[y_name])


@dataclass(frozen=True)
class Series:
    """One study's budget group as both drawings show it: its front in x order, and its other trials."""

    label: str
    front: list[dict]
    others: list[dict]


def front_series(rows: Sequence[dict], x_of: Callable[[dict], float]) -> list[Series]:
    """One series per study and budget group, in that order; a label names the study only beside others."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["study"], row["budget_group"]), []).append(row)
    several = len({study for study, _ in groups}) > 1
    return [
        Series(
            label=_series_name(study, group, several),
            front=sorted((r for r in members if r["pareto"]), key=x_of),
            others=[r for r in members if not r["pareto"]],
        )
        for (study, group), members in sorted(groups.items())
    ]


def _series_name(study: str, group: str, several_studies: bool) -> str:
    budget = "" if group == "all" else f"budget {group}"
    if several_studies:
        return f"{study} {budget}".strip()
    return budget or study


def _hover(row: dict, names: Sequence[str]) -> str:
    parts = [f"{row['study']} trial {row['trial']}"]
    parts += [f"{n}: {row[n]:.4g}" for n in names]
    parts += [f"{k}: {row[k]:.4g}" if isinstance(row[k], float) else f"{k}: {row[k]}" for k in PLAN_KEYS
              if row.get(k) is not None]
    if row.get("flops_ratio") is not None:
        parts.append(f"FLOPs kept: {row['flops_ratio']:.3f}")
    if not row["feasible"]:
        parts.append(f"infeasible ({infeasible_reason(row)})")
    return "<br>".join(parts)


def infeasible_reason(row: dict) -> str:
    """Which constraints an infeasible row breaks, in words; rows without constraint names (older studies) had
    only the FLOP budget."""
    names = (row.get("violates") or "flops_budget").split()
    return "breaks the " + ", ".join(CONSTRAINT_LABELS.get(n, n) for n in names)


def plotly_figure(rows: Sequence[dict], names: Sequence[str], directions: Sequence[StudyDirection], title: str,
                  baselines: Sequence[dict] = ()):
    import plotly.graph_objects as go

    y_name, x_name = _axes(names, directions)
    x_of = _x_value(x_name)
    fig = go.Figure()
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]
    for i, series in enumerate(front_series(rows, x_of)):
        color, label, front, others = palette[i % len(palette)], series.label, series.front, series.others
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
            x=[x_of(base)], y=[base[y_name]], mode="markers", name="unpruned baseline",
            marker={"color": "black", "size": 16, "symbol": "star"}, hoverinfo="text",
            text=[f"unpruned baseline<br>{y_name}: {base[y_name]:.4g}<br>latency: {base['final_latency_ms']:.4g} ms"],
        ))
    x_title, y_title = _axis_titles(names, directions)
    fig.update_layout(title=title, template="plotly_white", hovermode="closest", xaxis_title=x_title,
                      yaxis_title=y_title)
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


def png_figure(rows: Sequence[dict], names: Sequence[str], directions: Sequence[StudyDirection], title: str,
               path: Path, baselines: Sequence[dict] = ()) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    y_name, x_name = _axes(names, directions)
    x_of = _x_value(x_name)
    fig = Figure(figsize=(8, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, series in enumerate(front_series(rows, x_of)):
        color, front = f"C{i % 10}", series.front
        feasible = [r for r in series.others if r["feasible"]]
        infeasible = [r for r in series.others if not r["feasible"]]
        ax.scatter([x_of(r) for r in feasible], [r[y_name] for r in feasible], facecolors="none",
                   edgecolors=color, alpha=0.5)
        ax.scatter([x_of(r) for r in infeasible], [r[y_name] for r in infeasible], marker="x", color=color,
                   alpha=0.5)
        ax.step([x_of(r) for r in front], [r[y_name] for r in front], where="post", color=color, marker="o",
                label=f"{series.label} (front: {len(front)} of {len(front) + len(series.others)})")
    for base in _distinct_baselines(baselines, x_name):
        ax.scatter([x_of(base)], [base[y_name]], marker="*", s=220, color="black", zorder=5,
                   label=f"unpruned baseline ({base[y_name]:.4g}, {base['final_latency_ms']:.3g} ms)")
    x_title, y_title = _axis_titles(names, directions)
    ax.set_xlabel(x_title)
    ax.set_ylabel(y_title)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if rows:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
