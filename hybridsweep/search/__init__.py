"""The Optuna search over pruning plans: `run_search(cfg)` (task=search) and `report(...)` (task=report).

study.py: open, optimise and summarise a study; settings.py: the `search.*` schema and its range checks;
space.py: the search space; objective.py: one trial and the early-stop rule; screen.py: screening plans before
fine-tuning; progress.py: after each trial (progress line, front, failure guard); storage.py: where a study lives
and its set-up lock; workers.py: telling a dead worker's trial from a live one; front.py: which trials are on the
Pareto front, and its hypervolume; plots.py: the fronts drawn (plotly, matplotlib); report.py: the fronts as
HTML/PNG/CSV files and text; remeasure.py: the final latency pass over the front's candidates and the baseline.
"""

from hybridsweep.search.report import load_studies, report, report_from_config
from hybridsweep.search.study import run_search

__all__ = ["load_studies", "report", "report_from_config", "run_search"]
