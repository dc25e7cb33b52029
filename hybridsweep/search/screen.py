"""Screening before fine-tuning (`search.screen.candidates=K`): each fine-tuned trial is chosen from K sampled
plans, each scored in seconds by its adaptive-BN top-1 (`hybridsweep.adaptive_bn`) and its latency.

Only a plan that could join the front is fine-tuned: one that no other screened plan of its budget group dominates,
and that no fine-tuned trial's screen scores dominate; of those, the one that adds the most hypervolume to the
screen scores of its group's fine-tuned trials (across a FLOP budget range almost every plan is non-dominated, since
a smaller budget is both less accurate and faster, and the first of them would be no choice at all; ties go to the
sampler's order). The others are told to the study as PRUNED, with their screen scores and the reason as user
attributes, so they stay in the study the user watches (optuna-dashboard) instead of being hidden. After three
batches in a row in which no plan could join the front, the next batch fine-tunes its best-scored plan, so a search
always progresses.

Before that, a plan is screened out when it cannot add anything: its pruned model (weights and fine-tune recipe)
is one the study already fine-tuned, which would give the same result again (many depth shares lead to the same
blocks and widths), or, with `search.max_latency_ms`, its screen latency already breaks the threshold (its reason
says whether the figure was measured or predicted). `search.screen.latency=lut` then screens even with K=1: every
plan is pruned and its latency predicted (no accuracy is measured: there is nothing to rank), and only a plan under
the threshold is fine-tuned. A plan whose pruned model the study screened before, the same way, takes that plan's
scores (`screen/scores_of`) instead of measuring them again.

A queued retry (the plan of a trial that Ctrl-C, SIGTERM or a dead worker cut short; `workers.queue_again`) is
fine-tuned without screening: it was screened and chosen before, and its screen scores come with it.

Why Optuna's ask-and-tell on the study itself rather than a second study for the screen: one study holds every
plan the sampler proposed, so a resumed search, several workers and the dashboard all see the same history,
and `search.n_trials` keeps meaning the fine-tuned trials. The sampler learns from the fine-tuned trials'
objectives; a screened-out plan has none.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, Trial, TrialState

from hybridsweep.errors import UserError
from hybridsweep.redaction import redact
from hybridsweep.search.front import hypervolume, non_dominated, reference_past
from hybridsweep.search.workers import RETRY_OF

SCREENED_OUT = "screened_out"  # user attr: why a plan was not fine-tuned
ABN, LATENCY = "screen/adaptive_bn_top1", "screen/latency_ms"
MODEL = "screen/model"  # user attr: digest of the pruned weights and the fine-tune recipe (same digest, same result)
SCORED_AS = "screen/key"  # user attr: the digest and how it is screened (screen_key); one key, one result
MAX_EMPTY_BATCHES = 3
MAX_BLOCKED = 20  # plans in a row that cannot add anything (too slow, already fine-tuned) before the search stops


@dataclass
class ScreenSettings:
    """`search.screen` (README, "Screening")."""

    candidates: int = 1  # plans sampled per fine-tuned trial: 1 = none (reproducible); 4 = fine-tune 1 in 4
    test_images: int = 2000  # class-balanced test images the screen's top-1 is measured on
    latency: str = "measured"  # measured (once per architecture, the trial's backend) | lut (predicted; with
    # search.max_latency_ms it screens every plan against the threshold, even with candidates=1)

    def __post_init__(self):
        if isinstance(self.candidates, bool) or not isinstance(self.candidates, int) or self.candidates < 1:
            raise UserError(f"search.screen.candidates={self.candidates} is invalid: an integer >= 1 "
                            "(1 fine-tunes every sampled plan; K > 1 fine-tunes one plan in K)")
        if isinstance(self.test_images, bool) or not isinstance(self.test_images, int) or self.test_images < 1:
            raise UserError(f"search.screen.test_images={self.test_images} is invalid: an integer >= 1")
        if self.latency not in ("measured", "lut"):
            raise UserError(f"search.screen.latency={self.latency} is unknown; choose measured or lut")

    @classmethod
    def from_config(cls, search) -> ScreenSettings:
        """From a plain mapping's `screen` entry (none: no screening), where no schema has checked the keys."""
        value = search.get("screen") or {}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise UserError(f"search.screen.{unknown[0]} is not a setting; its settings are: "
                            f"{', '.join(sorted(known))}")
        return cls(**value)


def counted(trial: FrozenTrial) -> bool:
    """Whether a finished trial counts toward `search.n_trials` (a screened-out plan does not)."""
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) and SCREENED_OUT not in trial.user_attrs


class Screener:
    """Scores plans: prune as the trial would, re-estimate BatchNorm, top-1 on a test subset, latency."""

    def __init__(self, settings: ScreenSettings, objective):
        self.settings, self.objective = settings, objective
        self._test = {}

    def _test_subset(self, ds):
        from hybridsweep.data.sources import with_test_subset

        if ds.fingerprint not in self._test:
            self._test[ds.fingerprint] = with_test_subset(ds, min(self.settings.test_images, len(ds.test_y)))
        return self._test[ds.fingerprint]

    def score(self, trial: Trial) -> tuple[float | None, float]:
        from hybridsweep.config import to_plain
        from hybridsweep.metrics.latency.lut import DEFAULT_PROFILE
        from hybridsweep.search.workers import worker_id
        from hybridsweep.train import evaluate, resolve_device
        from hybridsweep.trial import adaptive_bn, prune_model, pruned_model_digest
        from hybridsweep.workbench import workbench

        trial.set_user_attr("screening", True)  # not yet a trial toward n_trials (see Objective._surplus)
        trial.set_user_attr("worker", worker_id())  # a killed worker's plans are failed on the next start
        cfg = self.objective.trial_config(trial)
        bench = workbench(cfg)
        device = resolve_device(cfg.device)
        ds = bench.dataset(cfg)
        base = bench.baseline(cfg, ds, device)
        model, _, _ = prune_model(cfg, copy.deepcopy(base.model).cpu(), bench.scores(cfg, ds, base), ds.input_shape)
        digest = pruned_model_digest(model, cfg)
        trial.set_user_attr(MODEL, digest)
        if self.settings.latency == "lut":
            latency_settings = {"backend": "lut", "profile": DEFAULT_PROFILE,
                                "batch_size": cfg.latency.get("batch_size", 1)}
        else:
            latency_settings = to_plain(cfg.latency)
        key = screen_key(digest, self.settings, latency_settings)
        trial.set_user_attr(SCORED_AS, key)
        earlier = scored_before(self.objective.study, key, trial.number)
        if earlier is not None:  # the same pruned model, screened the same way: the same scores
            for name in (ABN, LATENCY, "screen/latency_source", "screen/note"):
                if name in earlier.user_attrs:
                    trial.set_user_attr(name, earlier.user_attrs[name])
            trial.set_user_attr("screen/scores_of", earlier.number)
            return earlier.user_attrs.get(ABN), earlier.user_attrs[LATENCY]
        top1 = None  # one plan a batch (a latency gate only): nothing to rank, so no accuracy is measured
        if self.settings.candidates > 1:
            eval_kw = {"device": device, "batch_size": cfg.finetune.eval_batch_size}
            test = self._test_subset(ds)
            model, screened = adaptive_bn(cfg, model, test, device, eval_kw)  # the trial's step, on fewer images
            if "adaptive_bn/top1" in screened:
                top1 = screened["adaptive_bn/top1"]
            else:
                trial.set_user_attr("screen/note", "no adaptive BN (no BatchNorm, or screen.bn_images=null): "
                                                   "plain top-1")
                top1 = evaluate(model, test, desc="screen", **eval_kw).top1
            trial.set_user_attr(ABN, top1)
        model = model.cpu().eval()
        latency, _ = bench.latency(model, latency_settings, ds.input_shape)
        if latency is None:
            raise UserError("search.screen.latency=measured: the latency backend gave no figure; use "
                            "search.screen.latency=lut")
        trial.set_user_attr(LATENCY, latency.median_ms)
        trial.set_user_attr("screen/latency_source", latency.source)
        return top1, latency.median_ms


def _could_join(points: list[tuple[float, float]], front: list[tuple[float, float]]) -> list[bool]:
    """Per point (top-1, ms): non-dominated among the batch and the fine-tuned trials' screen scores."""
    losses = [(-top1, ms) for top1, ms in points + front]
    return non_dominated(losses)[: len(points)]


def _gains(points: list[tuple[float, float]], front: list[tuple[float, float]]) -> list[float]:
    """Per point (top-1, ms): the hypervolume it adds to the front's, against a reference just past the worst of
    both (`reference_past`, as the benchmarks measure a front)."""
    reference = reference_past(points + front)

    def volume(ps: list[tuple[float, float]]) -> float:
        rows = [{"top1": top1, "ms": ms, "feasible": True} for top1, ms in ps]
        return hypervolume(rows, ("top1", "ms"), (StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE), reference)

    base = volume(front)
    return [volume([*front, p]) - base for p in points]


def screens(settings: ScreenSettings, max_latency_ms: float | None) -> bool:
    """Whether the search runs the screened loop: K > 1, or a latency threshold gated by a predicted latency."""
    return settings.candidates > 1 or (max_latency_ms is not None and settings.latency == "lut")


def optimize_screened(study: optuna.Study, objective, settings: ScreenSettings, after) -> None:
    """The search loop with screening; `after(study, frozen_trial)` (progress.AfterTrial) runs after each told
    trial and says when the run is finished."""
    screener = Screener(settings, objective)
    empty = 0
    blocked: list[tuple[str, float]] = []  # (why, screen ms) of the plans in a row that could not add anything
    while not after.finished(study) and objective.fatal is None:
        batch = [study.ask()]
        retry = RETRY_OF in batch[0].user_attrs  # a stopped or dead worker's plan, chosen before: it runs alone
        if not retry:
            batch += [study.ask() for _ in range(settings.candidates - 1)]
        asked = list(batch)
        try:
            if retry:
                trial = batch[0]
            else:
                scored = _score_all(study, screener, batch, asked, after)
                scored, dropped = _gate(study, scored, objective.max_latency_ms, asked, after)
                blocked = [] if scored else blocked + dropped
                if len(blocked) >= MAX_BLOCKED:
                    raise UserError(blocked_message(blocked, objective.max_latency_ms))
                chosen = _choose(study, objective, scored, force=empty >= MAX_EMPTY_BATCHES,
                                 front_only=settings.candidates > 1)
                empty = 0 if chosen is not None else empty + 1
                for trial, top1, ms in scored:
                    if chosen is not None and trial is chosen[0]:
                        continue
                    reason = chosen[1] if chosen is not None else "no plan of its batch could join the front"
                    trial.set_user_attr(SCREENED_OUT, f"{scores_text(top1, ms)}: {reason}")
                    asked.remove(trial)
                    after(study, study.tell(trial, state=TrialState.PRUNED))
                if chosen is None:
                    continue
                trial = chosen[0]
            try:
                values = objective(trial)
            except optuna.TrialPruned:
                asked.remove(trial)
                after(study, study.tell(trial, state=TrialState.PRUNED))
                continue
            except Exception:
                asked.remove(trial)
                after(study, study.tell(trial, state=TrialState.FAIL))
                continue
            asked.remove(trial)
            after(study, study.tell(trial, values))
        finally:  # Ctrl-C, SIGTERM, a UserError: nothing asked is left RUNNING
            for trial in asked:
                study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)


def _score_all(study, screener: Screener, batch: list, asked: list, after) -> list:
    """(trial, top-1, ms) for each plan of the batch; one that cannot be built is told FAIL and must not cost the
    batch (a UserError or a stop ends the search)."""
    scored = []
    for trial in batch:
        try:
            scored.append((trial, *screener.score(trial)))
        except (UserError, KeyboardInterrupt):
            raise
        except Exception as exc:
            trial.set_user_attr("error", redact(f"{type(exc).__name__}: {exc}")[:1000])
            asked.remove(trial)
            after(study, study.tell(trial, state=TrialState.FAIL))
    return scored


def scores_text(top1: float | None, ms: float) -> str:
    """A screened plan's scores, as its reason starts."""
    return (f"adaptive-BN top-1 {top1:.2f}%, " if top1 is not None else "") + f"{ms:.2f} ms"


def screen_key(model_digest: str, settings: ScreenSettings, latency_settings: dict) -> str:
    """`screen/key`: the pruned model's digest and how it is screened (adaptive BN or not, on how many test
    images, and the latency backend with all its settings), so a resumed study that times latency another way
    measures again instead of taking scores of another kind."""
    from hybridsweep.cache import digest

    return f"{model_digest}:{digest(settings.candidates > 1, settings.test_images, latency_settings)}"


def scored_before(study: optuna.Study, key: str, number: int) -> FrozenTrial | None:
    """An earlier plan screened with the same key (`screen/key`), whose scores this one can take: many depth
    shares lead to the same blocks and widths, and adaptive BN and the latency of one pruned model give one
    result, so it is not measured again (21 of the 36 plans of the search-efficiency benchmark's screened search
    repeated a model screened before)."""
    return next((t for t in study.get_trials(deepcopy=False)
                 if t.number != number and t.user_attrs.get(SCORED_AS) == key and LATENCY in t.user_attrs), None)


def fine_tuned_twin(study: optuna.Study, digest: str | None) -> int | None:
    """The complete trial that fine-tuned the pruned model of this digest (`screen/model`), if any."""
    return next((t.number for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                 if digest is not None and t.user_attrs.get(MODEL) == digest), None)


def twin_reason(twin: int) -> str:
    return f"the same pruned model and recipe as trial {twin}, already fine-tuned"


def _gate(study, scored, max_latency_ms: float | None, asked: list, after) -> tuple[list, list]:
    """The scored plans that can add something to the study, and (why, ms) for the others, which are screened
    out (told PRUNED with the reason): a pruned model the study already fine-tuned, or one over the latency
    threshold."""
    kept, dropped = [], []
    for trial, top1, ms in scored:
        twin = fine_tuned_twin(study, trial.user_attrs.get(MODEL))
        if twin is not None:
            why = twin_reason(twin)
            dropped.append(("duplicate", ms))
        elif max_latency_ms is not None and ms > max_latency_ms:
            how = "predicted (latency=lut)" if trial.user_attrs.get("screen/latency_source") == "predicted" \
                else "measured"
            why = f"its {how} latency breaks search.max_latency_ms={max_latency_ms:g}"
            dropped.append(("slow", ms))
        else:
            kept.append((trial, top1, ms))
            continue
        trial.set_user_attr(SCREENED_OUT, f"{scores_text(top1, ms)}: {why}")
        asked.remove(trial)
        after(study, study.tell(trial, state=TrialState.PRUNED))
    return kept, dropped


def blocked_message(blocked: list[tuple[str, float]], max_latency_ms: float | None) -> str:
    slow = [ms for why, ms in blocked if why == "slow"]
    parts = [f"{len(slow)} broke search.max_latency_ms={max_latency_ms:g} (the fastest {min(slow):.2f} ms)"] \
        if slow else []
    duplicates = len(blocked) - len(slow)
    if duplicates:
        parts.append(f"{duplicates} {'was a model' if duplicates == 1 else 'were models'} the study had already "
                     "fine-tuned")
    return (f"search: the last {len(blocked)} plans could not add anything to the study: {' and '.join(parts)}; "
            + ("raise search.max_latency_ms or lower search.budgets so that plans are smaller" if slow else
               "the sampler keeps proposing what it has tried, so the front will not change: widen the space "
               "(search.depth_share, search.budgets, search.criteria) or set search.n_trials to the trials done"))


def _choose(study, objective, scored, force: bool, front_only: bool = True):
    """(trial, reason the others are screened out) for the plan to fine-tune, or None. Without `front_only` (one
    plan per batch, screened only against the latency threshold) the plan is taken as it is."""
    if not scored:
        return None
    if not front_only:
        return scored[0][0], ""
    group_of = {trial.number: objective.space.budget_group(objective.space.suggest(trial)) for trial, _, _ in scored}
    fine_tuned = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                  if ABN in t.user_attrs and LATENCY in t.user_attrs]
    gains = {}  # trial -> hypervolume it adds to its budget group's fine-tuned screen scores, if it could join
    for group in dict.fromkeys(group_of.values()):
        batch = [s for s in scored if group_of[s[0].number] == group]
        front = [(t.user_attrs[ABN], t.user_attrs[LATENCY]) for t in fine_tuned
                 if t.user_attrs.get("budget_group") == group]
        points = [(top1, ms) for _, top1, ms in batch]
        for (trial, _, _), joins, gain in zip(batch, _could_join(points, front), _gains(points, front), strict=True):
            if joins:
                gains[trial] = gain
    if gains:
        trial = max(gains, key=gains.get)  # ties: the first in the sampler's order
        return trial, (f"trial {trial.number} was fine-tuned instead (it could join the front and adds the most "
                       "to it)")
    if force:
        trial = max(scored, key=lambda s: s[1])[0]
        return trial, (f"trial {trial.number} was fine-tuned instead (best adaptive-BN top-1 after "
                       f"{MAX_EMPTY_BATCHES} batches with no plan that could join the front)")
    return None
