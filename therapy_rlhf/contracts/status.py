"""The status of a TherapyRLHFRun, as the operator writes it.

The operator fills these fields (through the status subresource); the CRD's
``status`` schema is generated from ``RunStatus`` just as its ``spec`` schema
is generated from ``RunSpec``. Field names are camelCase in the resource. The
per-round entries carry the same keys as ``runs.RoundSummary.to_dict()`` plus
the checkpoint the round produced, so the CLI, the TUI and ``kubectl`` report
the same numbers.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from therapy_rlhf.contracts.phases import PHASES
from therapy_rlhf.contracts.jobkinds import JOB_KINDS
from therapy_rlhf.contracts.spec import SpecModel

# RFC 3339 timestamps as Kubernetes writes them ("2026-01-02T03:04:05Z").
TIMESTAMP_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$"
# "rated/total" as shown in the Rated printer column ("18/24").
RATED_PATTERN = r"^[0-9]+/[0-9]+$"

Phase = Literal[PHASES]  # type: ignore[valid-type]
JobKind = Literal[JOB_KINDS]  # type: ignore[valid-type]


class Condition(SpecModel):
    """A Kubernetes-style condition (see phases.CONDITION_TYPES)."""

    type: str = Field(..., min_length=1, max_length=316)
    status: Literal["True", "False", "Unknown"]
    reason: str = Field("", max_length=1024)
    message: str = Field("", max_length=32768)
    last_transition_time: str | None = Field(None, pattern=TIMESTAMP_PATTERN)
    observed_generation: int | None = Field(None, ge=0)


class RoundStatus(SpecModel):
    """One PPO round in the status history."""

    round: int = Field(..., ge=1)
    responses: int = Field(0, ge=0, description="Responses in the round's batch.")
    rated: int = Field(0, ge=0, description="Responses with at least minRaters distinct raters.")
    ratings: int = Field(0, ge=0, description="Latest ratings counted (one per rater and response).")
    raters: list[str] = Field(default_factory=list)
    mean_reward: float | None = Field(None, ge=0.0, le=1.0)
    agreement: float | None = Field(None, description="Krippendorff's alpha (interval) when defined.")
    gate_closed: bool = False
    updated: bool = Field(False, description="The PPO update of this round finished.")
    waiting_since: str | None = Field(None, pattern=TIMESTAMP_PATTERN)
    checkpoint: str | None = Field(None, description="Store key of the policy after this round.")
    late: int = Field(0, ge=0, description="Ratings stored after the gate closed: kept, never used.")
    garbage: int = Field(0, ge=0, description="Objects in the ratings prefix that are not usable ratings (skipped).")
    reward_mismatches: int = Field(
        0, ge=0, description="Stored rewards that the criteria do not give; the recomputed reward is used."
    )
    not_sent_to_experts: int = Field(0, ge=0, description="Responses feedback.selection did not send to the experts.")
    model_scored: int = Field(0, ge=0, description="Responses rewarded by the reward model, not by experts.")
    reward_model_error: float | None = Field(
        None, ge=0.0, description="The reward model's mean absolute error on this round's fresh expert rewards."
    )
    reward_model_drifted: bool = Field(
        False, description="The gate judged the reward model no better than the mean: the next round falls back."
    )
    reward_model_skill: float | None = Field(
        None, description="The reward model's skill over the mean on the round's held-out expert ratings (1 - MSE ratio)."
    )
    reward_model_skill_lower: float | None = Field(
        None, description="Its bootstrap lower bound at feedback.selection.driftConfidence (<= 0: no better than the mean)."
    )
    selection_mode: str | None = Field(None, description="The selection mode the round used (after any fallback).")
    selection_decision: str | None = Field(
        None, description="Why: ColdStart, ModelOnProbation, ModelSkilled, RewardModelDrift or RewardModelRecovered."
    )
    safety_flagged: int = Field(0, ge=0, description="Responses sent to the experts for safety, outside the budget.")
    safety_cap_exceeded: bool = Field(False, description="More safety-flagged responses than feedback.selection.safetyCap.")
    fluency_log_likelihood: float | None = Field(
        None, le=0.0, description="The batch's mean token log-likelihood under the frozen base model (jobs/fluency.py)."
    )
    dictionary_share: float | None = Field(
        None, ge=0.0, le=1.0, description="The batch's share of words found in the English word list."
    )


class ActiveJob(SpecModel):
    """The Job the run is waiting on, if any."""

    name: str = Field(..., min_length=1, max_length=63)
    kind: JobKind  # type: ignore[valid-type]
    round: int = Field(..., ge=0, description="0 for run-level jobs (sft, evaluate).")
    attempt: int = Field(..., ge=1)


class RunStatus(SpecModel):
    """status of a TherapyRLHFRun."""

    phase: Phase | None = None  # type: ignore[valid-type]
    round: int = Field(0, ge=0, description="The round in progress (0 before the first).")
    rated: str | None = Field(None, pattern=RATED_PATTERN, description="'rated/total' of the current round.")
    reward: float | None = Field(None, description="Mean reward of the latest closed gate.")
    conditions: list[Condition] = Field(default_factory=list)
    rounds: list[RoundStatus] = Field(default_factory=list)
    active_job: ActiveJob | None = None
    evaluation: dict[str, Any] | None = Field(
        None, description="Summary of eval/results.json (free-form: metrics per checkpoint)."
    )
    observed_generation: int | None = Field(None, ge=0)
    message: str | None = None
    digests: dict[str, str] = Field(
        default_factory=dict,
        description="SHA-256 of every gate.json the operator closed and every output its Jobs reported, by key "
        "under the run (a folder ends in '/'); Jobs refuse inputs that do not match. Only the operator writes it.",
    )
