"""Kubernetes-style conditions and the status document, from a planner decision (pure).

The condition types (``phases.CONDITION_TYPES``) are always present so that
``kubectl wait --for=condition=...`` works from the first reconcile. A
condition's ``lastTransitionTime`` moves only when its ``status`` flips.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from therapy_rlhf.contracts import phases
from therapy_rlhf.contracts.status import RunStatus


def timestamp(now: float) -> str:
    return datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Outcome:
    """What one reconcile concluded: the phase to show and why.

    ``blocked`` marks problems outside the run (a missing Secret, an
    unreachable store, no permission): the run is not failed, it cannot
    progress until someone fixes its surroundings.
    """

    phase: str
    round: int
    reason: str
    message: str
    blocked: bool = False


def set_condition(
    conditions: list[dict[str, Any]],
    ctype: str,
    status: str,
    reason: str,
    message: str,
    generation: int | None,
    now: float,
) -> list[dict[str, Any]]:
    """A copy of ``conditions`` with ``ctype`` set; lastTransitionTime kept unless status flips."""
    out = [dict(c) for c in conditions if c.get("type") != ctype]
    previous = next((c for c in conditions if c.get("type") == ctype), None)
    changed = previous is None or previous.get("status") != status
    cond = {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": timestamp(now) if changed else previous.get("lastTransitionTime") or timestamp(now),
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    out.append(cond)
    order = {t: i for i, t in enumerate(phases.CONDITION_TYPES)}
    return sorted(out, key=lambda c: order.get(c.get("type"), len(order)))


def conditions_for(
    outcome: Outcome, previous: list[dict[str, Any]], generation: int | None, now: float, authenticated: bool | None = None
) -> list[dict[str, Any]]:
    """All four conditions for an outcome, and RatingsAuthenticated when the spec was read (``authenticated``)."""
    conds = list(previous or [])
    failed = outcome.phase == phases.FAILED
    ready = not failed and not outcome.blocked
    conds = set_condition(
        conds, phases.COND_READY, "True" if ready else "False", outcome.reason, outcome.message, generation, now
    )
    awaiting = outcome.phase == phases.AWAITING_RATINGS and not outcome.blocked
    conds = set_condition(
        conds,
        phases.COND_AWAITING_RATINGS,
        "True" if awaiting else "False",
        outcome.reason if awaiting else "NotAwaitingRatings",
        outcome.message if awaiting else "",
        generation,
        now,
    )
    conds = set_condition(
        conds,
        phases.COND_FAILED,
        "True" if failed else "False",
        outcome.reason if failed else "NotFailed",
        outcome.message if failed else "",
        generation,
        now,
    )
    suspended = outcome.phase == phases.SUSPENDED
    conds = set_condition(
        conds,
        phases.COND_SUSPENDED,
        "True" if suspended else "False",
        outcome.reason if suspended else "NotSuspended",
        outcome.message if suspended else "",
        generation,
        now,
    )
    if authenticated is not None:
        conds = set_condition(
            conds,
            phases.COND_RATINGS_AUTHENTICATED,
            "True" if authenticated else "False",
            phases.R_RATERS_REGISTERED if authenticated else phases.R_NO_RATER_KEYS,
            "only ratings signed by the keys in feedback.raters count" if authenticated else
            "feedback.raters registers no rater keys: anyone who can write the store can rate under any rater id",
            generation,
            now,
        )
    return conds


def ready_reason(status: dict[str, Any] | None) -> str | None:
    for cond in (status or {}).get("conditions") or []:
        if cond.get("type") == phases.COND_READY:
            return cond.get("reason")
    return None


def is_transition(previous: dict[str, Any] | None, outcome: Outcome) -> bool:
    """Whether this outcome differs from what status showed (an Event is due)."""
    prev = previous or {}
    return prev.get("phase") != outcome.phase or ready_reason(prev) != outcome.reason or prev.get("round") != outcome.round


def build_status(
    outcome: Outcome,
    previous: dict[str, Any] | None,
    generation: int | None,
    now: float,
    authenticated: bool | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """The whole status document, validated against the CRD's model (``RunStatus``).

    ``fields`` are the optional parts (rated, reward, rounds, activeJob,
    evaluation) in camelCase; ``None`` clears a field.
    """
    doc: dict[str, Any] = {
        "phase": outcome.phase,
        "round": outcome.round,
        "message": outcome.message,
        "observedGeneration": generation,
        "conditions": conditions_for(outcome, (previous or {}).get("conditions") or [], generation, now, authenticated),
    }
    doc.update(fields)
    # Validate before writing: a status the CRD would reject must fail here, loudly.
    RunStatus.model_validate({k: v for k, v in doc.items() if v is not None})
    return doc
