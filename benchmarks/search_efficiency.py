"""Search efficiency: the hypervolume NSGA-II and TPE reach against a grid over the same space with twice the trials.

    python benchmarks/search_efficiency.py --quick   # 4 trials per sampler, 8 grid points: ~4 min on 2 cores
    python benchmarks/search_efficiency.py           # 16 trials per sampler, 32 grid points, 20 fine-tune steps

Every study runs the real `run_search` (`task=search`) at a cheap fidelity: ResNet-20 with the CIFAR-10 reference
weights on a subset of the CIFAR-10 JPEG images, L1 criterion, FLOP budget 0.6, fixed fine-tune lr. The space is
what the budget leaves open: `depth_share` in [0, 1] x `order` in {layer_first, channel_first}. The grid gets
`2 x trials` points (trials values of depth_share x 2 orders). Objectives: top-1 after fine-tuning (max) and
measured batch-1 CPU latency (min), as in a real search. Hypervolume is computed on the feasible trials of each
study against one reference point shared by all (the worst top-1 minus 1 point, the worst latency + 5%).

The last line is `hv_ratio=<x>`: the better of NSGA-II's and TPE's hypervolume over the grid's. Above 1 means a
sampler beat a grid with twice its budget. At this fidelity top-1 on a small test subset and a short latency
measurement are noisy, so read the ratio as indicative, not exact.

    python benchmarks/search_efficiency.py --screen 4 --quick   # screened against unscreened NSGA-II
    python benchmarks/search_efficiency.py --screen 4 --trials 8 --experiments-fidelity   # ~50 min, resumable
    python benchmarks/search_efficiency.py --screen 4 --trials 8 --experiments-fidelity --budget-range 0.4 0.9
    python benchmarks/search_efficiency.py --screen 4 --trials 8 --experiments-fidelity --budget-range 0.4 0.9 \
        --search-criteria   # the search's own space: FLOP budget x criterion x depth share x order

`--screen K` instead runs two NSGA-II studies with the same number of fine-tuned trials, one fine-tuning every
sampled plan and one choosing each fine-tuned plan from K screened by adaptive-BN top-1 and latency
(`search.screen.candidates=K`), and compares hypervolume per hour of CPU time. The two studies run side by side,
each in its own process with half the cores (its own study file, its own ledger), so both see the same load; each
counts its own process's CPU time. What both read from the shared cache (decoded data, the baseline's scores,
accuracy and latency) is built before they start, so neither pays for it; if one stops, the other is stopped too.
CPU time, not wall time: the other study's work stretches wall time, CPU time only by what threads waiting on a
preempted peer spin away (set OMP_WAIT_POLICY=PASSIVE). Latency is timed on one thread as the median of the fastest
round, which other work can only slow down. Screening pays where fine-tuning dominates a trial's cost, so this mode
fine-tunes a full epoch of the training subset. `--budget-range` searches the FLOP budget too (one front over all
budgets, as experiments/pareto_search), a space with many more distinct pruned models; `--search-criteria` the
criterion too (`search.criteria`, as a search does by default), whose scores are built before the studies start. The
line before the last, `time_to_same_hv_ratio=<x>`, is how many times longer the unscreened study took to reach its
final hypervolume than the screened one took to reach it (busy seconds: the union of each study's trial run times,
screened plans included; with equal shares of the cores they compare as CPU time does). Last line:
`hv_per_hour_ratio=<x>` (screened over unscreened, per CPU-hour); the goal is >= 2.
"""

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

from hybridsweep.cache import atomic_write
from hybridsweep.search import run_search
from hybridsweep.search.front import front_rows, hypervolume, objective_names, reference_past
from hybridsweep.search.objective import compose_trial_config

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def fidelity(quick: bool, cache: Path, root: Path, device: str) -> list[str]:
    return [
        "model=resnet20",
        f"model.weights={DATA}/weights/cifar10_resnet20.pth",
        "data=imagefolder",
        f"data.root={DATA}/cifar10-jpg.tar.gz",
        "data.stats=cifar10",
        f"data.train_subset={512 if quick else 5000}",
        f"data.test_subset={200 if quick else 1000}",
        f"screen.bn_images={256 if quick else 2000}",
        "finetune.epochs=1",
        f"finetune.max_steps={2 if quick else 20}",
        "finetune.batch_size=64",
        f"latency.max_runs={100 if quick else 300}",
        f"device={device}",
        "+criterion=l1",
        "budget.flops=0.6",
        "finetune.lr=0.01",
        f"paths.cache_dir={cache}",
        f"paths.output_dir={root}/out",
        "tracking.enabled=false",
        f"search.storage=sqlite:///{root}/studies.db",
        "search.seed=0",
    ]


def run_studies(base: list[str], runs: dict[str, list[str]], root: Path | None = None) -> tuple[dict, dict]:
    """One study per entry of `runs` (its extra overrides), one after the other, in this process; the studies and
    what each spent (`timed_search`'s ledger: wall and CPU seconds, this process with all its threads, and the
    windows it ran in).

    With a `root` (persistent study storage) each study's seconds survive a kill in its ledger there
    (`seconds-<name>.json`), saved every half minute; a rerun resumes each study where it stopped and adds to them.
    A trial cut short by the kill is rerun; its lost work stays counted, as it would in a real search that was
    interrupted."""
    studies, spent = {}, {}
    for name, extra in runs.items():
        ledger = root / f"seconds-{name}.json" if root is not None else None
        studies[name], spent[name] = timed_search([*base, *extra, f"search.study_name=bench-{name}"], ledger)
    return studies, spent


def side_by_side(base: list[str], runs: dict[str, list[str]], root: Path) -> tuple[dict, dict]:
    """`run_studies`, but the unfinished studies run at the same time, each in its own process with an equal share
    of the cores, so that they see the same machine load; then this process loads the finished studies and their
    ledgers. If one study stops, the others are stopped too (SIGTERM: their finished trials and seconds are kept),
    since one running alone would no longer share the load."""
    import multiprocessing
    from multiprocessing.connection import wait

    threads = max(1, len(os.sched_getaffinity(0)) // len(runs))
    spawn = multiprocessing.get_context("spawn")
    workers = {name: spawn.Process(target=_one_study, name=name, args=(base, {name: extra}, root, threads))
               for name, extra in runs.items() if not read_ledger(root / f"seconds-{name}.json")["done"]}
    if workers:
        warm_cache(base)
    try:
        for worker in workers.values():
            worker.start()
        running = list(workers.values())
        while running:
            wait([worker.sentinel for worker in running])
            running = [worker for worker in running if worker.exitcode is None]
            if any(worker.exitcode for worker in workers.values() if worker.exitcode is not None):
                break
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the line below names how each study ended
        pass
    finally:  # a failed study, Ctrl-C or SIGTERM here: stop the others cleanly
        for worker in workers.values():
            if worker.is_alive():
                worker.terminate()
        for worker in workers.values():
            if worker.pid is not None:
                worker.join()
    failed = [f"{name} (exit code {worker.exitcode})" for name, worker in workers.items() if worker.exitcode]
    if failed:
        raise SystemExit(f"stopped: {', '.join(failed)}; their output is above. Rerun the same command: finished "
                         "trials and seconds are kept and it resumes.")
    return run_studies(base, runs, root)


def warm_cache(base: list[str]) -> None:
    """Build here, before the studies start, what they read from the shared cache (decoded data, baseline scores,
    the baseline's accuracy and latency): otherwise whichever study asks first pays for it in its CPU time."""
    from hybridsweep.config import to_plain
    from hybridsweep.search.study import check_inputs
    from hybridsweep.train import resolve_device
    from hybridsweep.workbench import workbench

    fixed = any(o.startswith("+criterion=") for o in base)
    for criterion in [None] if fixed else compose_trial_config(base).search.criteria:  # each searched one's scores
        cfg = compose_trial_config([*base, f"+criterion={criterion}"] if criterion else base)
        check_inputs(cfg)  # data, baseline, scores, one pruned plan
    bench, device = workbench(cfg), resolve_device(cfg.device)
    ds = bench.dataset(cfg)
    base_model = bench.baseline(cfg, ds, device)
    bench.baseline_accuracy(cfg, ds, base_model, device)
    bench.latency(base_model.model, to_plain(cfg.latency), ds.input_shape)


def _stop_once(signum, frame) -> None:
    """Ctrl-C or SIGTERM, as Ctrl-C: the running trial ends FAIL and the ledger is saved; the signals after it are
    ignored, so that the parent's SIGTERM, right behind a Ctrl-C sent to both, cannot cut that clean-up short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def _one_study(base: list[str], run: dict[str, list[str]], root: Path, threads: int) -> None:
    import torch

    signal.signal(signal.SIGINT, _stop_once)
    signal.signal(signal.SIGTERM, _stop_once)
    torch.set_num_threads(threads)
    try:
        run_studies(base, run, root)
    except KeyboardInterrupt:
        sys.exit(130)  # stopped, not failed: one line from run_search, no traceback


def read_ledger(ledger: Path | None) -> dict:
    """The seconds earlier runs of a study spent, the windows they ran in (`windows`: [start, end] as ISO times,
    the end saved every half minute, so a kill loses at most that), and whether it finished (`done`)."""
    if ledger is None or not ledger.exists():
        return {"wall_s": 0.0, "cpu_s": 0.0, "windows": [], "done": False}
    return {"windows": [], **json.loads(ledger.read_text())}  # a ledger from before windows were kept


def timed_search(overrides: list[str], ledger: Path | None):
    """`run_search` and the wall and CPU seconds it took, added to those an earlier run saved in `ledger` (saved
    there as it goes)."""
    before = read_ledger(ledger)
    if before["done"]:  # finished in an earlier run: only load it
        return run_search(compose_trial_config(overrides), overrides), before
    start, cpu_start = time.perf_counter(), time.process_time()
    now = datetime.now().isoformat()  # local and naive, as Optuna's trial times
    spent = {**before, "windows": [*before["windows"], [now, now]]}

    def save(done: bool) -> None:
        spent["windows"][-1][1] = datetime.now().isoformat()
        spent.update(wall_s=before["wall_s"] + time.perf_counter() - start,
                     cpu_s=before["cpu_s"] + time.process_time() - cpu_start, done=done)
        if ledger is not None:
            atomic_write(ledger, lambda tmp: tmp.write_text(json.dumps(spent, indent=1)))

    stop = threading.Event()
    saver = threading.Thread(target=lambda: [save(False) for _ in iter(lambda: stop.wait(30), True)], daemon=True)
    saver.start()
    try:
        study = run_search(compose_trial_config(overrides), overrides)
    finally:  # a kill (SIGTERM, Ctrl-C) keeps the seconds spent since the last save too
        stop.set()
        saver.join()
        save(False)
    save(True)
    return study, spent


def hypervolumes(studies: dict):
    """Each study's front rows and hypervolume against one reference point shared by all: the worst feasible
    top-1 minus 1 point, the worst latency + 5%."""
    rows = {name: front_rows(study) for name, study in studies.items()}
    first = next(iter(studies.values()))
    names, directions = objective_names(first), first.directions
    every = [r for rs in rows.values() for r in rs if r["feasible"]]
    reference = reference_past([(r[names[0]], r[names[1]]) for r in every])
    return rows, names, reference, {name: hypervolume(rs, names, directions, reference) for name, rs in rows.items()}


def seconds_to_reach(study, rows: list[dict], names, reference, target: float,
                     windows: list[list[str]]) -> float | None:
    """The study's busy seconds (the union of its trials' run times, screened plans included, within the windows
    its runs lasted: `read_ledger`) until the fine-tuned trials finished so far first reach hypervolume `target`;
    None if they never do. The windows leave out the downtime between runs, which a trial a kill left running spans:
    it is told FAIL only when the study resumes. No windows (an older ledger): the spans as they are."""
    from optuna.trial import TrialState

    trials = [t for t in study.get_trials(deepcopy=False) if t.datetime_start and t.datetime_complete]
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.datetime_complete)
    for k, last in enumerate(done, start=1):
        numbers = {t.number for t in done[:k]}
        if hypervolume([r for r in rows if r["trial"] in numbers], names, study.directions, reference) >= target:
            spans = [(t.datetime_start, t.datetime_complete) for t in trials
                     if t.datetime_complete <= last.datetime_complete]
            return busy_seconds(spans, [(datetime.fromisoformat(a), datetime.fromisoformat(b)) for a, b in windows])
    return None


def busy_seconds(spans: list[tuple[datetime, datetime]], windows: list[tuple[datetime, datetime]]) -> float:
    """Seconds covered by at least one span, counting only what lies within a window (all of it without windows)."""
    if windows:
        spans = [(max(a, start), min(b, end)) for a, b in spans for start, end in windows]
    busy, covered = 0.0, datetime.min  # covered: the latest end counted so far
    for a, b in sorted(spans):
        busy += max(0.0, (b - max(a, covered)).total_seconds())
        covered = max(covered, b)
    return busy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 trials per sampler (a few minutes on 2 cores)")
    parser.add_argument("--trials", type=int, default=None, help="trials per sampler (the grid gets twice as many)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--experiments-fidelity", action="store_true",
                        help="with --screen: the experiments' ResNet-56, all 50k/10k images, one fine-tune epoch")
    parser.add_argument("--budget-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="with --screen: search the FLOP budget in [LOW, HIGH] too, as experiments/pareto_search "
                             "does, instead of fixing it at 0.6")
    parser.add_argument("--search-criteria", action="store_true",
                        help="with --screen: search the criterion too (search.criteria, by default l1, l2, fmrank, "
                             "bnscale, taylor) instead of fixing it at L1")
    parser.add_argument("--screen", type=int, default=None, metavar="K",
                        help="compare screened (K plans per fine-tuned trial) with unscreened NSGA-II")
    args = parser.parse_args()
    if args.screen is not None:
        screened_against_unscreened(args)
        return
    if args.budget_range or args.experiments_fidelity or args.search_criteria:
        parser.error("--budget-range, --search-criteria and --experiments-fidelity go with --screen K")
    n = args.trials or (4 if args.quick else 16)
    cache = Path(os.environ.get("HYBRIDSWEEP_CACHE", Path.home() / ".cache" / "hybridsweep")).expanduser()
    with tempfile.TemporaryDirectory(prefix="search-efficiency-") as tmp:
        root = Path(tmp)
        base = fidelity(args.quick, cache, root, args.device)
        plans = {
            "nsga2": ["search=nsga2", f"search.n_trials={n}", f"search.population_size={max(2, n // 2)}"],
            "tpe": ["search=tpe", f"search.n_trials={n}", f"search.n_startup_trials={max(2, n // 2)}"],
            "grid": ["search=grid", "search.n_trials=null", f"search.grid_points={n}"],
        }
        studies, spent = run_studies(base, plans)
        rows, names, reference, hv = hypervolumes(studies)

    print(f"\nspace: depth_share in [0, 1] x order; objectives: {names[0]} (max), {names[1]} (min); "
          f"reference point: {reference[0]:.2f}, {reference[1]:.3f}")
    header = ("sampler", "trials", "front", "best top-1", "best ms", "hypervolume", "time s")
    print(f"{header[0]:8} " + " ".join(f"{h:>{w}}" for h, w in zip(header[1:], (6, 5, 10, 8, 11, 7), strict=True)))
    for name, rs in rows.items():
        front = [r for r in rs if r["pareto"]]
        print(f"{name:8} {len(rs):6d} {len(front):5d} {max(r[names[0]] for r in rs):10.2f} "
              f"{min(r[names[1]] for r in rs):8.3f} {hv[name]:11.3f} {spent[name]['wall_s']:7.0f}")
    best = max(hv["nsga2"], hv["tpe"])
    print(f"hv_ratio={best / hv['grid']:.3f}" if hv["grid"] > 0 else "hv_ratio=inf")


def screened_against_unscreened(args) -> None:
    from machine import load_average

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # as Ctrl-C: the studies' processes are stopped too
    n = args.trials or (4 if args.quick else 12)
    cache = Path(os.environ.get("HYBRIDSWEEP_CACHE", Path.home() / ".cache" / "hybridsweep")).expanduser()
    print(f"load average at start: {load_average()}")
    with tempfile.TemporaryDirectory(prefix="search-efficiency-") as tmp:
        # hours of CPU at the experiments' fidelity: keep the studies and their seconds, so a rerun resumes
        space = ("-budgets{}-{}".format(*args.budget_range) if args.budget_range else "") \
            + ("-criteria" if args.search_criteria else "")
        root = cache / "benchmarks" / f"search-efficiency-screen{args.screen}-{n}{space}-side-by-side" \
            if args.experiments_fidelity else Path(tmp)
        base = [o for o in fidelity(args.quick, cache, root, args.device) if not o.startswith("search.storage=")]
        if args.budget_range:
            base = [o for o in base if not o.startswith("budget.flops=")]
            base.append("search.budget_range=[{},{}]".format(*args.budget_range))
        if args.search_criteria:
            base = [o for o in base if not o.startswith("+criterion=")]
        base += ["finetune.max_steps=null", "search=nsga2", f"search.n_trials={n}",
                 f"search.population_size={max(2, n // 2)}"]
        if args.experiments_fidelity:  # where a fine-tune costs minutes, as in experiments/ (conf/fidelity/cpu.yaml)
            base += ["model=resnet56", f"model.weights={DATA}/weights/cifar10_resnet56.pth", "data.train_subset=null",
                     "data.test_subset=null", "screen.bn_images=2000", "finetune.batch_size=128"]
            root.mkdir(parents=True, exist_ok=True)
            print(f"studies and their CPU seconds in {root} (a rerun resumes them; delete it to start over)")
        runs = {"unscreened": ["search.screen.candidates=1"],
                "screened": [f"search.screen.candidates={args.screen}", "search.screen.test_images=1000"]}
        for name, extra in runs.items():  # one file each: two processes writing one SQLite file wait on its lock
            extra.append(f"search.storage=sqlite:///{root}/{name}.db")
        studies, spent = side_by_side(base, runs, root)
        rows, names, reference, hv = hypervolumes(studies)
        target = hv["unscreened"]
        reach = {name: seconds_to_reach(studies[name], rows[name], names, reference, target, spent[name]["windows"])
                 for name in runs}
    per_hour = {name: hv[name] / (spent[name]["cpu_s"] / 3600) for name in runs}
    print(f"\nfine-tuned trials per study: {n}; screened: {args.screen} plans per fine-tuned trial; "
          f"load average at end: {load_average(at_start=False)}")
    for name in runs:
        sampled = len(studies[name].trials)
        print(f"{name:10} plans {sampled:3d}  hypervolume {hv[name]:9.3f}  wall {spent[name]['wall_s']:6.0f} s  "
              f"CPU {spent[name]['cpu_s']:6.0f} s  hv per CPU-hour {per_hour[name]:9.3f}")
    print(f"busy seconds to reach the unscreened study's final hypervolume ({target:.3f}): " + ", ".join(
        f"{name} {reach[name]:.0f}" if reach[name] is not None else f"{name} never" for name in runs))
    if reach["screened"] and reach["unscreened"]:
        print(f"time_to_same_hv_ratio={reach['unscreened'] / reach['screened']:.3f}")
    print(f"hv_per_hour_ratio={per_hour['screened'] / per_hour['unscreened']:.3f}" if per_hour["unscreened"] > 0
          else "hv_per_hour_ratio=inf")


if __name__ == "__main__":
    main()
