"""Whether a stored rating is the registered rater's own: the check every reader runs through ``load_round``.

A run that registers rater keys (``feedback.raters``) counts a rating only when
it is signed (``contracts.signing``) by the key registered for its rater id and
records the digest of the response text it judges; a correction (version n) is
checked the same way, so only the same rater can correct their rating. Anything
else is *refused* with a named reason (``signing.REFUSAL_REASONS``): listed by
``status`` and the operator's Warning Event, never counted. A run without a
roster cannot tell who wrote a rating: its ratings are unauthenticated, and
``validate``, ``status`` and the run's ``RatingsAuthenticated`` condition say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from therapy_rlhf.contracts import signing
from therapy_rlhf.contracts.records import Rating
from therapy_rlhf.contracts.spec import FeedbackSpec

# How many refused ratings status and the Warning Event name before "... and N more".
LISTED_REFUSALS = 20


@dataclass(frozen=True)
class Refusal:
    """A stored rating that is not its rater's own, and why (``reason`` is one of REFUSAL_REASONS)."""

    source: str  # the object, as the store describes it
    rating_id: str
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.source}: refused ({self.reason}): {self.detail}"


class Verifier:
    """Checks ratings against one run's roster; parsed public keys are kept for the run's life."""

    def __init__(self, feedback: FeedbackSpec):
        self.keys = {rater: signing.parse_public_key(text) for rater, text in feedback.rater_keys.items()}

    @property
    def active(self) -> bool:
        return bool(self.keys)

    def refusal(self, source: str, data: dict[str, Any], rating: Rating, response_sha256: str) -> Refusal | None:
        """Why the stored record ``data`` (parsed as ``rating``) is not its rater's own, or None."""
        if not self.keys:
            return None

        def refuse(reason: str, detail: str) -> Refusal:
            return Refusal(source, rating.id, reason, detail)

        key = self.keys.get(rating.rater)
        if key is None:
            return refuse(signing.UNKNOWN_RATER, f"{rating.rater!r} is not in feedback.raters {sorted(self.keys)}")
        if rating.signature is None:
            return refuse(signing.UNSIGNED, f"{rating.id} carries no signature; this run takes only signed ratings")
        if rating.response_sha256 != response_sha256:
            return refuse(
                signing.RESPONSE_DIGEST_MISMATCH,
                f"{rating.id} judged other text than this batch's response {rating.response_id!r}",
            )
        if not signing.verify_record(key, data):
            return refuse(signing.BAD_SIGNATURE, f"{rating.id} is not signed by the key registered for {rating.rater!r}")
        return None


def describe_refusals(refused: list[Refusal] | list[str], limit: int = LISTED_REFUSALS) -> list[str]:
    """The first ``limit`` refusals, one line each, then how many more."""
    lines = [str(r) for r in refused[:limit]]
    if len(refused) > limit:
        lines.append(f"... and {len(refused) - limit} more refused rating(s)")
    return lines


def authentication_note(feedback: FeedbackSpec) -> str | None:
    """The one line that says a run's ratings are unauthenticated, or None when it has a roster."""
    if feedback.raters:
        return None
    return (
        "ratings are unauthenticated: feedback.raters registers no rater keys, so anyone who can write "
        "the store can rate under any rater id"
    )
