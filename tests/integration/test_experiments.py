"""Experiments: every config composes (CPU and GPU fidelity), a small real experiment runs, resumes and reports,
and the committed results hold what the README promises (numbers generated from the CSVs, never typed)."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from hybridsweep.config import validate
from hybridsweep.experiments.kinds import REPORTS
from hybridsweep.experiments.report import BEGIN, END, HEADLINE_BEGIN, HEADLINE_END, write_report
from hybridsweep.experiments.runner import RESULTS_FILE, check_inputs, expected_trials, read_results, variants
from tests.helpers import cheap_real_overrides, compose_config

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml") if not p.stem.startswith("base_"))
EXPECTED_TRIALS = {"depth_vs_width": 13, "block_scores": 2, "order": 4, "pareto_search": 0, "finetune_start": 2}


def test_the_experiments_exist():
    assert EXPERIMENTS == ["block_scores", "depth_vs_width", "finetune_start", "order", "pareto_search"]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_cpu_config_composes_with_its_variants(name, shared_data, monkeypatch):
    monkeypatch.setenv("HYBRIDSWEEP_SHARED_DATA", str(shared_data))
    cfg = compose_config(f"+experiment={name}")
    validate(cfg)
    check_inputs(cfg)
    assert cfg.task == "experiment" and cfg.experiment.report in REPORTS
    fidelity = (cfg.model.name, cfg.data.name, cfg.finetune.epochs, cfg.data.test_subset)
    assert fidelity == ("resnet56", "imagefolder", 1, None)
    assert cfg.latency.backend == "cpu" and cfg.latency.batch_size == 1
    assert str(cfg.experiment.results) == f"experiments/{name}"
    assert len(variants(cfg.experiment)) == EXPECTED_TRIALS[name]
    if name == "pareto_search":
        assert cfg.experiment.search and cfg.search.n_trials >= 24 and list(cfg.search.budget_range) == [0.4, 0.9]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_gpu_config_composes_and_its_first_trial_is_the_papers_setting(name):
    from hybridsweep.experiments.runner import ExperimentRunner
    from hybridsweep.search.objective import compose_trial_config

    command = [f"+experiment={name}", "fidelity=gpu"]
    cfg = compose_config(*command)
    validate(cfg)
    check_inputs(cfg)  # nothing local to miss: CIFAR-100 and the reference weights are downloaded
    setting = (cfg.data.name, cfg.model.weights, cfg.device, cfg.latency.backend)
    assert setting == ("cifar100", "reference", "cuda", "cuda")
    assert cfg.finetune.epochs >= 20 and str(cfg.experiment.results).endswith("/gpu-cifar100")
    runner = ExperimentRunner(cfg, command)
    first = variants(cfg.experiment)[0].overrides if not cfg.experiment.search else ("+criterion=l1",)
    trial = compose_trial_config([*runner.base, *first])
    validate(trial)
    assert trial.task == "prune" and trial.data.name == "cifar100" and trial.device == "cuda"


@pytest.mark.slow
def test_a_small_experiment_runs_resumes_and_reports(shared_data, test_cache, tmp_path):
    """Two real trials (ResNet-20, a few fine-tune steps) through `python -m hybridsweep +experiment=order`."""
    results = tmp_path / "experiments" / "order"
    args = [
        "+experiment=order", "experiment.grid.criterion=[l1]", f"experiment.results={results}",
        *cheap_real_overrides(shared_data, test_cache, train=256, test=100, steps=2),
    ]
    env = {"HYBRIDSWEEP_EXPERIMENTS": str(tmp_path / "store"), "PATH": "/usr/bin:/bin",
           "HYBRIDSWEEP_SHARED_DATA": str(shared_data), "HOME": str(tmp_path)}

    def run():
        out = subprocess.run([sys.executable, "-m", "hybridsweep", *args], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=900)
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout

    first = run()
    assert "0 of 2 variants finished; running 2" in first
    rows = read_results(results / RESULTS_FILE)
    assert sorted(r["variant"] for r in rows) == [
        "criterion=l1 order=channel_first channel_ratio=0.2 layer_ratio=0.3",
        "criterion=l1 order=layer_first channel_ratio=0.2 layer_ratio=0.3",
    ]
    for row in rows:  # every trial: its params, metrics, latency source and the final interleaved figure
        assert row["run_id"] and row["param.criterion"] == "l1" and float(row["finetuned/top1"]) > 0
        assert row["tag.latency.source"] == "measured" and float(row["latency/cpu/final_ms"]) > 0
        assert float(row["baseline/latency/cpu/final_ms"]) > 0 and row["tag.latency.final.statistic"]
    readme = (results / "README.md").read_text()
    assert BEGIN in readme and END in readme and "layer_first" in readme
    assert (results / "order.png").read_bytes()[:4] == b"\x89PNG"

    again = run()  # resumable: nothing left to run, the report is rebuilt
    assert "2 of 2 variants finished; running 0" in again
    assert {r["run_id"] for r in read_results(results / RESULTS_FILE)} == {r["run_id"] for r in rows}


def test_missing_data_names_the_file_and_how_to_get_it(tmp_path, monkeypatch):
    from hybridsweep.errors import UserError

    monkeypatch.setenv("HYBRIDSWEEP_SHARED_DATA", str(tmp_path / "nowhere"))
    cfg = compose_config("+experiment=depth_vs_width")
    with pytest.raises(UserError, match=r"model\.weights=.*nowhere.* is missing; .*HYBRIDSWEEP_SHARED_DATA"):
        check_inputs(cfg)


def test_unknown_experiment_lists_them():
    out = subprocess.run([sys.executable, "-m", "hybridsweep", "+experiment=nope"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2
    assert ("experiment=nope is unknown; choose one of: block_scores, depth_vs_width, finetune_start, order, "
            "pareto_search") in out.stderr


# --- the committed results -----------------------------------------------------------------------------------


def _committed(name: str) -> list[dict]:
    rows = read_results(REPO / "experiments" / name / RESULTS_FILE)
    if not rows:
        pytest.skip(f"experiment {name} has no committed results yet: make experiment NAME={name} runs it")
    return rows


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_committed_results_are_complete_and_at_the_stated_fidelity(name):
    rows = _committed(name)
    for row in rows:
        assert row["run_id"] and row["finetuned/top1"] and row["param.finetune_epochs"] == "1"
        assert row["param.test_subset"] in ("null", "None", "") and row["param.train_subset"] in ("null", "None", "")
        assert row["tag.latency.source"] == "measured" and float(row["latency/cpu/median_ms"]) > 0
        assert float(row["latency/cpu/final_ms"]) > 0  # every row re-measured in the final interleaved pass
        budget = row["param.budget_flops"]
        if budget not in ("null", "None", ""):
            assert abs(float(row["flops"]) / (float(budget) * float(row["baseline/flops"])) - 1) <= 0.01


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_committed_tables_and_plots_are_generated_from_the_csv(name, tmp_path):
    rows = _committed(name)
    folder = tmp_path / "experiments" / name
    folder.mkdir(parents=True)
    with open(folder / RESULTS_FILE, "w", newline="") as handle:  # a copy: the report must not touch the repo
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if name == "pareto_search" and (REPO / "experiments" / "depth_vs_width" / RESULTS_FILE).exists():
        (tmp_path / "experiments" / "depth_vs_width").mkdir()
        (tmp_path / "experiments" / "depth_vs_width" / RESULTS_FILE).write_bytes(
            (REPO / "experiments" / "depth_vs_width" / RESULTS_FILE).read_bytes())
    cfg = compose_config(f"+experiment={name}")
    files = write_report(cfg.experiment.report, folder / RESULTS_FILE, expected_trials(cfg))
    table = _between((folder / "README.md").read_text(), BEGIN, END)
    committed = (REPO / "experiments" / name / "README.md").read_text()
    assert table == _between(committed, BEGIN, END), f"rebuild experiments/{name}/README.md: make experiment-report"
    for png in files[1:]:
        assert (REPO / "experiments" / name / png.name).is_file()
    if name == "depth_vs_width":  # the top README's Results table is the same generated table
        assert _between((REPO / "README.md").read_text(), HEADLINE_BEGIN, HEADLINE_END) == table


def _between(text: str, begin: str, end: str) -> str:
    assert begin in text and end in text
    return text.split(begin, 1)[1].split(end, 1)[0].strip()
