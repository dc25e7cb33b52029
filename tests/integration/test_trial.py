"""End to end on real data: a pruning trial leaves a complete MLflow run with its pruned model as an MLflow Model;
scores are computed once; a Hydra multirun groups its jobs under one parent run; bad input leaves no run
RUNNING."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import mlflow.pytorch
import pytest
import torch

from hybridsweep.artifacts import load_pruned
from hybridsweep.baseline import build_architecture
from hybridsweep.data.batches import eval_batches
from hybridsweep.pruning.criteria import FeatureMapRank
from hybridsweep.tasks import run_task
from hybridsweep.tracking import Tracker
from hybridsweep.trial import run_trial
from hybridsweep.workbench import Workbench
from tests.helpers import cheap_real_overrides, compose_config

pytestmark = pytest.mark.slow


def _overrides(shared_data: Path, cache: Path, db: Path, *extra: str) -> list[str]:
    return [
        *cheap_real_overrides(shared_data, cache, train=512, test=200, steps=3),
        f"tracking.uri=sqlite:///{db}",
        *extra,
    ]


def _runs(db: Path):
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    return mlflow.search_runs(experiment_names=["hybridsweep"], output_format="list")


def test_trial_logs_a_complete_run_and_reuses_scores(shared_data, test_cache, tmp_path, monkeypatch):
    calls = []
    original = FeatureMapRank.scores
    monkeypatch.setattr(FeatureMapRank, "scores", lambda self, *a: calls.append(1) or original(self, *a))
    db = tmp_path / "mlflow.db"
    cfg = compose_config("+criterion=fmrank", "channel_ratio=0.3", "layer_ratio=0.3",
                         *_overrides(shared_data, tmp_path / "cache", db))
    # Two workbenches on one fresh cache folder (two processes' worth of memory); decoded images come from
    # the shared test cache so the 60k JPEGs are not decoded again.
    data = Workbench(test_cache).dataset
    first_bench, second_bench = Workbench(tmp_path / "cache"), Workbench(tmp_path / "cache")
    first_bench.dataset = second_bench.dataset = data
    first = run_trial(cfg, first_bench, tmp_path / "out1")
    second = run_trial(cfg, second_bench, tmp_path / "out2")
    assert calls == [1]  # the second trial read the scores from the cache
    assert first.plan == second.plan
    # one architecture, one latency: the second trial reuses the first one's measurement instead of re-reading
    # the machine's load
    assert second.metrics["latency/cpu/median_ms"] == first.metrics["latency/cpu/median_ms"]
    assert (first.tags["latency.reused"], second.tags["latency.reused"]) == ("no", "yes")
    assert first.tags["latency.arch"] == second.tags["latency.arch"]

    (run,) = [r for r in _runs(db) if r.info.run_id == first.run_id]
    assert run.info.status == "FINISHED"
    for key in ("criterion", "order", "channel_ratio", "layer_ratio", "budget_flops", "depth_share", "seed",
                "model", "data", "git_commit"):
        assert key in run.data.params, key
    m = run.data.metrics
    for key in ("baseline/top1", "pruned/top1", "adaptive_bn/top1", "finetuned/top1", "finetuned/top5", "top1_drop",
                "params", "macs", "flops", "params_reduction_pct", "flops_reduction_pct", "latency/cpu/median_ms"):
        assert key in m, key
    assert m["flops"] == 2 * m["macs"] and 0 < m["flops_reduction_pct"] < 100
    assert run.data.tags["latency.source"] == "measured"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "model")}
    mlflow_model = {"MLmodel", "data", "conda.yaml", "python_env.yaml", "requirements.txt", "input_example.json",
                    "serving_input_example.json"}  # the run's logged model `model`, listed with its folder
    assert artifacts == {f"model/{name}" for name in ("plan.json", "model.pt", "model.onnx", *mlflow_model)}
    plan = json.loads((first.output_dir / "plan.json").read_text())
    assert len(plan["removed_blocks"]) == plan["blocks"] == 2


def test_budget_trial_meets_the_flop_budget(shared_data, test_cache, tmp_path):
    db = tmp_path / "mlflow.db"
    cfg = compose_config("+criterion=l1", "budget.flops=0.75", "depth_share=0.5",
                         *_overrides(shared_data, test_cache, db))
    result = run_trial(cfg, Workbench(test_cache), tmp_path / "out")
    assert abs(result.metrics["flops"] / (0.75 * result.metrics["baseline/flops"]) - 1) <= 0.01
    (run,) = _runs(db)
    params = run.data.params  # the ratios the solved plan used, not the 0.0 defaults
    assert float(params["channel_ratio"]) == pytest.approx(result.plan.channel_ratio, abs=1e-6)
    assert float(params["layer_ratio"]) == pytest.approx(result.plan.blocks / 7, abs=1e-6)
    assert float(params["channel_ratio"]) > 0  # not the 0.0 default the command line left it at
    assert run.data.tags["criterion"] == "l1"
    m = run.data.metrics  # against the unpruned model on the same backend
    assert m["speedup"] == pytest.approx(m["baseline/latency/cpu/median_ms"] / m["latency/cpu/median_ms"])
    assert m["latency_reduction_pct"] == pytest.approx(100 * (1 - 1 / m["speedup"]))


def test_trial_logs_its_pruned_model_as_an_mlflow_model(shared_data, test_cache, tmp_path, capfd):
    db = tmp_path / "mlflow.db"
    cfg = compose_config("+criterion=l1", "channel_ratio=0.3", "layer_ratio=0.3",
                         *_overrides(shared_data, test_cache, db))
    bench = Workbench(test_cache)
    result = run_trial(cfg, bench, tmp_path / "out")
    assert "Pickle" not in capfd.readouterr().err  # pickled on purpose (RunLogger.model): no warning per trial

    mlflow.set_tracking_uri(f"sqlite:///{db}")
    loaded = mlflow.pytorch.load_model(f"runs:/{result.run_id}/model").eval()
    ds = bench.dataset(cfg)
    folder = Tracker.from_config(cfg.tracking).download_model(result.run_id)
    saved, _ = load_pruned(build_architecture(cfg.model, len(ds.classes)), folder)
    images, _ = next(eval_batches(ds, 8, device="cpu", channels_last=False))
    with torch.no_grad():
        expected, got = saved.eval()(images), loaded(images)
    assert got.shape == (8, len(ds.classes))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)

    client = mlflow.MlflowClient()
    (output,) = client.get_run(result.run_id).outputs.model_outputs
    logged = client.get_logged_model(output.model_id)
    assert (logged.name, logged.status, logged.source_run_id) == ("model", "READY", result.run_id)
    linked = {m.key: m.value for m in logged.metrics}
    assert linked["finetuned/top1"] == pytest.approx(result.metrics["finetuned/top1"])
    assert linked.keys() == {k for k, v in result.metrics.items() if v is not None}


def test_bad_input_inside_a_trial_leaves_no_running_run(shared_data, test_cache, tmp_path):
    db = tmp_path / "mlflow.db"
    cfg = compose_config("+criterion=l1", "layer_ratio=0.95", *_overrides(shared_data, test_cache, db))
    with pytest.raises(Exception, match="would remove all 7 removable blocks"):
        run_task(cfg)
    assert {r.info.status for r in _runs(db)} == {"FAILED"}


def test_multirun_groups_jobs_under_one_parent(shared_data, test_cache, tmp_path):
    db = tmp_path / "mlflow.db"
    args = _overrides(shared_data, test_cache, db, "finetune.max_steps=1", "data.test_subset=100")
    out = subprocess.run(
        [sys.executable, "-m", "hybridsweep", "-m", "+criterion=l1,random", "layer_ratio=0,0.3", *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    runs = _runs(db)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and len(children) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {(r.data.params["criterion"], r.data.params["layer_ratio"]) for r in children} == {
        ("l1", "0.0"), ("l1", "0.3"), ("random", "0.0"), ("random", "0.3")}


def test_a_multirun_stopped_by_a_failing_job_ends_its_parent_run(shared_data, test_cache, tmp_path):
    """Hydra skips on_multirun_end when a job fails: the parent run is still closed, FAILED, not left RUNNING."""
    db = tmp_path / "mlflow.db"
    args = _overrides(shared_data, test_cache, db, "finetune.max_steps=1", "data.test_subset=100")
    out = subprocess.run(  # the first job asks to remove every block: one line, exit 2, the sweep stops
        [sys.executable, "-m", "hybridsweep", "-m", "+criterion=l1", "layer_ratio=0.95,0.3", *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 2 and "would remove all" in out.stderr, out.stderr[-2000:]
    runs = _runs(db)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FAILED"
    assert {r.info.status for r in runs} == {"FAILED"}


def test_a_multirun_stopped_by_sigterm_ends_its_parent_run_killed(shared_data, test_cache, tmp_path):
    """SIGTERM (scancel, `timeout`) mid-job: the job's run and the multirun's parent both end KILLED."""
    db, log = tmp_path / "mlflow.db", tmp_path / "run.log"
    args = _overrides(shared_data, test_cache, db, "finetune.max_steps=100000", "finetune.batch_size=8")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hybridsweep", "-m", "+criterion=l1", "layer_ratio=0,0.3",
                                 *args], cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while "fine-tune" not in log.read_text(errors="replace"):  # the first job is fine-tuning
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
        time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, log.read_text(errors="replace")[-3000:]
    runs = _runs(db)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and len(runs) == 2
    assert {r.info.status for r in runs} == {"KILLED"}
