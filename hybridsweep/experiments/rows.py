"""What a row of an experiment's results.csv says: its numbers (read leniently: a CSV cell may be empty or
"null"), the latency to show for it (the final interleaved re-measure where it has one), its reference row,
and how a table of rows is written and described.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

SPLITS = {0.0: "width-only", 0.5: "hybrid", 1.0: "depth-only"}


def number(row: dict, key: str) -> float | None:
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
    final = number(row, f"latency/{name}/final_ms")
    return final if final is not None else number(row, f"latency/{name}/median_ms")


def baseline_latency_ms(rows: Sequence[dict], name: str) -> float | None:
    values = [number(r, f"baseline/latency/{name}/final_ms") for r in rows]
    values = [v for v in values if v is not None]
    if values:
        return min(values)  # every row of one pass holds the same figure; a later pass (if any) is as good
    values = [v for v in (number(r, f"baseline/latency/{name}/median_ms") for r in rows) if v is not None]
    return min(values) if values else None


def stage_counts(removed: str | None, stages: int = 3) -> list[int]:
    names = [] if removed in (None, "", "none") else removed.split(",")
    return [sum(1 for n in names if n.startswith(f"layer{s + 1}.")) for s in range(stages)]


def cell(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(header: Sequence[str], lines: Sequence[Sequence]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell(v) for v in line) + " |" for line in lines]
    return "\n".join(out)


def fidelity_note(rows: Sequence[dict]) -> str:
    """One line: what the numbers were measured at, from the rows themselves."""
    if not rows:
        return ""
    r = rows[0]
    epochs = r.get("param.finetune_epochs", "?")
    steps = r.get("param.finetune_max_steps")
    steps = "" if steps in (None, "", "null", "None") else f", at most {steps} steps"
    test = number(r, "param.test_subset")
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


def reference_row(rows: Sequence[dict]) -> dict | None:
    return next((r for r in rows if r.get("variant") == "reference"), None)


def relative_latency(rows: Sequence[dict], name: str) -> Callable[[dict], float | None]:
    """Latency as % of the unpruned model's, measured in the same pass: comparable across passes taken at
    different loads, where milliseconds are not."""
    base = baseline_latency_ms(rows, name)
    return lambda r: 100 * latency_ms(r, name) / base if base and latency_ms(r, name) else None
