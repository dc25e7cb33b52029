"""A sweep that fails clean, tried as a hostile user would: workers started in the same second, a password in a
URL, corrupt weights, a store that cannot be written, SIGTERM mid-trial. Each ends with one line (exit 2, 143),
no traceback, nothing left RUNNING, and every finished trial kept. Real data at the cheapest fidelity."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from hybridsweep.errors import UserError
from hybridsweep.search import run_search
from hybridsweep.search.storage import open_storage
from hybridsweep.search.workers import RETRY_OF
from hybridsweep.tracking import TrackingError
from tests.helpers import cheap_real_overrides, compose_config

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]

REPO = Path(__file__).resolve().parents[2]


def _args(shared_data: Path, cache: Path, *extra: str, steps: int = 1) -> list[str]:
    return [
        "task=search",
        *cheap_real_overrides(shared_data, cache, train=256, test=100, steps=steps),
        "search=nsga2",
        "search.criteria=[l1,l2]",
        "search.population_size=2",
        *extra,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "hybridsweep", *args], cwd=cwd, env=_env(), stdout=out,
                                stderr=subprocess.STDOUT)


def _run(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hybridsweep", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def _errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def test_two_workers_started_in_the_same_second_both_finish(shared_data, test_cache, tmp_path):
    """Both create mlflow.db and the journal at once: the store is created under a lock, so neither dies."""
    args = _args(shared_data, test_cache, "search.storage=study.journal", "search.n_trials=4",
                 "search.study_name=together")
    procs = [_start([*args, f"search.seed={i}"], tmp_path, tmp_path / f"worker-{i}.log") for i in range(2)]
    codes = [p.wait(timeout=900) for p in procs]
    logs = [(tmp_path / f"worker-{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], "\n".join(log[-3000:] for log in logs)
    assert not any("Traceback" in log for log in logs)
    study = optuna.load_study(study_name="together", storage=open_storage(str(tmp_path / "study.journal")))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 4
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("together").experiment_id])
    parents = [r for r in runs if r.data.tags.get("hybridsweep.kind") == "search"]
    trials = [r for r in runs if r.data.tags.get("hybridsweep.kind") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.info.run_id for r in trials) == sorted(t.user_attrs["mlflow_run_id"] for t in complete)
    assert {r.info.status for r in trials} == {"FINISHED"}


def test_a_password_in_an_unreachable_tracking_uri_is_never_shown(shared_data, test_cache, tmp_path):
    args = _args(shared_data, test_cache, "tracking.uri=postgresql://u:secret@127.0.0.1:1/x",
                 f"search.storage=sqlite:///{tmp_path}/optuna.db", "search.n_trials=1")
    done = _run(args, tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "secret" not in done.stdout + done.stderr
    assert len(_errors(done.stderr)) == 1 and "tracking.uri=postgresql://u:***@127.0.0.1:1/x" in done.stderr
    assert "Traceback" not in done.stderr
    assert optuna.get_all_study_summaries(open_storage(f"sqlite:///{tmp_path}/optuna.db")) == []


@pytest.fixture
def secret_urls():
    """An Optuna storage and an MLflow store (its own schema: both use an `alembic_version` table) on the test
    server, with a password. The CI server trusts 127.0.0.1 (initdb -A trust), so any password logs in."""
    import sqlalchemy as sa

    from tests.integration.test_search import _postgres_url as server

    secret = "Zq7-s3cret-pw"
    user, _, rest = server().removeprefix("postgresql://").partition("@")
    url = f"postgresql://{user.split(':')[0]}:{secret}@{rest}"
    schema = f"mlflow_{os.getpid()}_{int(time.time())}"
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg2://"))
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    yield secret, url, f"{url}?options=-csearch_path%3D{schema}"
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    engine.dispose()


@pytest.mark.postgres
def test_a_password_in_working_urls_is_in_no_output_param_tag_attribute_or_artefact(shared_data, test_cache,
                                                                                     tmp_path, secret_urls):
    secret, storage, tracking = secret_urls
    study_name = f"secret-{os.getpid()}-{int(time.time())}"
    args = _args(shared_data, test_cache, f"tracking.uri='{tracking}'", f"search.storage={storage}",
                 "search.n_trials=1", f"search.study_name={study_name}", f"paths.output_dir={tmp_path}/out")
    done = _run(args, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert secret not in done.stdout + done.stderr

    study = optuna.load_study(study_name=study_name, storage=open_storage(storage))
    assert secret not in repr(study.user_attrs)
    assert all(secret not in repr(t.user_attrs) for t in study.trials)
    client = MlflowClient(tracking.replace("postgresql://", "postgresql+psycopg2://"))
    experiment = client.get_experiment_by_name(study_name)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2  # the parent and the trial
    for run in runs:
        assert secret not in repr(run.data.params) + repr(run.data.tags)
        folder = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "dl" / run.info.run_id)))
        texts = [p for p in folder.rglob("*") if p.suffix in (".yaml", ".json", ".txt", ".csv")]
        assert texts or run.data.tags.get("hybridsweep.kind") == "search"
        assert [p for p in texts if secret in p.read_text(errors="replace")] == []
    # Hydra's own record of the command line (.hydra/) is the one place it stays: said in the README
    texts = [p for p in tmp_path.rglob("*") if p.is_file() and ".hydra" not in p.parts and "dl" not in p.parts
             and p.suffix in (".yaml", ".json", ".txt", ".html", ".csv", ".log")]
    assert [p for p in texts if secret in p.read_text(errors="replace")] == []


def test_a_search_with_corrupt_weights_is_one_line_and_no_trial(shared_data, test_cache, tmp_path):
    weights = tmp_path / "corrupt.pth"
    weights.write_bytes(b"not a checkpoint" * 100)
    args = _args(shared_data, test_cache, f"model.weights={weights}",
                 f"search.storage=sqlite:///{tmp_path}/optuna.db", "search.n_trials=3", "search.study_name=corrupt")
    done = _run(args, tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and len(_errors(done.stderr)) == 1
    assert "model.weights" in _errors(done.stderr)[0]
    summaries = optuna.get_all_study_summaries(open_storage(f"sqlite:///{tmp_path}/optuna.db"))
    assert [s.n_trials for s in summaries if s.study_name == "corrupt"] in ([], [0])


@pytest.mark.parametrize("typed", ["chanel_ratio=0.3", "+chanel_ratio=0.3"])
def test_a_misspelt_key_exits_2_naming_the_real_one(tmp_path, typed):
    done = _run(["+criterion=l1", typed], tmp_path, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: chanel_ratio is not a setting; did you mean channel_ratio?"]


@pytest.mark.parametrize("typed,setting",
                         [("finetune.lr=inf", "finetune.lr"), ("+latency.thread=2", "latency.threads")])
def test_late_checks_run_before_any_work(tmp_path, typed, setting):
    """Both used to fail only after data loading and fine-tuning; a missing dataset would surface first."""
    done = _run(["+criterion=l1", "data=cifar10", "data.download=false", typed], tmp_path, timeout=120)
    assert done.returncode == 2
    assert len(_errors(done.stderr)) == 1 and setting in done.stderr, done.stderr


def test_sigterm_mid_trial_queues_the_plan_again_and_leaves_nothing_running(shared_data, test_cache, tmp_path):
    args = _args(shared_data, test_cache, "search.storage=sqlite:///optuna.db", "search.n_trials=2",
                 "search.study_name=term", "finetune.batch_size=8", steps=100000)
    proc = _start(args, tmp_path, tmp_path / "run.log")
    storage = f"sqlite:///{tmp_path}/optuna.db"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # wait until a trial is fine-tuning
        if proc.poll() is not None:
            pytest.fail((tmp_path / "run.log").read_text()[-3000:])
        if "fine-tune" in (tmp_path / "run.log").read_text(errors="replace"):
            break
        time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
    log = (tmp_path / "run.log").read_text(errors="replace")
    assert code == 143, log[-3000:]
    assert "Traceback" not in log
    assert "stopped by SIGTERM" in log
    study = optuna.load_study(study_name="term", storage=open_storage(storage))
    stopped, queued = study.trials  # the stopped plan waits to run first on resume (a grid keeps its point)
    assert (stopped.state, queued.state) == (TrialState.FAIL, TrialState.WAITING)
    assert queued.user_attrs[RETRY_OF] == stopped.number and queued.system_attrs["fixed_params"] == stopped.params
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("term").experiment_id])
    assert {r.info.status for r in runs} == {"KILLED"}  # the trial's run and the parent, none RUNNING


def test_a_store_that_cannot_be_written_ends_the_search_with_one_error(shared_data, test_cache, tmp_path,
                                                                       monkeypatch):
    """A store that fails once the search runs (disk full, made read-only): the search stops at once with a
    TrackingError naming tracking.uri, the trial is FAIL, and no run is left RUNNING."""
    monkeypatch.chdir(tmp_path)
    args = _args(shared_data, test_cache, f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                 f"search.storage=sqlite:///{tmp_path}/optuna.db", "search.n_trials=3", "search.study_name=ro")[1:]
    real = MlflowClient.log_batch

    def full_disk(self, run_id, metrics=(), params=(), tags=(), **kwargs):
        if metrics:
            raise mlflow.exceptions.MlflowException("(sqlite3.OperationalError) database or disk is full\n[SQL: ...]")
        return real(self, run_id, metrics=metrics, params=params, tags=tags, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", full_disk)
    with pytest.raises(TrackingError) as raised:
        run_search(compose_config(*args), args)
    message = str(raised.value)
    assert isinstance(raised.value, UserError) and "\n" not in message
    assert message.startswith(f"tracking.uri=sqlite:///{tmp_path}/mlflow.db") and "disk is full" in message
    monkeypatch.setattr(MlflowClient, "log_batch", real)
    study = optuna.load_study(study_name="ro", storage=open_storage(f"sqlite:///{tmp_path}/optuna.db"))
    assert [t.state for t in study.trials] == [TrialState.FAIL]  # stopped after the first, not 5 failures
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("ro").experiment_id])
    assert len(runs) == 2 and "RUNNING" not in {r.info.status for r in runs}
