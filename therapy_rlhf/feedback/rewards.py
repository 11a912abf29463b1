"""The reward rules: the one place that turns a rating into a reward.

* A response's reward is the mean over distinct raters of their latest
  reward (``gate.aggregate``), each lowered by ``feedback.safetyPenalty`` when
  it carries a penalised flag (clamped to 0..1).
* Under 'weighted-mean' and 'minimum' a rating's reward is recomputed from its
  criteria (criteria marked not applicable left out); a stored reward that
  disagrees is reported, not used. Only 'direct' takes the rater's own reward.

Pure functions of a rating and the run's ``feedback`` spec: no store.
"""

from __future__ import annotations

from typing import Iterable

from therapy_rlhf.contracts import names
from therapy_rlhf.contracts.records import Rating
from therapy_rlhf.contracts.spec import FeedbackSpec


class RatingError(ValueError):
    """A rating that may not be stored; the message is one line naming the problem."""


def level_value(level: int, feedback: FeedbackSpec) -> float:
    """Number key ``level`` (0..scaleLevels-1) as a 0..1 score."""
    top = feedback.scale_levels - 1
    if not 0 <= level <= top:
        raise RatingError(f"score level {level} is outside 0..{top}")
    return round(level / top, 6)


def compute_reward(
    criteria: dict[str, float], feedback: FeedbackSpec, not_applicable: Iterable[str] = ()
) -> float | None:
    """The reward the spec's rule gives for these criterion scores (None for 'direct').

    Criteria marked not applicable are left out: the weighted mean (or the
    minimum) is over the criteria that apply; None while one of those is
    unscored, or when none applies.
    """
    if feedback.reward_rule == "direct":
        return None
    skipped = set(not_applicable)
    applicable = [c for c in feedback.rubric if c.name not in skipped]
    scored = [(c, criteria[c.name]) for c in applicable if c.name in criteria]
    if not applicable or len(scored) < len(applicable):
        return None
    if feedback.reward_rule == "minimum":
        return min(s for _, s in scored)
    total = sum(c.weight for c, _ in scored)
    return round(sum(c.weight * s for c, s in scored) / total, 6)


def base_reward(rating: Rating, feedback: FeedbackSpec) -> float | None:
    """The reward the run's rule gives this rating, before the safety penalty (None: cannot be used).

    Under 'weighted-mean' and 'minimum' it is recomputed from the criteria: the
    stored ``reward`` is the client's arithmetic and is never trusted. Only the
    'direct' rule takes the rater's own reward.
    """
    if feedback.reward_rule == "direct":
        return rating.reward
    if (set(rating.criteria) | set(rating.not_applicable)) - {c.name for c in feedback.rubric}:
        return None
    return compute_reward(rating.criteria, feedback, rating.not_applicable)


def effective_reward(rating: Rating, feedback: FeedbackSpec) -> tuple[float, bool]:
    """(reward after the safety penalty, whether the penalty applied)."""
    base = base_reward(rating, feedback)
    if base is None:
        raise RatingError(f"rating {rating.id} has no usable reward under this run's rubric")
    penalized = any(f in feedback.penalized_flags for f in rating.flags)
    value = base - feedback.safety_penalty if penalized else base
    return min(1.0, max(0.0, value)), penalized


def validate_rating(rating: Rating, feedback: FeedbackSpec, response_ids: Iterable[str]) -> None:
    """Check a rating against the run's rubric, raters and batch (raises RatingError)."""
    if rating.response_id not in set(response_ids):
        raise RatingError(f"response {rating.response_id!r} does not exist in this round's batch")
    problem = rule_problem(rating, feedback)
    if problem:
        raise RatingError(problem)
    if rating.withdrawn or feedback.reward_rule == "direct":
        return
    expected = compute_reward(rating.criteria, feedback, rating.not_applicable)
    if rating.reward is not None and abs(rating.reward - expected) > 1e-6:  # type: ignore[operator]
        raise RatingError(
            f"reward {rating.reward} does not match the {feedback.reward_rule} of the criteria ({expected})"
        )


def _allow_list_name(feedback: FeedbackSpec) -> str:
    return "feedback.raters" if feedback.raters else "feedback.allowedRaters"


def rule_problem(rating: Rating, feedback: FeedbackSpec) -> str | None:
    """Why the run's rules cannot use this rating (rater not allowed, criteria not the rubric), or None."""
    if feedback.permitted_raters and rating.rater not in feedback.permitted_raters:
        return f"rater {rating.rater!r} is not in {_allow_list_name(feedback)} {feedback.permitted_raters}"
    if rating.withdrawn:
        return None
    known = {c.name for c in feedback.rubric}
    unknown = sorted((set(rating.criteria) | set(rating.not_applicable) | set(rating.notes)) - known)
    if unknown:
        return f"unknown rubric criteria {names.quote(unknown)}; the rubric has {sorted(known)}"
    problem = _not_applicable_problem(rating, feedback)
    if problem:
        return problem
    if feedback.reward_rule == "direct":
        if rating.reward is None:
            return "this run's rewardRule is 'direct': the rating needs a reward in 0..1"
        return None
    if compute_reward(rating.criteria, feedback, rating.not_applicable) is None:
        missing = sorted(known - set(rating.criteria) - set(rating.not_applicable))
        return f"criteria {missing} are not scored"
    return None


def _not_applicable_problem(rating: Rating, feedback: FeedbackSpec) -> str | None:
    """'Not applicable' only where the rubric allows it, never with a score, never for every criterion."""
    marked = set(rating.not_applicable)
    both = sorted(marked & set(rating.criteria))
    if both:
        return f"criteria {both} are both scored and marked not applicable"
    fixed = sorted(c.name for c in feedback.rubric if c.name in marked and not c.allow_not_applicable)
    if fixed:
        return f"criteria {fixed} always apply in this run and cannot be marked not applicable"
    if feedback.reward_rule != "direct" and marked >= {c.name for c in feedback.rubric}:
        return "every criterion is marked not applicable: score at least one"
    return None


def reward_disagreement(rating: Rating, feedback: FeedbackSpec) -> str | None:
    """A note when the stored reward is not what the criteria give (the stored one is not used)."""
    if rating.withdrawn or rating.reward is None or feedback.reward_rule == "direct":
        return None
    expected = compute_reward(rating.criteria, feedback, rating.not_applicable)
    if expected is None or abs(rating.reward - expected) <= 1e-6:
        return None
    return (
        f"rating {rating.id} stores reward {rating.reward}, but its criteria give {expected} "
        f"({feedback.reward_rule}): {expected} is used"
    )


def check_rater(rater: str, feedback: FeedbackSpec) -> str:
    """Validate a rater id and that the run allows it (one-line errors)."""
    try:
        names.rater_id(rater)
    except names.InvalidName as err:
        raise RatingError(str(err)) from None
    if feedback.permitted_raters and rater not in feedback.permitted_raters:
        raise RatingError(f"rater {rater!r} is not in {_allow_list_name(feedback)} {feedback.permitted_raters}")
    return rater
