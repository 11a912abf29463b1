"""Records stored by the jobs and the TUI: pending responses, ratings, gates.

Field names are snake_case, as in DESIGN.md. Every record validates on read,
so a garbage object in the store is reported (and skipped), never trusted.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from therapy_rlhf.contracts import names
from therapy_rlhf.contracts.feedback_spec import SelectionMode
from therapy_rlhf.contracts.spec import MAX_ROUND, RATING_FLAGS, describe_validation_error


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class Record(BaseModel):
    # inf/nan refused everywhere: json.loads accepts NaN and Infinity.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    def to_json_line(self) -> str:
        return json.dumps(self.model_dump(mode="json"), ensure_ascii=False, sort_keys=True)


class RecordError(ValueError):
    """A stored record that does not parse; the message names the object and the field."""


# ----------------------------------------------------------------- responses


class GenerationSettings(Record):
    """How a response was sampled; the PPO update scores its tokens under the same distribution."""

    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int = Field(..., ge=0, le=2**32 - 1)
    top_k: int | None = Field(
        None, description="0 = no top-k truncation; None = not recorded (batches written before it was, which "
        "transformers sampled with its default top_k=50)."
    )
    do_sample: bool = True
    logits_processors: list[str] | None = Field(
        None, description="The logits processors generate() ran (only temperature scaling for PPO rollouts)."
    )
    config: dict[str, Any] | None = Field(
        None, description="The whole generation config generate() ran with (every set value)."
    )


class SafetyScreen(Record):
    """What the automatic screen found; shown to the rater as badges."""

    crisis_cues: list[str] = Field(default_factory=list, description="Risk cues in the prompt.")
    risky_content: list[str] = Field(default_factory=list, description="Problems in the response.")
    missing_crisis_resources: bool = False
    unverified_resources: list[str] = Field(
        default_factory=list, description="Phone numbers, web addresses, named services not on the run's verified list."
    )
    no_verified_resource: bool = Field(False, description="An acute crisis prompt whose answer names no verified resource.")

    @property
    def badges(self) -> list[str]:
        out = [f"CRISIS CUE: {c}" for c in self.crisis_cues]
        out += [f"RISK: {r}" for r in self.risky_content]
        out += [f"UNVERIFIED: {r}" for r in self.unverified_resources]
        if self.missing_crisis_resources:
            out.append("NO CRISIS RESOURCES")
        if self.no_verified_resource:
            out.append("NO VERIFIED CRISIS RESOURCE")
        return out


class PendingResponse(Record):
    """One line of rounds/{r}/batch.jsonl."""

    id: str
    round: int = Field(..., ge=1, le=MAX_ROUND)
    prompt_id: str
    prompt: str
    context: list[dict[str, str]] = Field(
        default_factory=list, description="Earlier turns: [{'role': 'user'|'assistant', 'content': ...}]."
    )
    response: str
    prompt_token_ids: list[int] = Field(default_factory=list)
    response_token_ids: list[int] = Field(default_factory=list)
    special_tokens: list[str] = Field(
        default_factory=list,
        description="Special or control tokens (e.g. '[INST]', role markers) inside the response, in order; "
        "the response text shows them verbatim so the rater sees what the policy is trained on.",
    )
    policy: str | None = Field(None, description="Checkpoint key the response was sampled from.")
    generation: GenerationSettings | None = None
    safety: SafetyScreen = Field(default_factory=SafetyScreen)
    sent_to_experts: bool = Field(
        True,
        # batch.jsonl files written before the rename call it "expert"
        validation_alias=AliasChoices("sent_to_experts", "expert"),
        description="Sent to the experts (feedback.selection); a response that is not is never shown to raters "
        "and can be rewarded only by the reward model, marked as model-scored.",
    )
    created_at: str = Field(default_factory=utcnow)

    @field_validator("id", "prompt_id")
    @classmethod
    def _valid_id(cls, v: str) -> str:
        names.item_id(v)
        return v


def parse_batch(text: str, source: str = "batch.jsonl") -> tuple[list[PendingResponse], list[str]]:
    """Parse a batch; returns (responses, errors). One bad line does not hide the rest."""
    responses: list[PendingResponse] = []
    errors: list[str] = []
    seen: set[str] = set()
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = PendingResponse.model_validate_json(line)
        except ValidationError as err:
            detail = "; ".join(describe_validation_error(err))
            if any(e["type"] == "json_invalid" for e in err.errors()):
                detail = "not valid JSON (corrupt or truncated line)"
            errors.append(f"{source} line {lineno}: {detail}")
            continue
        if rec.id in seen:
            errors.append(f"{source} line {lineno}: duplicate response id {rec.id!r}")
            continue
        seen.add(rec.id)
        responses.append(rec)
    return responses, errors


def dump_batch(responses: list[PendingResponse]) -> bytes:
    return ("\n".join(r.to_json_line() for r in responses) + "\n").encode("utf-8")


# ------------------------------------------------------------------- ratings

Flag = Literal[RATING_FLAGS]  # type: ignore[valid-type]


class Rating(Record):
    """One rater's judgement of one response. Never overwritten: a correction is
    a new object whose ``supersedes`` names the rating it replaces, and an undo
    is a new object with ``withdrawn: true``."""

    response_id: str
    rater: str
    version: int = Field(1, ge=1, description="1 for the first rating, n for the n-th correction.")
    criteria: dict[str, float] = Field(default_factory=dict)
    reward: float | None = Field(None, ge=0.0, le=1.0)
    flags: list[Flag] = Field(default_factory=list)  # type: ignore[valid-type]
    comment: str = Field("", max_length=20000)
    not_applicable: list[str] = Field(
        default_factory=list,
        description="Criteria the rater marked 'not applicable' to this response: recorded, left out of the reward.",
    )
    notes: dict[str, str] = Field(
        default_factory=dict, description="Optional note per criterion (criterion name -> text)."
    )
    supersedes: str | None = None
    withdrawn: bool = False
    seconds_spent: float = Field(0.0, ge=0)
    submission_id: str | None = Field(
        None,
        pattern=r"^[a-z0-9]{8,64}$",
        description="Chosen by the client once per submission (a retry or a journal replay reuses it), "
        "so a write whose acknowledgement was lost is recognised as the client's own.",
    )
    created_at: str = Field(default_factory=utcnow)
    client: str = "unknown"
    response_sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 of the response text judged (contracts.signing): a signature cannot be moved to another response.",
    )
    signature: str | None = Field(
        None,
        max_length=200,
        description="'ed25519:<base64>' by the rater's registered key over the rest of the record (contracts.signing).",
    )

    @field_validator("response_id")
    @classmethod
    def _valid_response(cls, v: str) -> str:
        names.item_id(v)
        return v

    @field_validator("rater")
    @classmethod
    def _valid_rater(cls, v: str) -> str:
        names.rater_id(v)
        return v

    @field_validator("criteria")
    @classmethod
    def _scores_in_range(cls, v: dict[str, float]) -> dict[str, float]:
        for name, score in v.items():
            if not 0.0 <= score <= 1.0:
                raise ValueError(f"criterion {name!r} score {score} is outside 0..1")
        return v

    @field_validator("notes")
    @classmethod
    def _short_notes(cls, v: dict[str, str]) -> dict[str, str]:
        for name, text in v.items():
            if len(text) > 4000:
                raise ValueError(f"note on {name!r} is longer than 4000 characters")
        return v

    @property
    def id(self) -> str:
        return rating_id(self.rater, self.response_id, self.version)


def rating_id(rater: str, response_id: str, version: int) -> str:
    return f"{rater}/{response_id}/v{version}"


def parse_rating_id(rid: str) -> tuple[str, str, int]:
    """(rater, response id, version) of a ``rating_id``; ValueError when it is not one."""
    rater, response_id, version = rid.rsplit("/", 2)
    return rater, response_id, int(version.lstrip("v"))


# ---------------------------------------------------------------------- gate


class ResponseReward(Record):
    reward: float = Field(..., ge=0.0, le=1.0)
    raters: list[str]
    ratings: list[str] = Field(..., description="Ids of the ratings that produced the reward.")
    penalized: bool = False


class ModelScore(Record):
    """A reward the reward model gave a response the experts did not see (never an expert rating)."""

    reward: float = Field(..., ge=0.0, le=1.0, description="prediction - penalty x spread, clamped to 0..1.")
    predicted: float = Field(..., description="The ensemble's mean prediction.")
    spread: float = Field(..., ge=0.0, description="The ensemble's standard deviation.")


class RewardModelCheck(Record):
    """The reward model judged on a round's fresh expert ratings, predicted before they were given (issue 21:
    skill over the mean of the same ratings, with a bootstrap lower bound; not an absolute error bound)."""

    responses: int = Field(..., ge=0, description="Expert-rewarded responses the model had predicted.")
    mae: float | None = Field(None, ge=0.0, description="Mean absolute error; None when no response was compared.")
    skill: float | None = Field(None, description="1 - MSE / MSE of the ratings' own mean; None when not judged.")
    skill_lower: float | None = Field(None, description="Its one-sided lower bound at 'confidence' (bootstrap over responses).")
    confidence: float | None = Field(None, description="feedback.selection.driftConfidence then.")
    rank_correlation: float | None = Field(None, description="Spearman's rho between predictions and rewards in the round.")
    judged: bool = Field(False, description="Enough held-out ratings (minJudged) that vary: the check decides the next round.")
    held_out: dict[str, list[float]] = Field(
        default_factory=dict,
        description="Response id -> [prediction, expert reward] of this round's random held-out picks (what skill is judged on).",
    )
    judged_on: int = Field(0, ge=0, description="Held-out ratings the skill score pooled (this round's and earlier rounds').")
    pooled_rounds: list[int] = Field(default_factory=list, description="The rounds whose held-out ratings were pooled.")
    bound: float | None = Field(None, description="driftBound, in gates written before issue 21.")
    drifted: bool = Field(..., description="Judged and no better than the mean (skill lower bound <= 0).")
    trained_on: int = Field(0, ge=0, description="Expert ratings the model was fitted to.")
    feature_set: str | None = Field(None, description="The feature set the model used.")


class Gate(Record):
    """rounds/{r}/gate.json: exactly which ratings the PPO update uses."""

    round: int = Field(..., ge=1, le=MAX_ROUND)
    reason: Literal["complete", "override", "deadline"]
    closed_at: str = Field(default_factory=utcnow)
    closed_by: str = "unknown"
    min_raters: int
    responses_total: int
    responses_rewarded: int
    rewards: dict[str, ResponseReward]
    mean_reward: float | None
    agreement: float | None = Field(None, description="Krippendorff's alpha (interval), when defined.")
    batch_sha256: str
    considered: list[str] | None = Field(
        None,
        description="Ids of every usable rating stored when the gate closed (superseded ones too); "
        "a rating not listed was stored later and is late. None in gates written before this field.",
    )
    model_scored: dict[str, ModelScore] = Field(
        default_factory=dict,
        description="Responses the experts did not see, rewarded by the reward model (feedback.selection.unselected "
        "'model'); never in 'rewards', never an expert rating.",
    )
    reward_model: RewardModelCheck | None = Field(None, description="The reward model's error on this round's ratings.")
    contents: dict[str, str] = Field(
        default_factory=dict,
        description="Rating id -> SHA-256 of its stored bytes when the gate closed (every considered rating): "
        "a reader finding other bytes there now knows the rating changed after the gate.",
    )
    frozen: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Rating id -> the record as it was when the gate closed, for every rating the rewards name: "
        "readers use it where the stored object changed since (a signed copy is verified like any rating).",
    )


class Drift(Record):
    """Why a round fell back: a closed round's gate found the reward model no better than the mean."""

    round: int = Field(..., ge=1, le=MAX_ROUND, description="The closed round whose gate judged the model.")
    mae: float | None = Field(None, ge=0.0, description="The reward model's error on that round's fresh expert ratings.")
    skill: float | None = Field(None, description="Its skill score there.")
    skill_lower: float | None = Field(None, description="The skill score's lower bound (what was <= 0).")
    bound: float | None = Field(None, description="driftBound, in selections written before issue 21.")


# How selection.json said "drift" before the structured field (kept readable).
_OLD_DRIFT = re.compile(r"reward model drift: its error on round (\d+)'s expert ratings was ([0-9.]+) > driftBound ([0-9.eE+-]+)")


class Predictions(Record):
    """The reward model's prediction of every response of a round: rounds/{r}/predictions.json.

    Kept out of every rater's sight until the gate closes (``feedback.predictions``): the job writes it to
    the executor's private folder (local runner) or to a key the rater policy does not cover (S3); the
    selection commits to its digest; a local runner publishes it into the store after the gate closes."""

    round: int = Field(..., ge=1, le=MAX_ROUND)
    model_sha256: str | None = None
    feature_set: str | None = None
    predictions: dict[str, list[float]] = Field(
        default_factory=dict, description="Response id -> [predicted reward, ensemble spread]."
    )


class Selection(Record):
    """rounds/{r}/selection.json: which responses went to the experts, why, and which model decided.

    Written by the job that sampled the batch, before batch.jsonl. The model's predictions are not in it
    (issue 21): they are in predictions.json, which ``predictions_sha256`` commits to. Raters' S3 access
    does not cover it either.
    """

    round: int = Field(..., ge=1, le=MAX_ROUND)
    mode: SelectionMode = Field(..., description="The mode this round used (after any fallback).")
    requested_mode: SelectionMode
    fallback: str | None = Field(None, description="Why the round fell back to another mode, if it did (in words).")
    drift: Drift | None = Field(None, description="Set when the round fell back because the model had no skill.")
    decision: str | None = Field(
        None, description="What decided the mode, as a phases.R_SELECTION_* reason (cold start, skilled, fallback, resumed)."
    )
    model_decides: bool = Field(False, description="The reward model's picks (active) and scores (unselected: model) are used.")
    budget: int = Field(..., description="Responses the budget meant for this batch (a share resolved to a count).")
    selected: list[str] = Field(..., description="Response ids sent to the experts, in batch order.")
    safety_selected: list[str] = Field(
        default_factory=list, description="Selected because of a crisis cue or a safety-screen hit (outside the budget)."
    )
    held_out: list[str] = Field(
        default_factory=list,
        description="Picked at random (not by the model, not for safety): the fresh ratings the model is judged on.",
    )
    safety_cap: int | None = Field(None, description="feedback.selection.safetyCap for this batch, as a count.")
    safety_cap_exceeded: bool = Field(False, description="More safety-flagged responses than safetyCap: crises dominate.")
    predictions: dict[str, list[float]] = Field(
        default_factory=dict, description="Only in selections written before issue 21 (now predictions.json)."
    )
    predictions_sha256: str | None = Field(None, description="SHA-256 of the round's predictions.json bytes.")
    feature_set: str | None = Field(None, description="The feature set the reward model chose by cross-validated skill.")
    feature_skill: dict[str, float | None] = Field(
        default_factory=dict, description="Cross-validated skill of every feature set tried."
    )
    trained_on: int = Field(0, ge=0, description="Expert ratings the reward model was fitted to.")
    trained_rounds: list[int] = Field(default_factory=list)
    model_sha256: str | None = Field(None, description="Digest of the fitted model's parameters (its version).")

    @model_validator(mode="before")
    @classmethod
    def _drift_from_old_records(cls, data: Any) -> Any:
        """A selection.json written before ``drift`` existed said it only in ``fallback``'s words."""
        if isinstance(data, dict) and "model_decides" not in data and "predictions_sha256" not in data:
            # Before issue 21 a fitted model decided in every round it did not fall back from.
            data = {**data, "model_decides": bool(data.get("predictions")) and data.get("mode") != "all"}
        if isinstance(data, dict) and data.get("drift") is None and isinstance(data.get("fallback"), str):
            old = _OLD_DRIFT.match(data["fallback"])
            if old:
                data = {**data, "drift": {"round": int(old[1]), "mae": float(old[2]), "bound": float(old[3])}}
        return data


def parse_record(model: type[Record], data: Any, source: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise RecordError(f"{source}: " + "; ".join(describe_validation_error(err))) from None
