"""Does the reward model have skill? The drift rule, judged at each gate, and what it decides next.

Each gate that closes on responses the model had predicted (before the experts
scored them) judges it (``judge`` -> the gate's ``RewardModelCheck``):

* only on **held-out** ratings: responses picked at random, never by the
  model (whose picks are the ones it is least sure of, so a judgement there
  would understate it) and never for safety. Rounds that pick at random are
  held out whole; rounds where the model picks hold out ``holdout`` of the
  budget. When a round has fewer than ``minJudged`` of them, earlier rounds'
  held-out ratings are pooled in, newest first, up to ``judgeRounds`` rounds;
* its **skill score** there, ``1 - SSE / SS of each round's ratings about
  their own mean``, and a one-sided **lower bound** at ``driftConfidence``
  from a bootstrap over responses within each round
  (``rm_skill.pooled_skill_interval``);
* with fewer than ``minJudged`` pooled (or ratings that do not vary) the gate
  does not *judge*: the previous judgement stands.

The next round's selection follows the newest judged round (``decide``):

* never judged yet (the first rounds after the model is fitted): **probation**
  -- the budget is picked at random and nothing is model-scored, so the picks
  are a fair held-out set the model is judged on before it decides anything
  (``probation: false`` lets it decide at once, issue 12's behaviour);
* lower bound <= 0 (no better than the mean): **fallback**
  (``feedback.selection.fallback``: uniform, the same random held-out set, or
  all) with a ``RewardModelDrift`` decision;
* lower bound > 0: the requested mode (``ModelSkilled``), announced as
  ``RewardModelRecovered`` when the judged round before it had found none.

A run whose model decides nothing (``uniform`` with ``unselected: omit``) is
judged and reported, but never falls back.
"""

from __future__ import annotations

from dataclasses import dataclass

from therapy_rlhf.contracts import phases
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.contracts.records import Drift, Predictions, RewardModelCheck
from therapy_rlhf.contracts.spec import SelectionSpec
from therapy_rlhf.feedback.rm_skill import pooled_skill_interval, spearman
from therapy_rlhf.feedback.rounds import read_gate
from therapy_rlhf.store.backends import Store


def uses_model(spec: SelectionSpec) -> bool:
    """Whether the reward model decides anything (what the experts see, or rewards); only then can it drift."""
    return spec.mode == "active" or (spec.mode != "all" and spec.unselected == "model")


def judge(
    predictions: Predictions | None, spec: SelectionSpec, rewards: dict[str, float], held_out: list[str],
    earlier: list[tuple[int, RewardModelCheck]] = (), trained_on: int = 0,  # type: ignore[assignment]
) -> RewardModelCheck | None:
    """The model judged on the experts' fresh ``rewards`` (response id -> reward) of the random ``held_out``
    picks, pooled with ``earlier`` rounds' held-out ratings (newest first) until ``minJudged``; None with no
    predictions. The error (MAE) and rank correlation are over every fresh rating it predicted."""
    if predictions is None or not predictions.predictions:
        return None
    fresh = [(predictions.predictions[rid][0], value) for rid, value in sorted(rewards.items()) if rid in predictions.predictions]
    mine = {rid: [predictions.predictions[rid][0], rewards[rid]] for rid in held_out if rid in rewards and rid in predictions.predictions}
    groups, rounds = [mine], [predictions.round]
    for q, check in earlier:
        if sum(len(g) for g in groups) >= spec.min_judged or len(groups) >= spec.judge_rounds:
            break
        if check.held_out:
            groups.append(check.held_out)
            rounds.append(q)
    pooled = [([v[0] for v in g.values()], [v[1] for v in g.values()]) for g in groups if g]
    n = sum(len(g) for g in groups)
    skill, lower = pooled_skill_interval(pooled, confidence=spec.drift_confidence, seed=spec.seed + predictions.round)
    judged = n >= spec.min_judged and lower is not None
    rho = spearman([p for p, _ in fresh], [t for _, t in fresh])
    return RewardModelCheck(
        responses=len(fresh), mae=round(sum(abs(p - t) for p, t in fresh) / len(fresh), 6) if fresh else None,
        skill=None if skill is None else round(skill, 6), skill_lower=None if lower is None else round(lower, 6),
        confidence=spec.drift_confidence, rank_correlation=None if rho is None else round(rho, 6),
        judged=judged, drifted=judged and lower is not None and lower <= 0.0,
        held_out={rid: [round(p, 6), round(t, 6)] for rid, (p, t) in mine.items()}, judged_on=n,
        pooled_rounds=[r for r, g in zip(rounds, groups) if g], trained_on=trained_on, feature_set=predictions.feature_set,
    )


def recent_checks(store: Store, paths: RunPaths, round_no: int, limit: int) -> list[tuple[int, RewardModelCheck]]:
    """The checks of the ``limit`` closed rounds before ``round_no`` that have one, newest first."""
    out: list[tuple[int, RewardModelCheck]] = []
    for q in range(round_no - 1, 0, -1):
        gate = read_gate(store, paths, q)
        if gate is not None and gate.reward_model is not None:
            out.append((q, gate.reward_model))
            if len(out) >= limit:
                break
    return out


@dataclass(frozen=True)
class Decision:
    """What the model may do in the next round, and why (a phases reason and a sentence)."""

    reason: str
    model_decides: bool
    message: str
    drift: Drift | None = None


def judged_checks(store: Store, paths: RunPaths, round_no: int, limit: int = 2) -> list[tuple[int, RewardModelCheck]]:
    """The newest ``limit`` judged checks of closed rounds before ``round_no``, newest first."""
    out: list[tuple[int, RewardModelCheck]] = []
    for q in range(round_no - 1, 0, -1):
        gate = read_gate(store, paths, q)
        if gate is not None and gate.reward_model is not None and (gate.reward_model.judged or gate.reward_model.bound is not None):
            out.append((q, gate.reward_model))
            if len(out) >= limit:
                break
    return out


def _describe(check: RewardModelCheck) -> str:
    if check.skill is None:  # a gate written before issue 21: its error against driftBound
        return f"error {check.mae:.3f} against driftBound {check.bound:g}"
    return f"skill {check.skill:.3f} (lower bound {check.skill_lower:.3f} at {check.confidence:g}) on {check.responses} fresh ratings"


def decide(store: Store, paths: RunPaths, spec: SelectionSpec, round_no: int) -> Decision:
    """The model's part in round ``round_no``, from the newest judged gates (the model is fitted)."""
    checks = judged_checks(store, paths, round_no)
    if not checks:
        if not spec.probation:
            return Decision(phases.R_SELECTION_SKILLED, True, "the reward model has not been judged yet (probation off)")
        return Decision(
            phases.R_SELECTION_PROBATION, False,
            "the reward model has not been judged yet: random picks, on which its gate judges it",
        )
    (q, newest), older = checks[0], (checks[1][1] if len(checks) > 1 else None)
    if newest.drifted:
        return Decision(
            phases.R_REWARD_MODEL_DRIFT, False,
            f"reward model drift: round {q}'s gate found it no better than the mean ({_describe(newest)}); "
            f"round {round_no} falls back to {spec.fallback} and judges it again",
            Drift(round=q, mae=newest.mae, skill=newest.skill, skill_lower=newest.skill_lower, bound=newest.bound),
        )
    if older is not None and older.drifted:
        return Decision(
            phases.R_REWARD_MODEL_RECOVERED, True,
            f"the reward model has skill again: round {q}'s gate found {_describe(newest)}; selection resumes",
        )
    return Decision(phases.R_SELECTION_SKILLED, True, f"round {q}'s gate found {_describe(newest)}")
