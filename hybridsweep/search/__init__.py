"""The Optuna search over pruning plans: `run_search(cfg)` (task=search) and `report(...)` (task=report).

study.py: storage, sampler, resume, the loop; objective.py: search space, one trial, early stop, MLflow links;
report.py: Pareto fronts as HTML/PNG/CSV and hypervolume.
"""

from hybridsweep.search.report import report, report_from_config
from hybridsweep.search.study import run_search

__all__ = ["report", "report_from_config", "run_search"]
