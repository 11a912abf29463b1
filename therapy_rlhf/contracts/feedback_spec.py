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


class SelectionSpec(SpecModel):
    """Which responses of a round go to the experts (issue 12: spend the expert's time where it teaches most).

    ``all`` sends every response (the paper's method). ``uniform`` and ``active`` send ``budget``
    responses per round: uniform picks at random, spread across prompts; active picks where the
    reward model (fitted to the run's gated expert ratings) is least certain, spread across prompts.
    Every response with a crisis cue or a safety-screen hit goes to the experts whatever the mode.
    """

    mode: SelectionMode = Field(
        "all", description="all: every response to the experts; uniform / active: 'budget' per round."
    )
    budget: int = Field(
        8, ge=1, le=100000,
        description="Responses per round the experts score (uniform, active). Safety-flagged responses always go "
        "and count toward it; when there are more of them than the budget, all of them go.",
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
    drift_bound: float = Field(
        0.2, gt=0.0, le=1.0,
        description="Mean absolute error of the model's predictions on a round's fresh expert ratings above which "
        "the next round falls back to 'all'.",
    )
    ensemble: int = Field(5, ge=2, le=32, description="Bootstrap members of the reward model.")
    ridge: float = Field(1.0, gt=0.0, le=1e6, description="L2 penalty of each member's ridge regression.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the bootstrap and of uniform picks (mixed with the round).")


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
    "Criterion",
    "SelectionSpec",
    "RaterKey",
    "FeedbackSpec",
]
