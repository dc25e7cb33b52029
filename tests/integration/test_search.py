"""The Optuna search end to end on real data at a cheap fidelity (resnet20, 256 training / 100 test images, one
fine-tune step): a study leaves its trials in Optuna and MLflow linked both ways with the front published;
n_trials is the study's total; a worker killed mid-trial loses nothing on rerun; two workers share a journal
study; PostgreSQL with heartbeat; optuna-dashboard reads the study; bad input is one line naming the setting."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlparse
from wsgiref.simple_server import WSGIRequestHandler, make_server

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from hybridsweep.errors import UserError
from hybridsweep.search import report, run_search
from hybridsweep.search.report import load_studies
from hybridsweep.search.storage import open_storage
from tests.helpers import cheap_real_overrides, compose_config

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]

REPO = Path(__file__).resolve().parents[2]
POSTGRES_URL = "postgresql://hybridsweep:hybridsweep@127.0.0.1:5432/hybridsweep"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One folder (the cwd, so MLflow's ./mlruns lands here) and one MLflow store for the whole module."""
    root = tmp_path_factory.mktemp("search")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        yield root


def _args(shared_data: Path, cache: Path, root: Path, storage: str, *extra: str) -> list[str]:
    return [
        *cheap_real_overrides(shared_data, cache, train=256, test=100, steps=1),
        f"paths.output_dir={root}/out",
        f"tracking.uri=sqlite:///{root}/mlflow.db",
        "search=nsga2",
        f"search.storage={storage}",
        "search.criteria=[l1,l2]",
        "search.population_size=2",
        *extra,
    ]


def _search(args: list[str]) -> optuna.Study:
    return run_search(compose_config(*args), args)


def _runs(root: Path, experiment: str):
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def _split(runs):
    parents = [r for r in runs if r.data.tags.get("hybridsweep.kind") == "search"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    return parents, children


def _command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "hybridsweep", "task=search", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _states(study: optuna.Study) -> dict[int, TrialState]:
    return {t.number: t.state for t in study.get_trials(deepcopy=False)}


@pytest.fixture(scope="module")
def three_trials(shared_data, test_cache, workdir):
    storage = f"sqlite:///{workdir}/optuna.db"
    args = _args(shared_data, test_cache, workdir, storage, "search.n_trials=3", "search.study_name=three")
    return _search(args), args, storage


def test_three_trial_study_is_linked_to_mlflow_with_the_front(three_trials, workdir):
    study, _, storage = three_trials
    reloaded = optuna.load_study(study_name="three", storage=storage)
    complete = reloaded.get_trials(states=(TrialState.COMPLETE,))
    assert len(reloaded.trials) == len(complete) == 3
    assert reloaded.metric_names == ["finetuned/top1", "latency/cpu/median_ms"]
    for t in complete:
        assert set(t.params) == {"depth_share", "budget", "order", "criterion", "finetune_lr"}
        assert t.params["budget"] in (0.5, 0.75) and t.params["criterion"] in ("l1", "l2")
        assert "flops_budget" in t.constraints  # FLOP budget as a constraint, <= 0 feasible
        assert t.constraints["flops_budget"] <= 0 and abs(t.user_attrs["flops_ratio"] - t.params["budget"]) < 0.02

    parents, children = _split(_runs(workdir, "three"))
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert parent.info.status == "FINISHED" and reloaded.user_attrs["mlflow_parent_run_id"] == parent.info.run_id
    by_id = {r.info.run_id: r for r in children}
    for t in complete:  # linked both ways
        run = by_id[t.user_attrs["mlflow_run_id"]]
        assert run.info.status == "FINISHED"
        assert run.data.tags["optuna.study"] == "three" and run.data.tags["optuna.trial"] == str(t.number)
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.metrics["finetuned/top1"] == t.values[0]
    front = {t.number for t in reloaded.best_trials}
    tagged = {int(r.data.tags["optuna.trial"]) for r in children if r.data.tags.get("pareto") == "true"}
    assert tagged and tagged <= {t.number for t in complete}
    # one front per budget: each budget's own best trials are all on it
    for budget in {t.params["budget"] for t in complete}:
        group = [t for t in complete if t.params["budget"] == budget]
        best = max(group, key=lambda t: t.values[0])
        assert best.number in tagged
    assert front & tagged  # the study's global front is within the per-budget fronts
    client = mlflow.MlflowClient()
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "pareto")}
    assert artifacts == {"pareto/front.html", "pareto/front.png", "pareto/front.csv", "pareto/plotly.min.js"}
    local = workdir / "out" / "three"
    assert (local / "front.png").read_bytes()[:4] == b"\x89PNG"
    html = (local / "front.html").read_text()
    assert 'src="plotly.min.js"' in html and len(html) < 200_000  # plotly.js beside it, not inlined
    assert "unpruned baseline" in html
    lines = (local / "front.csv").read_text().strip().splitlines()
    assert len(lines) == 5 and lines[1].split(",")[1] == "baseline (unpruned)"


def test_a_latency_threshold_no_trial_meets_leaves_the_front_empty_and_names_the_closest(
        shared_data, test_cache, workdir, capsys):
    storage = f"sqlite:///{workdir}/threshold.db"
    # 0.001 ms: far below what any pruned ResNet-20 measures, so every trial breaks it
    args = _args(shared_data, test_cache, workdir, storage, "search.n_trials=2", "search.study_name=threshold",
                 "search.max_latency_ms=0.001")
    study = _search(args)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 2
    for t in complete:
        assert t.constraints["max_latency_ms"] > 0 and "min_top1" not in t.constraints
        assert t.constraints["max_latency_ms"] == pytest.approx(t.values[1] - 0.001)  # the latency objective
    from hybridsweep.search.front import front_rows

    rows = front_rows(study)
    assert rows and not any(r["pareto"] or r["feasible"] for r in rows)
    assert all("max_latency_ms" in r["violates"].split() for r in rows)
    out = capsys.readouterr().out
    (line,) = [ln for ln in out.splitlines() if "no complete trial meets the constraints" in ln]
    closest = min(complete, key=lambda t: sum(max(v, 0) for v in t.constraints.values()))
    assert f"the closest is trial {closest.number} (" in line and "latency threshold by" in line
    html = (workdir / "out" / "threshold" / "front.html").read_text()
    assert "breaks the latency threshold" in html
    children = _split(_runs(workdir, "threshold"))[1]
    assert {r.data.tags["optuna.feasible"] for r in children} == {"false"}
    assert _registered(workdir, "threshold") == {}  # search.register is on: an infeasible trial is never registered


def test_the_front_is_honest_one_latency_per_architecture_baseline_and_final_pass(three_trials, workdir):
    study, _, storage = three_trials
    reloaded = optuna.load_study(study_name="three", storage=storage)
    complete = reloaded.get_trials(states=(TrialState.COMPLETE,))
    by_arch = {}
    for t in complete:  # trials that reached the same pruned shapes report the same latency objective
        by_arch.setdefault(t.user_attrs["arch"], set()).add(t.values[1])
    assert all(len(values) == 1 for values in by_arch.values())
    parents, children = _split(_runs(workdir, "three"))
    parent = parents[0].data.metrics
    for key in ("baseline/top1", "baseline/params", "baseline/flops", "baseline/latency/cpu/final_ms"):
        assert key in parent, key
    final = reloaded.user_attrs["final_latency"]
    assert final, "the final pass re-measured no trial"
    runs = {r.info.run_id: r for r in children}
    for t in complete:
        m = runs[t.user_attrs["mlflow_run_id"]].data.metrics
        assert "speedup" in m and "latency_reduction_pct" in m  # against the unpruned model, same backend
        if str(t.number) in final:  # the front's candidates carry the re-measured figure
            assert m["latency/cpu/final_ms"] == final[str(t.number)]
            assert m["final/speedup"] == pytest.approx(parent["baseline/latency/cpu/final_ms"] / final[str(t.number)])
            tags = runs[t.user_attrs["mlflow_run_id"]].data.tags
            assert tags["latency.final.statistic"].startswith("median of the fastest round")
            assert tags["criterion"] in ("l1", "l2") and tags["study"] == "three"


def test_n_trials_is_the_study_total(three_trials, workdir):
    _, args, storage = three_trials
    before = {r.info.run_id for r in _runs(workdir, "three")}
    study = _search(args)
    assert len(study.trials) == 3
    assert {r.info.run_id for r in _runs(workdir, "three")} == before


def test_optuna_dashboard_serves_the_study(three_trials):
    import optuna_dashboard

    _, _, storage = three_trials

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    server = make_server("127.0.0.1", 0, optuna_dashboard.wsgi(storage), handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        with urllib.request.urlopen(f"{base}/api/studies", timeout=30) as response:
            studies = json.load(response)["study_summaries"]
        (summary,) = [s for s in studies if s["study_name"] == "three"]
        assert summary["directions"] == ["maximize", "minimize"]
        with urllib.request.urlopen(f"{base}/api/studies/{summary['study_id']}", timeout=30) as response:
            detail = json.load(response)
        assert [t["state"] for t in detail["trials"]] == ["Complete"] * 3
        assert all("mlflow_run_id" in {a["key"] for a in t["user_attrs"]} for t in detail["trials"])
        assert detail["best_trials"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_report_draws_several_studies_in_one_plot(three_trials, workdir):
    _, _, storage = three_trials
    other = optuna.create_study(study_name="other", storage=storage, directions=["maximize", "minimize"])
    other.set_metric_names(["finetuned/top1", "latency/cpu/median_ms"])
    dist = optuna.distributions.FloatDistribution(0, 1)
    for share, values in ((0.2, [30.0, 3.0]), (0.8, [20.0, 2.0])):
        other.add_trial(optuna.trial.create_trial(
            params={"depth_share": share}, distributions={"depth_share": dist}, values=values,
            user_attrs={"budget_group": "0.5", "plan": {"depth_share": share, "budget": 0.5}}))
    html, png, table = report(load_studies(["three", "other"], storage), workdir / "report")
    lines = table.read_text().splitlines()
    assert len(lines) == 1 + 1 + 3 + 2 and {line.split(",")[0] for line in lines[1:]} == {"three", "other"}
    assert png.read_bytes()[:4] == b"\x89PNG" and "other" in html.read_text()[-200000:]
    with pytest.raises(UserError, match=r"search\.studies=nothere: no such study; search\.storage=.* holds: three, o"):
        load_studies(["nothere"], storage)
    with pytest.raises(UserError, match=r"search\.storage=sqlite:///.*/typo\.db: no such study storage"):
        load_studies(None, f"sqlite:///{workdir}/typo.db")
    assert not (workdir / "typo.db").exists()  # a mistyped path is not created as an empty store


def test_a_failing_trial_is_recorded_and_the_study_goes_on(shared_data, test_cache, workdir, monkeypatch):
    import hybridsweep.trial

    real, calls = hybridsweep.trial.run_trial, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(hybridsweep.trial, "run_trial", flaky)
    storage = f"sqlite:///{workdir}/flaky.db"
    args = _args(shared_data, test_cache, workdir, storage, "search.n_trials=2", "search.study_name=flaky")
    study = _search(args)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    failed = study.trials[0]
    assert "out of memory (simulated)" in failed.user_attrs["error"]
    status = {r.info.run_id: r for r in _runs(workdir, "flaky")}
    assert status[failed.user_attrs["mlflow_run_id"]].info.status == "FAILED"
    assert status[failed.user_attrs["mlflow_run_id"]].data.tags["optuna.state"] == "FAIL"

    def broken(*args, **kwargs):
        raise RuntimeError("latency backend unreachable (simulated)")

    monkeypatch.setattr(hybridsweep.trial, "run_trial", broken)
    with pytest.raises(UserError, match=r"search: 2 trials failed in a row, the last \(trial 4\) with RuntimeError"):
        _search([*args, "search.n_trials=5", "search.max_consecutive_failures=2"])
    # without the guard a failure counts toward the total: 2 more trials, both failed, and the run ends
    study = _search([*args, "search.n_trials=4", "search.max_consecutive_failures=0"])
    assert [t.state for t in study.trials[5:]] == [TrialState.FAIL, TrialState.FAIL]
    assert "RUNNING" not in {r.info.status for r in _runs(workdir, "flaky")}


def test_kill_mid_trial_then_rerun_keeps_every_finished_trial(shared_data, test_cache, workdir):
    storage = f"sqlite:///{workdir}/killed.db"
    args = _args(shared_data, test_cache, workdir, storage, "search.n_trials=2", "search.study_name=killed")
    with open(workdir / "killed-1.log", "w") as log:
        proc = subprocess.Popen(_command(args), cwd=workdir, env=_env(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        try:
            while True:
                assert proc.poll() is None, (workdir / "killed-1.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the search never reached its second trial"
                try:
                    trials = optuna.load_study(study_name="killed", storage=storage).get_trials(deepcopy=False)
                except KeyError:
                    trials = []
                done = [t for t in trials if t.state == TrialState.COMPLETE]
                running = [t for t in trials if t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs]
                if done and running:
                    break
                time.sleep(0.2)
        finally:  # the trial's MLflow run exists: run_trial (seconds of pruning, fine-tuning, timing) is under way
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    first, killed = done[0], running[0]
    run_status = {r.info.run_id: r.info.status for r in _runs(workdir, "killed")}
    assert run_status[killed.user_attrs["mlflow_run_id"]] == "RUNNING"  # what kill -9 leaves behind

    rerun = subprocess.run(_command(args), cwd=workdir, env=_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    study = optuna.load_study(study_name="killed", storage=storage)
    states = _states(study)
    assert states[killed.number] == TrialState.FAIL
    retry = study.trials[killed.number + 1]  # the killed plan runs again first (a twin of trial 0 is skipped)
    assert retry.params == killed.params and retry.user_attrs["retry_of"] == killed.number
    assert f"trial(s) {killed.number} were left RUNNING by a worker that is gone" in rerun.stdout
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 2 and first.number in {t.number for t in complete}
    assert study.trials[first.number].values == first.values  # the finished trial is kept as it was
    runs = _runs(workdir, "killed")
    assert "RUNNING" not in {r.info.status for r in runs}
    status = {r.info.run_id: r.info.status for r in runs}
    assert status[killed.user_attrs["mlflow_run_id"]] == "KILLED"
    parents, children = _split(runs)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.info.status for r in children) == ["FINISHED", "FINISHED", "KILLED"]


def test_two_workers_share_a_journal_study(shared_data, test_cache, workdir):
    storage = str(workdir / "shared.journal")
    args = _args(shared_data, test_cache, workdir, storage, "search.n_trials=3", "search.study_name=shared",
                 "search.sampler=random")
    logs = [open(workdir / f"worker-{i}.log", "w") for i in range(2)]
    try:
        procs = [
            subprocess.Popen(_command([*args, f"search.seed={i + 1}"]), cwd=workdir, env=_env(), stdout=log,
                             stderr=subprocess.STDOUT)
            for i, log in enumerate(logs)
        ]
        codes = [p.wait(timeout=400) for p in procs]
    finally:
        for log in logs:
            log.close()
    assert codes == [0, 0], "".join((workdir / f"worker-{i}.log").read_text()[-2000:] for i in range(2))
    study = optuna.load_study(study_name="shared", storage=open_storage(storage))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 3  # the study's total, not 3 per worker
    assert not [t for t in study.trials if t.state == TrialState.FAIL and not t.user_attrs.get("surplus")]
    assert len({t.user_attrs["worker"] for t in complete}) == 2  # both workers ran trials
    parents, children = _split(_runs(workdir, "shared"))
    assert len(parents) == 1
    numbers = sorted(int(r.data.tags["optuna.trial"]) for r in children)
    assert numbers == sorted(t.number for t in complete)  # every trial exactly once in MLflow
    assert {r.info.status for r in children} == {"FINISHED"}
    assert {t.user_attrs["mlflow_run_id"] for t in complete} == {r.info.run_id for r in children}
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}


def _postgres_url() -> str:
    url = os.environ.get("HYBRIDSWEEP_TEST_POSTGRES", POSTGRES_URL)
    parsed = urlparse(url)
    try:
        socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 5432), timeout=2).close()
    except OSError as exc:
        where = f"{parsed.hostname}:{parsed.port or 5432}"
        reason = f"no PostgreSQL server at {where} ({exc}); set HYBRIDSWEEP_TEST_POSTGRES to a server's URL"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return url


@pytest.mark.postgres
@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_postgres_study_with_heartbeat_retries_a_stale_trial(shared_data, test_cache, workdir):
    url = _postgres_url()
    name = f"pg-{uuid.uuid4().hex[:8]}"
    args = _args(shared_data, test_cache, workdir, url, "search.n_trials=1", f"search.study_name={name}",
                 "search.heartbeat_s=1")
    try:
        study = _search(args)
        assert [t.state for t in study.trials] == [TrialState.COMPLETE]
        # a worker on another machine that stopped beating: its trial is failed and retried on the next run
        storage = open_storage(url, heartbeat_s=1)
        stale = optuna.load_study(study_name=name, storage=storage).ask()
        stale.set_user_attr("worker", "another-host:1:1")
        storage.record_heartbeat(stale._trial_id)
        time.sleep(3)
        study = _search([*args, "search.n_trials=2"])
        states = _states(study)
        assert states[stale.number] == TrialState.FAIL
        retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == stale.number]
        assert [t.state for t in retried] == [TrialState.COMPLETE]
        assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2
        assert "RUNNING" not in {r.info.status for r in _runs(workdir, name)}
    finally:
        try:
            optuna.delete_study(study_name=name, storage=open_storage(url))
        except KeyError:
            pass


# --- bad input: one line naming the setting, before any trial runs ------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["search.sampler=annealing"], r"search\.sampler=annealing is unknown; choose one of: nsga2, tpe"),
        (["search=none"], r"task=search needs a sampler"),
        (["+criterion=l1", "budget.flops=0.5", "order=layer_first", "finetune.lr=0.01", "depth_share=0.5"],
         r"the search space is empty"),
        (["search.budgets=[]"], r"search\.budgets=\[\] leaves nothing to search"),
        (["search.budgets=[0.5,1.5]"], r"search\.budgets=.* is out of range: 1\.5"),
        (["search.lr=[0.1,0.01]"], r"search\.lr=.* is an empty range"),
        (["search.criteria=[l1,magic]"], r"search\.criteria: magic is unknown"),
        (["search.objectives=[accuracy,speed]"], r"search\.objectives: speed is unknown"),
        (["search.storage=postgresql://nobody:secret@127.0.0.1:1/none"],
         r"search\.storage=postgresql://nobody:\*\*\*@127\.0\.0\.1:1/none: cannot open the study storage"),
        (["search.storage=sqlite:////no/such/folder/optuna.db"], r"search\.storage=.*: the folder /no/such/folder"),
        (["search.storage=optuna.db"], r"search\.storage=optuna\.db is not a storage"),
    ],
)
def test_bad_input_is_one_line_naming_the_setting(shared_data, test_cache, workdir, extra, message):
    args = _args(shared_data, test_cache, workdir, f"sqlite:///{workdir}/bad.db", "search.n_trials=2", *extra)
    if "search=none" in extra:  # the search group without its settings
        args = [a for a in args if not a.startswith("search")] + ["search=none"]
    with pytest.raises(UserError, match=message) as info:
        _search(args)
    assert "\n" not in str(info.value) and "secret" not in str(info.value)


def test_a_study_name_with_other_objectives_is_refused(shared_data, test_cache, workdir):
    storage = f"sqlite:///{workdir}/taken.db"
    optuna.create_study(study_name="taken", storage=storage, directions=["maximize", "minimize"]).set_metric_names(
        ["finetuned/top1", "params"])
    args = _args(shared_data, test_cache, workdir, storage, "search.n_trials=2", "search.study_name=taken")
    with pytest.raises(UserError, match=r"search\.study_name=taken already exists .* with objectives"):
        _search(args)
    optuna.create_study(study_name="single", storage=storage, direction="maximize")
    with pytest.raises(UserError, match=r"search\.study_name=single already exists"):
        _search([*args, "search.study_name=single"])
    assert optuna.load_study(study_name="taken", storage=storage).trials == []


def test_task_report_logs_the_overlaid_fronts_as_an_mlflow_run(three_trials, workdir):
    from hybridsweep.search import report_from_config

    _, args, storage = three_trials
    cfg = compose_config("task=report", f"search.storage={storage}", "search.studies=[three]",
                         f"tracking.uri=sqlite:///{workdir}/mlflow.db")
    files = report_from_config(cfg)
    assert [f.name for f in files] == ["front.html", "front.png", "front.csv"]
    mlflow.set_tracking_uri(f"sqlite:///{workdir}/mlflow.db")
    (run,) = mlflow.search_runs(experiment_names=["hybridsweep"], output_format="list",
                                filter_string="tags.`hybridsweep.kind` = 'report'")
    assert run.data.tags["report.studies"] == "three" and run.info.status == "FINISHED"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "pareto")}
    assert {"pareto/front.html", "pareto/front.png", "pareto/front.csv"} <= artifacts


def _registered(root: Path, name: str) -> dict[int, object]:
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    versions = client.search_model_versions(f"name = '{name}'")
    by_trial = {int(v.tags["trial"]): v for v in versions}
    assert len(by_trial) == len(versions)  # one version per trial, never two
    return by_trial


def test_the_front_is_registered_one_version_per_front_trial(three_trials, workdir):
    from hybridsweep.search.front import front_rows

    study, _, _ = three_trials
    rows = front_rows(study)
    front = {r["trial"]: r for r in rows if r["pareto"] and r["feasible"]}
    children = _split(_runs(workdir, "three"))[1]
    tagged = {int(r.data.tags["optuna.trial"]) for r in children if r.data.tags.get("pareto") == "true"}
    assert front and set(front) == tagged
    versions = _registered(workdir, "three")
    # one version per front trial, pareto=true; a trial that was on the front after an earlier trial and left it
    # keeps its version, tagged pareto=false
    assert {n for n, v in versions.items() if v.tags["pareto"] == "true"} == set(front) <= set(versions)
    assert all(v.tags["pareto"] == "false" for n, v in versions.items() if n not in front)
    assert all(r["feasible"] for r in rows if r["trial"] in versions)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlflow.db")
    experiment = client.get_experiment_by_name("three").experiment_id
    by_trial = {r["trial"]: r for r in rows}
    for number, version in versions.items():
        run_id = by_trial[number]["mlflow_run_id"]
        logged = client.search_logged_models([experiment], filter_string=f"source_run_id = '{run_id}'")
        assert len(logged) == 1
        assert version.source == f"models:/{logged[0].model_id}" and version.tags["model_id"] == logged[0].model_id
        assert version.run_id == run_id
        if number not in front:
            continue
        assert float(version.tags["top1"]) == front[number]["finetuned/top1"]
        assert float(version.tags["latency_ms"]) > 0 and version.tags["budget_group"] == front[number]["budget_group"]
    best = max(front, key=lambda n: front[n]["finetuned/top1"])
    assert client.get_model_version_by_alias("three", "pareto-best-top1").version == versions[best].version


def test_search_register_false_registers_nothing(shared_data, test_cache, workdir):
    storage = f"sqlite:///{workdir}/unregistered.db"
    args = _args(shared_data, test_cache, workdir, storage, "search.n_trials=2", "search.study_name=unregistered",
                 "search.register=false")
    study = _search(args)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2
    assert any(r.data.tags.get("pareto") == "true" for r in _runs(workdir, "unregistered"))  # a front was tagged
    assert _registered(workdir, "unregistered") == {}
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlflow.db")
    assert "unregistered" not in {m.name for m in client.search_registered_models()}


def test_register_front_follows_the_front_and_registers_a_trial_once(tmp_path):
    """The tracker on its own: a trial that leaves the front is tagged pareto=false (not registered again), an
    infeasible row is never registered, the best-top-1 alias moves with the front."""
    import numpy as np
    import torch

    from hybridsweep.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "reg/study:x", tmp_path / "artifacts")
    runs = {}
    for number in range(3):
        run = tracker.start_trial(number, f"trial {number}")
        run.model(torch.nn.Linear(4, 2).eval(), np.zeros((1, 4), dtype=np.float32))
        tracker.end_run(run.run_id, "FINISHED")
        runs[number] = run.run_id

    def row(number, top1, pareto, feasible=True):
        return {"trial": number, "pareto": pareto, "feasible": feasible, "budget_group": "0.5",
                "finetuned/top1": top1, "latency/cpu/median_ms": 1.0 + number, "final_latency_ms": None,
                "mlflow_run_id": runs[number]}

    name = tracker.register_front([row(0, 50.0, True), row(1, 60.0, True), row(2, 70.0, True, feasible=False)])
    assert name == "reg-study-x"
    versions = _registered(tmp_path, name)
    assert set(versions) == {0, 1} and {v.tags["pareto"] for v in versions.values()} == {"true"}
    assert all(v.source == f"models:/{v.tags['model_id']}" and v.run_id == runs[n] for n, v in versions.items())
    assert mlflow.get_tracking_uri() != f"sqlite:///{tmp_path}/mlflow.db"  # the global URI is left as it was
    assert tracker.client.get_model_version_by_alias(name, "pareto-best-top1").version == versions[1].version

    tracker.register_front([row(0, 50.0, True), row(1, 60.0, False), row(2, 70.0, True, feasible=False)])
    again = _registered(tmp_path, name)
    assert {n: v.version for n, v in again.items()} == {n: v.version for n, v in versions.items()}  # none twice
    assert again[0].tags["pareto"] == "true" and again[1].tags["pareto"] == "false"
    assert tracker.client.get_model_version_by_alias(name, "pareto-best-top1").version == versions[0].version
    assert Tracker.disabled().register_front([row(0, 50.0, True)]) is None


def test_task_export_writes_the_knee_trial_ready_to_deploy(three_trials, workdir):
    """The acceptance command: `task=export search.study_name=... pick=knee` on the 3-trial study writes the knee
    trial's ONNX (equal to its saved PyTorch model in ONNX Runtime on real test images), state dict, plan and a
    model card naming it; no GPU here, so the card says why there is no engine."""
    import onnxruntime as ort
    import torch

    from hybridsweep.artifacts import load_pruned
    from hybridsweep.baseline import build_architecture
    from hybridsweep.data.batches import eval_batches
    from hybridsweep.search.pick import pick
    from hybridsweep.workbench import Workbench

    study, args, storage = three_trials
    out = subprocess.run(
        [sys.executable, "-m", "hybridsweep", "task=export", f"search.storage={storage}", "search.study_name=three",
         "pick=knee", f"export.dir={workdir}/export"],
        cwd=workdir, capture_output=True, text=True, timeout=600, env=_env())
    assert out.returncode == 0, out.stderr[-3000:]
    knee = pick(study, "knee").row
    folder = workdir / "export" / f"three-{knee['trial']}"
    assert knee["pareto"] and f"export: trial {knee['trial']} of study three (pick=knee" in out.stdout
    assert {p.name for p in folder.iterdir()} == {"model.onnx", "model.pt", "plan.json", "MODEL_CARD.md"}

    cfg = compose_config(*args)
    ds = Workbench(cfg.paths.cache_dir).dataset(cfg)
    model, plan = load_pruned(build_architecture(cfg.model, len(ds.classes)), folder)
    images, _ = next(eval_batches(ds, 8, device="cpu", channels_last=False))
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {"input": images.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(onnx_logits), model.eval()(images), rtol=0, atol=1e-4)

    card = (folder / "MODEL_CARD.md").read_text()
    assert card.startswith(f"# three, trial {knee['trial']}: a pruned resnet20 for {cfg.data.name}")
    assert f"MLflow run `{knee['mlflow_run_id']}`" in card
    assert "| top-1 (%) | " in card and f"{knee['finetuned/top1']:.2f}" in card
    assert f"{plan.blocks} residual block(s) removed" in card
    assert "no TensorRT engine: not built here (" in card
    trial = study.get_trials(deepcopy=False)[knee["trial"]]
    assert " ".join(trial.user_attrs["overrides"]) in card  # the command that reproduces it


@pytest.mark.parametrize("extra,message", [
    (["search.study_name=nope"], r"search.study_name=nope: no such study; .* holds: .*three"),
    ([], r"set search.study_name=NAME; search.storage=.* holds: three"),
    (["search.study_name=three", "pick=trial:99"], r"pick=trial:99: study three has no trial 99"),
    (["search.study_name=three", "pick=fastest", "pick.max_latency_ms=0.0001"],
     r"pick.max_latency_ms=0.0001: no front trial of study three is that fast; the fastest is trial \d+"),
])
def test_task_export_bad_input_is_one_line(three_trials, workdir, extra, message):
    from hybridsweep.tasks import run_task

    _, _, storage = three_trials
    cfg = compose_config("task=export", f"search.storage={storage}", f"export.dir={workdir}/export-bad",
                         *(arg.replace("pick=", "pick.rule=") for arg in extra))
    with pytest.raises(UserError, match=message):
        run_task(cfg)
    assert not (workdir / "export-bad").exists()
