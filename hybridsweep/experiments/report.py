"""An experiment's table and plots, rebuilt from its results.csv alone (no store, no torch: seconds).

The table goes into the experiment's README.md between `<!-- results:begin -->` and `<!-- results:end -->`
(and the headline table into the top README between `<!-- headline:begin -->` and `<!-- headline:end -->`),
so every number a reader sees is generated from the committed CSV, never typed by hand. Latency is the final
interleaved re-measure (`latency/<backend>/final_ms`) where the row has one, else the trial's own figure; the
column header says which backend, and the table's note says how it was measured.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

from hybridsweep.errors import UserError

RESULTS_FILE = "results.csv"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
HEADLINE_BEGIN, HEADLINE_END = "<!-- headline:begin -->", "<!-- headline:end -->"
SPLITS = {0.0: "width-only", 0.5: "hybrid", 1.0: "depth-only"}
MARKERS = {"width-only": "s", "hybrid": "o", "depth-only": "^"}
SCORE_NORMS = {"none": "raw mean (paper)", "stage": "stage-normalised"}


# --- reading rows ----------------------------------------------------------------------------------------------


def _f(row: dict, key: str) -> float | None:
    value = row.get(key)
    if value in (None, "", "null", "None"):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def backend(rows: Sequence[dict]) -> str:
    for row in rows:
        if row.get("param.latency_backend"):
            return row["param.latency_backend"]
    return "cpu"


def latency_ms(row: dict, name: str) -> float | None:
    """The final interleaved figure where there is one, else the trial's own."""
    final = _f(row, f"latency/{name}/final_ms")
    return final if final is not None else _f(row, f"latency/{name}/median_ms")


def baseline_latency_ms(rows: Sequence[dict], name: str) -> float | None:
    values = [_f(r, f"baseline/latency/{name}/final_ms") for r in rows]
    values = [v for v in values if v is not None]
    if values:
        return min(values)  # every row of one pass holds the same figure; a later pass (if any) is as good
    values = [v for v in (_f(r, f"baseline/latency/{name}/median_ms") for r in rows) if v is not None]
    return min(values) if values else None


def stage_counts(removed: str | None, stages: int = 3) -> list[int]:
    names = [] if removed in (None, "", "none") else removed.split(",")
    return [sum(1 for n in names if n.startswith(f"layer{s + 1}.")) for s in range(stages)]


def _cell(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(header: Sequence[str], lines: Sequence[Sequence]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_cell(v) for v in line) + " |" for line in lines]
    return "\n".join(out)


def fidelity_note(rows: Sequence[dict]) -> str:
    """One line: what the numbers were measured at, from the rows themselves."""
    if not rows:
        return ""
    r = rows[0]
    epochs = r.get("param.finetune_epochs", "?")
    steps = r.get("param.finetune_max_steps")
    steps = "" if steps in (None, "", "null", "None") else f", at most {steps} steps"
    test = _f(r, "param.test_subset")
    test_text = "all test images" if test is None else f"{int(test)} test images"
    name = backend(rows)
    finals = [row.get("tag.latency.final.load_avg") for row in rows if row.get("tag.latency.final.load_avg")]
    load = f", load average {finals[0]} during the final pass" if finals else ""
    statistic = next((row.get("tag.latency.final.statistic") for row in rows
                      if row.get("tag.latency.final.statistic")), None)
    how = (f"re-measured for all rows and the baseline in one interleaved pass ({statistic}{load})"
           if statistic else "each trial's own measurement")
    device = r.get("tag.latency.device", "?")
    return (f"{r.get('param.model', '?')} on {r.get('param.data', '?')} ({test_text}), {epochs} fine-tune epoch(s)"
            f"{steps} per trial, seed {r.get('param.seed', '?')}; latency: {name} backend, batch 1, on {device}, "
            f"{how}.")


# --- the kinds -----------------------------------------------------------------------------------------------


def _reference(rows: Sequence[dict]) -> dict | None:
    return next((r for r in rows if r.get("variant") == "reference"), None)


def depth_vs_width_rows(rows: Sequence[dict]) -> tuple[list[str], list[list]]:
    name = backend(rows)
    ref = _reference(rows)
    ref_top1 = _f(ref, "finetuned/top1") if ref else None
    base_ms = baseline_latency_ms(rows, name)
    header = ["criterion", "FLOP budget", "split", "blocks removed", "width ratio", "top-1 %", "vs reference (pts)",
              "params (k)", "FLOPs kept %", f"latency ms ({name})", "latency reduction %"]
    lines = []
    if ref:
        lines.append(["unpruned", "1.00", "reference (fine-tuned alike)", 0, 0.0, ref_top1, 0.0,
                      _f(ref, "params") / 1e3, 100.0, latency_ms(ref, name),
                      100 * (1 - latency_ms(ref, name) / base_ms) if base_ms and latency_ms(ref, name) else None])
    pruned = [r for r in rows if r is not ref]
    pruned.sort(key=lambda r: (r.get("param.criterion", ""), -(_f(r, "param.budget_flops") or 0),
                               _f(r, "param.depth_share") or 0))
    for r in pruned:
        top1, lat = _f(r, "finetuned/top1"), latency_ms(r, name)
        lines.append([
            r.get("param.criterion"), _cell(_f(r, "param.budget_flops")),
            SPLITS.get(_f(r, "param.depth_share"), f"depth_share {r.get('param.depth_share')}"),
            int(_f(r, "param.blocks_removed") or 0), _f(r, "param.channel_ratio"), top1,
            top1 - ref_top1 if ref_top1 is not None and top1 is not None else None,
            _f(r, "params") / 1e3, 100 - (_f(r, "flops_reduction_pct") or 0), lat,
            100 * (1 - lat / base_ms) if base_ms and lat else None,
        ])
    return header, lines


def _figure(width: float = 8, height: float = 5.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def relative_latency(rows: Sequence[dict], name: str) -> Callable[[dict], float | None]:
    """Latency as % of the unpruned model's, measured in the same pass: comparable across passes taken at
    different loads, where milliseconds are not."""
    base = baseline_latency_ms(rows, name)
    return lambda r: 100 * latency_ms(r, name) / base if base and latency_ms(r, name) else None


def plot_accuracy_latency(rows: Sequence[dict], title: str, path: Path, extra: Sequence[Callable] = (),
                          relative: bool = False) -> Path:
    """Top-1 against latency: colour per criterion, marker per depth/width split, the reference drawn.
    `relative` puts latency as % of the unpruned model's (for points from several passes in one plot)."""
    name = backend(rows)
    x_of = relative_latency(rows, name) if relative else (lambda r: latency_ms(r, name))
    fig = _figure()
    ax = fig.add_subplot()
    criteria = sorted({r.get("param.criterion", "") for r in rows if r.get("variant") != "reference"})
    colours = {c: f"C{i}" for i, c in enumerate(criteria)}
    splits = set()
    for r in rows:
        if r.get("variant") == "reference" or x_of(r) is None:
            continue
        split = SPLITS.get(_f(r, "param.depth_share"))
        splits.add(split)
        ax.scatter(x_of(r), _f(r, "finetuned/top1"), color=colours[r.get("param.criterion", "")],
                   marker=MARKERS.get(split, "o"), s=70, edgecolors="black", linewidths=0.5)
        if _f(r, "param.budget_flops") is not None:
            ax.annotate(f"{_f(r, 'param.budget_flops'):.2g}", (x_of(r), _f(r, "finetuned/top1")),
                        textcoords="offset points", xytext=(6, -3), fontsize=7, color="dimgray")
    for c in criteria:
        ax.scatter([], [], color=colours[c], label=c)
    for split, marker in MARKERS.items():
        if split in splits:
            ax.scatter([], [], color="lightgray", edgecolors="black", marker=marker, label=split)
    for draw in extra:
        draw(ax)
    ref = _reference(rows)
    if ref and x_of(ref) is not None:
        ax.scatter([x_of(ref)], [_f(ref, "finetuned/top1")], marker="*", s=220, color="black",
                   label="unpruned, fine-tuned alike (reference)", zorder=5)
        ax.axhline(_f(ref, "finetuned/top1"), color="black", lw=0.8, ls="--", alpha=0.6)
    if relative:
        ax.axvline(100, color="black", lw=0.8, ls=":", label="unpruned model's latency (100%)")
        ax.set_xlabel(f"latency, % of the unpruned model's in the same pass (batch 1, {name}) — lower is better")
    else:
        base_ms = baseline_latency_ms(rows, name)
        if base_ms:
            ax.axvline(base_ms, color="black", lw=0.8, ls=":", label=f"unpruned model: {base_ms:.2f} ms")
        ax.set_xlabel(f"latency, batch 1 ({name} backend), ms — lower is better")
    ax.set_ylabel("top-1 after fine-tuning, % — higher is better")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    return path


def report_depth_vs_width(rows: list[dict], folder: Path) -> tuple[str, list[Path]]:
    header, lines = depth_vs_width_rows(rows)
    table = markdown_table(header, lines) + "\n\n" + fidelity_note(rows)
    plot = plot_accuracy_latency(rows, "depth vs width at equal FLOPs (CIFAR-10 JPEG, ResNet-56)",
                                 folder / "accuracy_vs_latency.png")
    return table, [plot]


def report_block_scores(rows: list[dict], folder: Path) -> tuple[str, list[Path]]:
    name = backend(rows)
    header = ["block score", "blocks removed (stage 1 / 2 / 3)", "removed blocks", "top-1 pruned %",
              "top-1 fine-tuned %", "params (k)", "FLOPs kept %", f"latency ms ({name})"]
    lines = []
    ordered = sorted(rows, key=lambda r: r.get("param.score_norm", ""))
    for r in ordered:
        counts = stage_counts(r.get("param.removed_blocks"))
        lines.append([
            SCORE_NORMS.get(r.get("param.score_norm"), r.get("param.score_norm")),
            " / ".join(map(str, counts)), r.get("param.removed_blocks", "").replace(",", ", "),
            _f(r, "pruned/top1"), _f(r, "finetuned/top1"), _f(r, "params") / 1e3,
            100 - (_f(r, "flops_reduction_pct") or 0), latency_ms(r, name),
        ])
    fig = _figure(9, 4)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    width = 0.8 / max(len(ordered), 1)
    for i, r in enumerate(ordered):
        counts = stage_counts(r.get("param.removed_blocks"))
        label = lines[i][0]
        left.bar([s + i * width for s in range(3)], counts, width=width, label=label)
        right.bar([i - 0.2, i + 0.2], [_f(r, "pruned/top1") or 0, _f(r, "finetuned/top1") or 0], width=0.4,
                  color=["lightgray", f"C{i}"])
        right.text(i + 0.2, (_f(r, "finetuned/top1") or 0) + 1, _cell(_f(r, "finetuned/top1"), 1), ha="center",
                   fontsize=8)
    left.set_xticks([s + width * (len(ordered) - 1) / 2 for s in range(3)], ["stage 1", "stage 2", "stage 3"])
    left.set_ylabel("blocks removed")
    left.legend(fontsize=8)
    left.set_title("which stage loses its blocks", fontsize=10)
    right.set_xticks(range(len(ordered)), [line[0] for line in lines], fontsize=8)
    right.set_ylabel("top-1 % (grey: pruned, colour: fine-tuned)")
    right.set_title("accuracy", fontsize=10)
    fig.tight_layout()
    fig.savefig(folder / "blocks_per_stage.png")
    return markdown_table(header, lines) + "\n\n" + fidelity_note(rows), [folder / "blocks_per_stage.png"]


def bar_chart(groups: Sequence[str], series: dict[str, list[float]], ylabel: str, title: str, path: Path,
              digits: int) -> None:
    """Side-by-side bars, one per series in each group, each labelled with its value."""
    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    width = 0.76 / len(series)
    for j, (label, values) in enumerate(series.items()):
        offsets = [i + (j - (len(series) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(offsets, values, width=width, label=label)
        for x, v in zip(offsets, values, strict=True):
            ax.text(x, v + 0.3, f"{v:.{digits}f}", ha="center", fontsize=8)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    low = min((v for values in series.values() for v in values if v), default=0)
    ax.set_ylim(max(0, low - 8), 100)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)


def report_order(rows: list[dict], folder: Path) -> tuple[str, list[Path]]:
    name = backend(rows)
    header = ["criterion", "order", "blocks removed (stage 1 / 2 / 3)", "params (k)", "FLOPs kept %",
              "top-1 pruned %", "top-1 fine-tuned %", f"latency ms ({name})"]
    ordered = sorted(rows, key=lambda r: (r.get("param.criterion", ""), r.get("param.order", "")))
    lines = [[r.get("param.criterion"), r.get("param.order"),
              " / ".join(map(str, stage_counts(r.get("param.removed_blocks")))),
              _f(r, "params") / 1e3, 100 - (_f(r, "flops_reduction_pct") or 0), _f(r, "pruned/top1"),
              _f(r, "finetuned/top1"), latency_ms(r, name)] for r in ordered]
    criteria = sorted({r.get("param.criterion", "") for r in rows})
    series = {order: [next((_f(r, "finetuned/top1") for r in rows if r.get("param.criterion") == c
                            and r.get("param.order") == order), 0) or 0 for c in criteria]
              for order in ("layer_first", "channel_first")}
    bar_chart(criteria, series, "top-1 after fine-tuning, %", "pruning order at the same ratios",
              folder / "order.png", digits=1)
    return markdown_table(header, lines) + "\n\n" + fidelity_note(rows), [folder / "order.png"]


def report_finetune_start(rows: list[dict], folder: Path) -> tuple[str, list[Path]]:
    starts = {"true": "adaptive-BN statistics", "false": "the old network's statistics"}
    header = ["plan", "fine-tune starts from", "top-1 pruned %", "top-1 adaptive BN %", "top-1 fine-tuned %"]
    ordered = sorted(rows, key=lambda r: (_f(r, "param.depth_share") or 0,
                                          r.get("param.finetune_from_adaptive_bn", "").lower() != "true"))
    lines = [[SPLITS.get(_f(r, "param.depth_share"), r.get("param.depth_share")),
              starts.get(r.get("param.finetune_from_adaptive_bn", "").lower(), "?"),
              _f(r, "pruned/top1"), _f(r, "adaptive_bn/top1"), _f(r, "finetuned/top1")] for r in ordered]
    plans = list(dict.fromkeys(line[0] for line in lines))
    series = {f"from {label}": [next((_f(r, "finetuned/top1") for r in rows
                                      if SPLITS.get(_f(r, "param.depth_share")) == plan
                                      and r.get("param.finetune_from_adaptive_bn", "").lower() == key), 0) or 0
                                for plan in plans] for key, label in starts.items()}
    bar_chart(plans, series, "top-1 after one fine-tune epoch, %",
              "where fine-tuning starts: L1, 50% of the FLOPs kept", folder / "finetune_start.png", digits=2)
    return markdown_table(header, lines) + "\n\n" + fidelity_note(rows), [folder / "finetune_start.png"]


def front_flags(rows: Sequence[dict], name: str) -> list[bool]:
    """Non-dominated rows (max top-1, min latency), one per architecture."""
    from hybridsweep.search.report import non_dominated

    points = [(-(_f(r, "finetuned/top1") or 0), latency_ms(r, name) or float("inf")) for r in rows]
    return non_dominated(points)


def report_pareto_search(rows: list[dict], folder: Path) -> tuple[str, list[Path]]:
    from hybridsweep.experiments.runner import read_results

    name = backend(rows)
    flags = front_flags(rows, name)
    front = sorted((r for r, f in zip(rows, flags, strict=True) if f), key=lambda r: latency_ms(r, name) or 0)
    base_ms = baseline_latency_ms(rows, name)
    header = ["trial", "criterion", "order", "depth share", "FLOP budget", "blocks removed", "width ratio",
              "top-1 %", f"latency ms ({name})", "speedup"]
    lines = [[r.get("variant"), r.get("param.criterion"), r.get("param.order"), _f(r, "param.depth_share"),
              _f(r, "param.budget_flops"), int(_f(r, "param.blocks_removed") or 0), _f(r, "param.channel_ratio"),
              _f(r, "finetuned/top1"), latency_ms(r, name),
              base_ms / latency_ms(r, name) if base_ms and latency_ms(r, name) else None] for r in front]
    grid = read_results(folder.parent / "depth_vs_width" / RESULTS_FILE)

    x_of = relative_latency(rows, name)

    def draw_front(ax) -> None:
        ax.step([x_of(r) for r in front], [_f(r, "finetuned/top1") for r in front], where="post",
                color="black", lw=1.2, label=f"NSGA-II front ({len(front)} of {len(rows)} trials)")
        grid_x = relative_latency(grid, name)
        points = [r for r in grid if r.get("variant") != "reference" and grid_x(r) is not None]
        if points:
            ax.scatter([grid_x(r) for r in points], [_f(r, "finetuned/top1") for r in points], marker="x",
                       color="gray", label="depth_vs_width grid (its own pass)")

    plot = plot_accuracy_latency(rows, "NSGA-II over criterion x order x depth share x FLOP budget 0.4-0.9",
                                 folder / "front.png", extra=[draw_front], relative=True)
    text = (markdown_table(header, lines) + f"\n\n{len(front)} of {len(rows)} trials are on the front. "
            + fidelity_note(rows))
    return text, [plot]


REPORTS: dict[str, Callable[[list[dict], Path], tuple[str, list[Path]]]] = {
    "depth_vs_width": report_depth_vs_width,
    "block_scores": report_block_scores,
    "order": report_order,
    "pareto_search": report_pareto_search,
    "finetune_start": report_finetune_start,
}


# --- writing ---------------------------------------------------------------------------------------------------


def replace_between(text: str, begin: str, end: str, body: str) -> str:
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    block = f"{begin}\n{body}\n{end}"
    if pattern.search(text):
        return pattern.sub(lambda _: block, text)
    return text.rstrip() + f"\n\n## Results\n\n{block}\n"


def write_report(kind: str | None, csv_path: Path, expected: int | None = None) -> list[Path]:
    """Table into README.md beside the CSV (and the headline into the top README), plots beside it. With
    `expected` trials and fewer rows, the table says it is partial and how to finish it."""
    from hybridsweep.experiments.runner import read_results

    if kind is None:
        return []
    if kind not in REPORTS:
        raise UserError(f"experiment.report={kind} is unknown; choose one of: {', '.join(REPORTS)}")
    rows = read_results(csv_path)
    if not rows:
        raise UserError(f"{csv_path}: no results yet; run the experiment first (make experiment NAME=...)")
    folder = csv_path.parent
    table, plots = REPORTS[kind](rows, folder)
    if expected and len(rows) < expected:
        table = (f"**Partial: {len(rows)} of {expected} trials have finished.** `make experiment NAME={folder.name}` "
                 f"runs the rest (it resumes) and rebuilds this table.\n\n{table}")
    readme = folder / "README.md"
    readme.write_text(replace_between(readme.read_text() if readme.exists() else f"# {kind}\n", BEGIN, END, table))
    top = folder.parent.parent / "README.md"
    if kind == "depth_vs_width" and folder.parent.name == "experiments" and top.is_file():
        text = top.read_text()
        if HEADLINE_BEGIN in text:
            top.write_text(replace_between(text, HEADLINE_BEGIN, HEADLINE_END, table))
    return [readme, *plots]


def report_from_csv(cfg) -> list[Path]:
    """`task=experiment_report`: rebuild the table and plots from the committed results.csv."""
    from hybridsweep.experiments.runner import expected_trials

    files = write_report(cfg.experiment.report, Path(str(cfg.experiment.results)) / RESULTS_FILE,
                         expected_trials(cfg))
    print("experiment report: " + "  ".join(str(f) for f in files))
    return files
