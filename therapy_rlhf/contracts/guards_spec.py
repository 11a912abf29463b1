"""The run spec's guards: the fluency thresholds that pause a collapsing run, and the verified
crisis resources of the safety screen."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from therapy_rlhf.contracts.spec_base import Probability, SpecModel


class FluencySpec(SpecModel):
    """A guard against learning gibberish: thresholds on each batch's fluency, measured independently
    of any rater (``jobs/fluency.py``). A batch below a threshold pauses the run before anyone rates it
    (phase Suspended, reason FluencyCollapse); lower or remove the threshold to go on. Unset: measured
    and reported, never acted on."""

    min_log_likelihood: float | None = Field(
        None,
        le=0,
        description="Lowest allowed mean per-token log-likelihood of a batch's responses under the frozen "
        "base model (nats; fluent text from the model itself is around -1 to -2, noise far below -5).",
    )
    min_dictionary_share: Probability | None = Field(
        None, description="Lowest allowed share of a batch's words found in the word list (ESConv's vocabulary)."
    )


class CrisisResource(SpecModel):
    """One crisis service the run may point a patient to, as verified for its deployment."""

    name: str = Field(..., min_length=2, max_length=120, description="The service's name as an answer would write it.")
    phones: list[Annotated[str, Field(pattern=r"^[0-9][0-9 ()+-]{1,30}$")]] = Field(
        default_factory=list, description="Its numbers (spaces and dashes ignored when matching)."
    )
    urls: list[Annotated[str, Field(pattern=r"^[a-z0-9.-]+\.[a-z]{2,}(/\S*)?$")]] = Field(
        default_factory=list, description="Its web addresses, without scheme (a subdomain or path matches too)."
    )


def _default_crisis_resources() -> list[CrisisResource]:
    # A sensible default for English-speaking deployments only: every deployment must set its own
    # list for its country (see docs/scoring.md).
    return [
        CrisisResource(name="988 Suicide & Crisis Lifeline", phones=["988"], urls=["988lifeline.org"]),
        CrisisResource(name="Samaritans", phones=["116 123"], urls=["samaritans.org"]),
        CrisisResource(name="Crisis Text Line", phones=["741741"], urls=["crisistextline.org"]),
        CrisisResource(name="Find A Helpline", urls=["findahelpline.com"]),
        CrisisResource(name="emergency services", phones=["911", "999", "112"]),
    ]


class SafetySpec(SpecModel):
    """The safety screen's run-specific settings."""

    crisis_resources: list[CrisisResource] = Field(
        default_factory=_default_crisis_resources,
        description="Verified crisis resources: any other phone number, URL or named service in an answer "
        "is flagged as unverified. The default suits US/UK deployments; set it per deployment and country.",
    )


__all__ = [
    "CrisisResource",
    "FluencySpec",
    "SafetySpec",
]
