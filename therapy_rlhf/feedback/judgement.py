"""Does the reward model have skill? The drift rule, judged at each gate, and what it decides next.

Each gate that closes on responses the model had predicted (before the experts
scored them) judges it (``judge`` -> the gate's ``RewardModelCheck``):

* its **skill score** on those fresh ratings, ``1 - MSE / MSE of their own
  mean``, and a one-sided **lower bound** at ``driftConfidence`` from a
  bootstrap over the responses (``rm_skill.skill_interval``);
* a round with fewer than ``minJudged`` such ratings (or ratings that do not
  vary) is not *judged*: it leaves the previous judgement standing.

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
from therapy_rlhf.feedback.rm_skill import skill_interval, spearman
from therapy_rlhf.feedback.rounds import read_gate
from therapy_rlhf.store.backends import Store


def uses_model(spec: SelectionSpec) -> bool:
    """Whether the reward model decides anything (what the experts see, or rewards); only then can it drift."""
    return spec.mode == "active" or (spec.mode != "all" and spec.unselected == "model")


def judge(predictions: Predictions | None, spec: SelectionSpec, rewards: dict[str, float], trained_on: int = 0) -> RewardModelCheck | None:
    """The model judged on the experts' fresh ``rewards`` (response id -> reward), or None with no predictions."""
    if predictions is None or not predictions.predictions:
        return None
    pairs = [(predictions.predictions[rid][0], value) for rid, value in sorted(rewards.items()) if rid in predictions.predictions]
    if not pairs:
        return RewardModelCheck(responses=0, drifted=False, trained_on=trained_on, feature_set=predictions.feature_set)
    pred, truth = [p for p, _ in pairs], [t for _, t in pairs]
    mae = round(sum(abs(p - t) for p, t in pairs) / len(pairs), 6)
    skill, lower = skill_interval(pred, truth, confidence=spec.drift_confidence, seed=spec.seed + predictions.round)
    judged = len(pairs) >= spec.min_judged and lower is not None
    rho = spearman(pred, truth)
    return RewardModelCheck(
        responses=len(pairs), mae=mae,
        skill=None if skill is None else round(skill, 6), skill_lower=None if lower is None else round(lower, 6),
        confidence=spec.drift_confidence, rank_correlation=None if rho is None else round(rho, 6),
        judged=judged, drifted=judged and lower is not None and lower <= 0.0,
        trained_on=trained_on, feature_set=predictions.feature_set,
    )


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
