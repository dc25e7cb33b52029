"""Experiments: the paper's questions run as resumable sets of trials, with their results committed.

runner.py: task=experiment (run what is missing, re-measure latency in one pass, write results.csv);
report.py: the table and plots of an experiment, rebuilt from results.csv alone (kinds.py: one report per kind of
experiment; rows.py: reading the rows).
"""

from hybridsweep.experiments.report import report_from_csv
from hybridsweep.experiments.runner import run_experiment

__all__ = ["report_from_csv", "run_experiment"]
