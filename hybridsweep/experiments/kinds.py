"""One report per kind of experiment (`experiment.report`): its table rows and its plots, from results.csv rows.

Latency is the final interleaved re-measure (`latency/<backend>/final_ms`) where the row has one, else the trial's
own figure; the column header says which backend, and the table's note says how it was measured.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from hybridsweep.experiments.rows import (
    SPLITS,
    backend,
    baseline_latency_ms,
    cell,
    fidelity_note,
    latency_ms,
    markdown_table,
    number,
    reference_row,
    relative_latency,
    stage_counts,
)

MARKERS = {"width-only": "s", "hybrid": "o", "depth-only": "^"}
SCORE_NORMS = {"none": "raw mean (paper)", "stage": "stage-normalised"}


def depth_vs_width_rows(rows: Sequence[dict]) -> tuple[list[str], list[list]]:
    name = backend(rows)
    ref = reference_row(rows)
    ref_top1 = number(ref, "finetuned/top1") if ref else None
    base_ms = baseline_latency_ms(rows, name)
    header = ["criterion", "FLOP budget", "split", "blocks removed", "width ratio", "top-1 %", "vs reference (pts)",
              "params (k)", "FLOPs kept %", f"latency ms ({name})", "latency reduction %"]
    lines = []
    if ref:
        lines.append(["unpruned", "1.00", "reference (fine-tuned alike)", 0, 0.0, ref_top1, 0.0,
                      number(ref, "params") / 1e3, 100.0, latency_ms(ref, name),
                      100 * (1 - latency_ms(ref, name) / base_ms) if base_ms and latency_ms(ref, name) else None])
    pruned = [r for r in rows if r is not ref]
    pruned.sort(key=lambda r: (r.get("param.criterion", ""), -(number(r, "param.budget_flops") or 0),
                               number(r, "param.depth_share") or 0))
    for r in pruned:
        top1, lat = number(r, "finetuned/top1"), latency_ms(r, name)
        lines.append([
            r.get("param.criterion"), cell(number(r, "param.budget_flops")),
            SPLITS.get(number(r, "param.depth_share"), f"depth_share {r.get('param.depth_share')}"),
            int(number(r, "param.blocks_removed") or 0), number(r, "param.channel_ratio"), top1,
            top1 - ref_top1 if ref_top1 is not None and top1 is not None else None,
            number(r, "params") / 1e3, 100 - (number(r, "flops_reduction_pct") or 0), lat,
            100 * (1 - lat / base_ms) if base_ms and lat else None,
        ])
    return header, lines


def _figure(width: float = 8, height: float = 5.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


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
        split = SPLITS.get(number(r, "param.depth_share"))
        splits.add(split)
        ax.scatter(x_of(r), number(r, "finetuned/top1"), color=colours[r.get("param.criterion", "")],
                   marker=MARKERS.get(split, "o"), s=70, edgecolors="black", linewidths=0.5)
        if number(r, "param.budget_flops") is not None:
            ax.annotate(f"{number(r, 'param.budget_flops'):.2g}", (x_of(r), number(r, "finetuned/top1")),
                        textcoords="offset points", xytext=(6, -3), fontsize=7, color="dimgray")
    for c in criteria:
        ax.scatter([], [], color=colours[c], label=c)
    for split, marker in MARKERS.items():
        if split in splits:
            ax.scatter([], [], color="lightgray", edgecolors="black", marker=marker, label=split)
    for draw in extra:
        draw(ax)
    ref = reference_row(rows)
    if ref and x_of(ref) is not None:
        ax.scatter([x_of(ref)], [number(ref, "finetuned/top1")], marker="*", s=220, color="black",
                   label="unpruned, fine-tuned alike (reference)", zorder=5)
        ax.axhline(number(ref, "finetuned/top1"), color="black", lw=0.8, ls="--", alpha=0.6)
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
            number(r, "pruned/top1"), number(r, "finetuned/top1"), number(r, "params") / 1e3,
            100 - (number(r, "flops_reduction_pct") or 0), latency_ms(r, name),
        ])
    fig = _figure(9, 4)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    width = 0.8 / max(len(ordered), 1)
    for i, r in enumerate(ordered):
        counts = stage_counts(r.get("param.removed_blocks"))
        label = lines[i][0]
        left.bar([s + i * width for s in range(3)], counts, width=width, label=label)
        right.bar([i - 0.2, i + 0.2], [number(r, "pruned/top1") or 0, number(r, "finetuned/top1") or 0], width=0.4,
                  color=["lightgray", f"C{i}"])
        right.text(i + 0.2, (number(r, "finetuned/top1") or 0) + 1, cell(number(r, "finetuned/top1"), 1), ha="center",
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
              number(r, "params") / 1e3, 100 - (number(r, "flops_reduction_pct") or 0), number(r, "pruned/top1"),
              number(r, "finetuned/top1"), latency_ms(r, name)] for r in ordered]
    criteria = sorted({r.get("param.criterion", "") for r in rows})
    series = {order: [next((number(r, "finetuned/top1") for r in rows if r.get("param.criterion") == c
                            and r.get("param.order") == order), 0) or 0 for c in criteria]
              for order in ("layer_first", "channel_first")}
    bar_chart(criteria, series, "top-1 after fine-tuning, %", "pruning order at the same ratios",
              folder / "order.png", digits=1)
    return markdown_table(header, lines) + "\n\n" + fidelity_note(rows), [folder / "order.png"]


def report_finetune_start(rows: list[dict], folder: Path) -> tuple[str, list[Path]]:
    starts = {"true": "adaptive-BN statistics", "false": "the old network's statistics"}
    header = ["plan", "fine-tune starts from", "top-1 pruned %", "top-1 adaptive BN %", "top-1 fine-tuned %"]
    ordered = sorted(rows, key=lambda r: (number(r, "param.depth_share") or 0,
                                          r.get("param.finetune_from_adaptive_bn", "").lower() != "true"))
    lines = [[SPLITS.get(number(r, "param.depth_share"), r.get("param.depth_share")),
              starts.get(r.get("param.finetune_from_adaptive_bn", "").lower(), "?"),
              number(r, "pruned/top1"), number(r, "adaptive_bn/top1"), number(r, "finetuned/top1")] for r in ordered]
    plans = list(dict.fromkeys(line[0] for line in lines))
    series = {f"from {label}": [next((number(r, "finetuned/top1") for r in rows
                                      if SPLITS.get(number(r, "param.depth_share")) == plan
                                      and r.get("param.finetune_from_adaptive_bn", "").lower() == key), 0) or 0
                                for plan in plans] for key, label in starts.items()}
    bar_chart(plans, series, "top-1 after one fine-tune epoch, %",
              "where fine-tuning starts: L1, 50% of the FLOPs kept", folder / "finetune_start.png", digits=2)
    return markdown_table(header, lines) + "\n\n" + fidelity_note(rows), [folder / "finetune_start.png"]


def front_flags(rows: Sequence[dict], name: str) -> list[bool]:
    """Non-dominated rows (max top-1, min latency), one per architecture."""
    from hybridsweep.search.front import non_dominated

    points = [(-(number(r, "finetuned/top1") or 0), latency_ms(r, name) or float("inf")) for r in rows]
    return non_dominated(points)


def report_pareto_search(rows: list[dict], folder: Path) -> tuple[str, list[Path]]:
    from hybridsweep.experiments.runner import RESULTS_FILE, read_results

    name = backend(rows)
    flags = front_flags(rows, name)
    front = sorted((r for r, f in zip(rows, flags, strict=True) if f), key=lambda r: latency_ms(r, name) or 0)
    base_ms = baseline_latency_ms(rows, name)
    header = ["trial", "criterion", "order", "depth share", "FLOP budget", "blocks removed", "width ratio",
              "top-1 %", f"latency ms ({name})", "speedup"]
    lines = [[r.get("variant"), r.get("param.criterion"), r.get("param.order"), number(r, "param.depth_share"),
              number(r, "param.budget_flops"), int(number(r, "param.blocks_removed") or 0),
              number(r, "param.channel_ratio"),
              number(r, "finetuned/top1"), latency_ms(r, name),
              base_ms / latency_ms(r, name) if base_ms and latency_ms(r, name) else None] for r in front]
    grid = read_results(folder.parent / "depth_vs_width" / RESULTS_FILE)

    x_of = relative_latency(rows, name)

    def draw_front(ax) -> None:
        ax.step([x_of(r) for r in front], [number(r, "finetuned/top1") for r in front], where="post",
                color="black", lw=1.2, label=f"NSGA-II front ({len(front)} of {len(rows)} trials)")
        grid_x = relative_latency(grid, name)
        points = [r for r in grid if r.get("variant") != "reference" and grid_x(r) is not None]
        if points:
            ax.scatter([grid_x(r) for r in points], [number(r, "finetuned/top1") for r in points], marker="x",
                       color="gray", label="depth_vs_width grid (its own pass)")

    plot = plot_accuracy_latency(rows, "NSGA-II over criterion x order x depth share x FLOP budget 0.4-0.9",
                                 folder / "front.png", extra=[draw_front], relative=True)

    trials = [r for r in rows if r.get("variant") != "reference"]
    criteria = sorted({r.get("param.criterion", "") for r in trials})  # the colours plot_accuracy_latency gives

    def draw_criterion_fronts(ax) -> None:
        for i, criterion in enumerate(criteria):
            own = [r for r in trials if r.get("param.criterion") == criterion]
            best = sorted((r for r, f in zip(own, front_flags(own, name), strict=True) if f), key=x_of)
            ax.step([x_of(r) for r in best], [number(r, "finetuned/top1") for r in best], where="post",
                    color=f"C{i}", lw=1.2, label=f"{criterion}'s own front ({len(best)} of {len(own)})")

    by_criterion = plot_accuracy_latency(rows, "the same trials, one front per criterion",
                                         folder / "fronts_by_criterion.png", extra=[draw_criterion_fronts],
                                         relative=True)
    text = (markdown_table(header, lines) + f"\n\n{len(front)} of {len(rows)} trials are on the front. "
            + fidelity_note(rows))
    return text, [plot, by_criterion]


REPORTS: dict[str, Callable[[list[dict], Path], tuple[str, list[Path]]]] = {
    "depth_vs_width": report_depth_vs_width,
    "block_scores": report_block_scores,
    "order": report_order,
    "pareto_search": report_pareto_search,
    "finetune_start": report_finetune_start,
}
