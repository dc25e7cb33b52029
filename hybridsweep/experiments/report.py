"""An experiment's table and plots, rebuilt from its results.csv alone (no store, no torch: seconds).

The table goes into the experiment's README.md between `<!-- results:begin -->` and `<!-- results:end -->`
(and the headline table into the top README between `<!-- headline:begin -->` and `<!-- headline:end -->`),
so every number a reader sees is generated from the committed CSV, never typed by hand. `kinds.py` makes
each kind's table and plots.
"""

from __future__ import annotations

import re
from pathlib import Path

from hybridsweep.errors import UserError
from hybridsweep.experiments.kinds import REPORTS

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
HEADLINE_BEGIN, HEADLINE_END = "<!-- headline:begin -->", "<!-- headline:end -->"


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
    from hybridsweep.experiments.runner import RESULTS_FILE, expected_trials

    files = write_report(cfg.experiment.report, Path(str(cfg.experiment.results)) / RESULTS_FILE,
                         expected_trials(cfg))
    print("experiment report: " + "  ".join(str(f) for f in files))
    return files
