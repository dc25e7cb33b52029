"""Hydra launchers start several workers of one study: two joblib jobs (`-m hydra/launcher=joblib
search.worker=0,1`) share a journal study and run every trial once; the shipped SLURM config
(`hydra/launcher=slurm_workers`) composes into submitit's SLURM launcher and its sbatch file (no job runs here)."""

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from optuna.trial import TrialState

from hybridsweep import conf_dir
from hybridsweep.config import register_configs
from hybridsweep.search.storage import open_storage
from tests.helpers import cheap_real_overrides

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def test_two_joblib_jobs_share_a_journal_study(shared_data, test_cache, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install -e '.[launchers]'")
    storage = tmp_path / "study.journal"
    command = [
        sys.executable,
        "-m",
        "hybridsweep",
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={tmp_path}/multirun",
        "task=search",
        *cheap_real_overrides(shared_data, test_cache, train=256, test=100, steps=1),
        f"paths.output_dir={tmp_path}/out",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        "search=nsga2",
        f"search.storage={storage}",
        "search.n_trials=3",
        "search.study_name=launched",
        "search.criteria=[l1,l2]",
        "search.population_size=2",
        "search.worker=0,1",
    ]
    out = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=800)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert log.count("search: study launched in") == 2, log[-4000:]  # both jobs ran the search
    for job in (0, 1):  # one job per worker value; the trials' own configs do not carry it
        assert f"search.worker={job}" in (tmp_path / "multirun" / str(job) / ".hydra" / "overrides.yaml").read_text()

    study = optuna.load_study(study_name="launched", storage=open_storage(str(storage)))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 3  # the study's total, not 3 per job
    assert not [t for t in study.trials if t.state == TrialState.FAIL and not t.user_attrs.get("surplus")]
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert 1 <= len({t.user_attrs["worker"] for t in complete}) <= 2  # both, unless one job started late
    assert not [a for a in study.user_attrs["base_overrides"] if a.startswith("search.")]  # trials stay alike

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["launched"], output_format="list")
    parents = [r for r in runs if r.data.tags.get("hybridsweep.kind") == "search"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1  # one parent run per study, however many jobs
    numbers = sorted(int(r.data.tags["optuna.trial"]) for r in children)
    assert numbers == sorted(t.number for t in complete)  # every trial exactly once in MLflow
    assert {r.info.status for r in children} == {"FINISHED"}
    assert {t.user_attrs["mlflow_run_id"] for t in complete} == {r.info.run_id for r in children}
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}


def _slurm_config(tmp_path: Path, *overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(
            config_name="config",
            overrides=[
                "hydra/launcher=slurm_workers",
                f"hydra.sweep.dir={tmp_path}/multirun",
                "task=search",
                "search=nsga2",
                *overrides,
            ],
            return_hydra_config=True,
        )


def test_slurm_workers_config_composes_into_an_sbatch_file(tmp_path, monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[launchers]'")
    import submitit

    cfg = _slurm_config(tmp_path, "hydra.launcher.partition=gpu")
    launcher_cfg = cfg.hydra.launcher
    assert launcher_cfg._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert cfg.hydra.runtime.choices["hydra/launcher"] == "slurm_workers"
    assert (launcher_cfg.timeout_min, launcher_cfg.gpus_per_node, launcher_cfg.tasks_per_node) == (1440, 1, 1)
    assert launcher_cfg.cpus_per_task >= 1 and launcher_cfg.partition == "gpu"
    assert cfg.search.worker == 0

    # The plugin's own launch() on two worker jobs, stopped where submitit would call sbatch: every key of the
    # config must be one submitit accepts, and the sbatch file must ask for what the config says.
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # no srun here
    sbatch: list[str] = []

    class Job:
        def results(self):
            return ["not run"]

    def map_array(executor, fn, *args):
        sbatch.append(executor._executor._make_submission_file_text("python -m hybridsweep", "uid"))
        return [Job() for _ in args[0]]

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", map_array)
    launcher = instantiate(launcher_cfg)
    assert type(launcher).__name__ == "SlurmLauncher"  # Hydra's plugin scan loads its own copy of the class
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    assert launcher.launch([["search.worker=0"], ["search.worker=1"]], initial_job_idx=0) == ["not run"] * 2
    (text,) = sbatch
    for line in (
        "--time=1440",
        "--gpus-per-node=1",
        "--cpus-per-task=8",
        "--ntasks-per-node=1",
        "--partition=gpu",
        "--job-name=hybridsweep-search",
        "--mem=32GB",
    ):
        assert f"#SBATCH {line}" in text, text
