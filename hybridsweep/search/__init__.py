"""The Optuna search over pruning plans: `run_search(cfg)` (task=search) and `report(...)` (task=report).

study.py: storage, sampler, resume, the loop and its progress lines; objective.py: search space, one trial, early
stop, MLflow links; front.py: which trials are on the Pareto front, and its hypervolume; plots.py: the fronts
drawn (plotly, matplotlib); report.py: the fronts as HTML/PNG/CSV files; remeasure.py: the final latency pass
over the front's candidates and the baseline.
"""

from hybridsweep.search.report import load_studies, report, report_from_config
from hybridsweep.search.study import run_search

__all__ = ["load_studies", "report", "report_from_config", "run_search"]
