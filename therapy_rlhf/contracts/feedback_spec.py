"""The run spec's feedback section: the rubric, who may rate, the reward rule, the gate, and which
responses go to the experts (``feedback.selection``)."""

from __future__ import annotations

import re

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator


from therapy_rlhf.contracts.signing import KeyFormatError, parse_public_key
from therapy_rlhf.contracts.spec_base import MAX_SEED, RATING_FLAGS, ItemId, Probability, RaterId, SpecModel


class RaterKey(SpecModel):
    """A registered rater: the id and the public key their ratings must be signed with."""

    id: RaterId
    public_key: str = Field(..., max_length=100, description="'ed25519:<base64>' as `therapy-rlhf rater-key init` prints it.")

    @field_validator("public_key")
    @classmethod
    def _parses(cls, v: str) -> str:
        try:
            parse_public_key(v)
        except KeyFormatError as err:
            raise ValueError(str(err)) from None
        return v


class Criterion(SpecModel):
    """One rubric criterion, scored 0..1 (number keys map to evenly spaced levels)."""

    name: ItemId
    label: str | None = Field(
        None, min_length=1, max_length=60,
        description="What raters read (default: the name in words, 'safe-language' -> 'Safe language').",
    )
    description: str = ""
    weight: float = Field(1.0, gt=0, le=100)
    levels: list[Annotated[str, Field(min_length=1, max_length=400)]] = Field(
        default_factory=list,
        max_length=10,
        description="What each level means, lowest first, one per feedback.scaleLevels ('Short name: what it "
        "looks like'); empty: the project's defaults for the paper's criteria, generic anchors otherwise.",
    )
    allow_not_applicable: bool = Field(
        True,
        description="Raters may mark this criterion 'not applicable' for a response: it is recorded and left "
        "out of the reward. Set false where it always applies.",
    )

    @property
    def title(self) -> str:
        """The criterion as raters read it."""
        if self.label:
            return self.label
        words = re.sub(r"[-_.]+", " ", self.name).strip()
        return words[:1].upper() + words[1:]


def _paper_rubric() -> list[Criterion]:
    return [
        Criterion(name="empathy", description="Empathetic acknowledgment of the patient's feelings."),
        Criterion(name="boundaries", description="Keeps appropriate therapeutic boundaries."),
        Criterion(name="safe-language", description="Avoids harmful or dismissive language."),
        Criterion(
            name="guidance", description="Constructive guidance without medical or medication advice."
        ),
        Criterion(name="overall", description="Overall therapeutic value of the response."),
    ]


# feedback.selection's modes (the selection record says which one a round used).
SelectionMode = Literal["all", "uniform", "active"]


# A count of a batch's responses, or a share of it: 8, or "25%" (percent of the batch, rounded to the
# nearest response, at least 1).
SHARE_PATTERN = r"^(100|[0-9]{1,2}(\.[0-9]{1,2})?)%$"
CountOrShare = Annotated[int, Field(ge=1, le=100000)] | Annotated[str, Field(pattern=SHARE_PATTERN)]
FallbackMode = Literal["uniform", "all"]


def responses_of(amount: int | str, batch: int) -> int:
    """How many of a batch of ``batch`` responses ``amount`` (a count or "NN%") means (never more than the batch)."""
    if isinstance(amount, str):
        share = float(amount.rstrip("%")) / 100.0
        return min(batch, max(1, int(share * batch + 0.5)))
    return min(batch, amount)


class SelectionSpec(SpecModel):
    """Which responses of a round go to the experts (issue 12: spend the expert's time where it teaches most).

    ``all`` sends every response (the paper's method). ``uniform`` and ``active`` send ``budget``
    responses per round: uniform picks at random, spread across prompts; active picks where the
    reward model (fitted to the run's gated expert ratings) is least certain, spread across prompts.
    Every response with a crisis cue or a safety-screen hit goes to the experts whatever the mode,
    outside the budget (issue 21).
    """

    mode: SelectionMode = Field(
        "all", description="all: every response to the experts; uniform / active: 'budget' per round."
    )
    # A share, not a count: issue 21's benchmarks measured a quarter of each batch (with up to twice the
    # rounds) reaching what rating everything reached with under half the ratings; a fixed count would be a
    # different share of every batch size (docs/active-learning.md, "Evidence and recommendation").
    budget: CountOrShare = Field(  # type: ignore[valid-type]
        "25%",
        description="Responses per round the experts score for learning (uniform, active): a count (8) or a share "
        "of the batch ('25%', the default). Safety-flagged responses always go as well and do not count toward it.",
    )
    safety_cap: CountOrShare = Field(  # type: ignore[valid-type]
        "50%",
        description="Safety-flagged responses in a batch above which a SafetyCapExceeded warning is raised (crises "
        "dominate the batch); they all still go to the experts. A count or a share of the batch.",
    )
    unselected: Literal["omit", "model"] = Field(
        "omit",
        description="What responses not sent to the experts contribute: nothing (left out of the update), or the "
        "reward model's prediction minus uncertaintyPenalty x its ensemble spread, marked model-scored.",
    )
    uncertainty_penalty: float = Field(
        1.0, ge=0.0, le=10.0, description="Model-scored reward = prediction - this x ensemble standard deviation."
    )
    min_ratings: int = Field(
        16, ge=2, le=100000,
        description="Expert ratings the reward model needs before it picks or scores anything; before that "
        "selection is uniform and unselected responses are left out.",
    )
    drift_confidence: float = Field(
        0.8, ge=0.5, le=0.99,
        description="The reward model decides (active picks, model scores) only while the lower bound of its skill "
        "score on the last judged round's fresh expert ratings, at this one-sided confidence (bootstrap over "
        "responses), is above 0: better than predicting the mean of those ratings. Otherwise the next round falls "
        "back (see fallback) and is judged again.",
    )
    fallback: FallbackMode = Field(
        "uniform",
        description="What a round does while the model has no skill: uniform (the budget at random, nothing "
        "model-scored; the random picks are the held-out set the model is judged on) or all (every response).",
    )
    probation: bool = Field(
        True,
        description="A newly fitted model is on probation (random picks, nothing model-scored) until a gate judges "
        "it better than the mean; false lets it decide from its first fit until a gate finds it no better.",
    )
    holdout: CountOrShare = Field(  # type: ignore[valid-type]
        "25%",
        description="In rounds where the model picks (active), this much of the budget (a count or a share of it) "
        "is picked at random instead: the held-out ratings its skill is judged on. Rounds that pick at random "
        "are judged on all their picks.",
    )
    judge_rounds: int = Field(
        3, ge=1, le=50,
        description="Rounds whose held-out ratings a gate may pool (newest first, until minJudged) to judge the model.",
    )
    min_judged: int = Field(
        6, ge=3, le=10000,
        description="Held-out expert ratings (pooled over up to judgeRounds rounds) a gate needs to judge the "
        "model; with fewer the previous judgement stands.",
    )
    drift_bound: float | None = Field(
        None,
        description="Removed (issue 21): ignored, with a warning. Drift is judged by skill (driftConfidence), "
        "not by an absolute error bound.",
    )
    features: list[Literal["hashed", "tokens", "embedding"]] = Field(
        default_factory=lambda: ["hashed", "tokens", "embedding"], min_length=1,
        description="Feature sets the reward model may use (each run picks one by cross-validated skill): hashed "
        "words and characters, the policy tokenizer's ids, MiniLM sentence embeddings.",
    )
    ensemble: int = Field(5, ge=2, le=32, description="Bootstrap members of the reward model.")
    ridge: float = Field(1.0, gt=0.0, le=1e6, description="L2 penalty tried besides 0.1, 1 and 10 by cross-validation.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the bootstrap and of uniform picks (mixed with the round).")

    @field_validator("budget", "safety_cap", "holdout", mode="before")
    @classmethod
    def _count_or_share(cls, value: object) -> object:
        """One clear line for anything that is neither a count nor a share (the union's own errors name both)."""
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 100000:
            return value
        if isinstance(value, str) and re.fullmatch(SHARE_PATTERN, value) and float(value[:-1]) > 0:
            return value
        raise ValueError(f"expected a count (a whole number from 1, e.g. 8) or a share of the batch ('25%'), got {value!r}")

    def warnings(self) -> list[str]:
        """Settings accepted but not used, one line each."""
        if self.drift_bound is None:
            return []
        return [
            f"feedback.selection.driftBound ({self.drift_bound:g}) is no longer used: the reward model's drift is "
            "judged by its skill over the mean (feedback.selection.driftConfidence)"
        ]


def _refuse_repeats(values: list[str], what: str) -> None:
    dupes = sorted({v for v in values if values.count(v) > 1})
    if dupes:
        raise ValueError(f"duplicate {what} {dupes}")


class FeedbackSpec(SpecModel):
    """How the psychologist's ratings become rewards, and when a round's gate closes."""

    rubric: list[Criterion] = Field(default_factory=_paper_rubric, min_length=1)
    reward_rule: Literal["weighted-mean", "minimum", "direct"] = Field(
        "weighted-mean",
        description="reward = weighted mean or minimum of the criteria, or set directly by the rater.",
    )
    scale_levels: int = Field(
        5, ge=2, le=10, description="Levels per criterion: keys 0..levels-1 map evenly onto 0..1."
    )
    min_raters: int = Field(1, ge=1, le=50, description="Distinct raters each response needs.")
    allowed_raters: list[RaterId] = Field(
        default_factory=list,
        description="Rater ids allowed to rate, unsigned; empty allows anyone. Use raters instead to authenticate them.",
    )
    raters: list[RaterKey] = Field(
        default_factory=list,
        description="The roster: each rater's id and public key. When given, it is the allow-list and only ratings "
        "signed by the registered key count; empty leaves the run's ratings unauthenticated.",
    )
    gate_deadline_seconds: int | None = Field(
        None, ge=60, description="Seconds a round may wait for ratings; unset waits forever."
    )
    on_deadline: Literal["Fail", "Hold"] = Field(
        "Hold", description="Fail the run, or hold (report and keep waiting); never auto-approve."
    )
    safety_penalty: Probability = Field(
        0.5, description="Subtracted from a rating's reward when it carries a penalised flag."
    )
    penalized_flags: list[Literal[RATING_FLAGS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["harmful", "missed_crisis", "medical_advice"]
    )
    guidelines: str | None = Field(None, description="Rater guidelines (Markdown) shown in the TUI.")
    selection: SelectionSpec = Field(
        default_factory=SelectionSpec,
        description="Which responses go to the experts: all (default), or a budget chosen uniformly or actively.",
    )
    response_order: Literal["least-covered", "crisis-first", "batch"] = Field(
        "least-covered",
        description="Which response a rater is shown next: the one with the fewest raters (crisis cues first "
        "among equals), crisis cues first, or batch order.",
    )

    @field_validator("rubric")
    @classmethod
    def _unique_criteria(cls, rubric: list[Criterion]) -> list[Criterion]:
        _refuse_repeats([c.name for c in rubric], "rubric criteria")
        return rubric

    @field_validator("raters")
    @classmethod
    def _unique_raters(cls, raters: list[RaterKey]) -> list[RaterKey]:
        _refuse_repeats([r.id for r in raters], "rater ids")
        keys = [r.public_key for r in raters]
        shared = sorted(r.id for r in raters if keys.count(r.public_key) > 1)
        if shared:
            raise ValueError(f"raters {shared} share one public key: each rater signs with their own")
        return raters

    @model_validator(mode="after")
    def _one_allow_list(self) -> "FeedbackSpec":
        # One name per idea: the roster is the allow-list when given.
        if self.raters and self.allowed_raters:
            raise ValueError("give feedback.raters (the roster, which is the allow-list) or feedback.allowedRaters, not both")
        return self

    @property
    def rater_keys(self) -> dict[str, str]:
        """Registered rater id -> public key text (empty: ratings are unauthenticated)."""
        return {r.id: r.public_key for r in self.raters}

    @property
    def permitted_raters(self) -> list[str]:
        """The allow-list: the roster's ids, else allowedRaters; empty allows anyone."""
        return [r.id for r in self.raters] or list(self.allowed_raters)

    @model_validator(mode="after")
    def _levels_match_the_scale(self) -> "FeedbackSpec":
        for c in self.rubric:
            if c.levels and len(c.levels) != self.scale_levels:
                raise ValueError(
                    f"criterion {c.name!r} describes {len(c.levels)} levels but scaleLevels is {self.scale_levels}"
                )
        return self


__all__ = [
    "SelectionMode",
    "CountOrShare",
    "FallbackMode",
    "responses_of",
    "Criterion",
    "SelectionSpec",
    "RaterKey",
    "FeedbackSpec",
]
