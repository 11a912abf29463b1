"""The executor step both executors share: the local runner and the operator's reconcile.

What an executor does when the planner says to close a gate -- close it the
one way (``feedback.gate.close_gate``) with its digests, keep the new
digest, and say what happened: the gate's outcome, a gate.json it had not
closed that was replaced, the reward model's drift -- and the suspend rule.
Each executor only renders these notices its own way (the runner prints them,
the operator posts them as Events).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

from therapy_rlhf.contracts import phases
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.contracts.records import Gate, Selection
from therapy_rlhf.contracts.spec import RunSpec
from therapy_rlhf.feedback.gate import close_gate
from therapy_rlhf.feedback.predictions import PredictionsVault
from therapy_rlhf.feedback.rewards import RatingError
from therapy_rlhf.feedback.rounds import RoundState
from therapy_rlhf.feedback.judgement import judged_checks
from therapy_rlhf.feedback.selection import describe_gate, read_selection
from therapy_rlhf.planning.planner import CloseGate
from therapy_rlhf.store import integrity
from therapy_rlhf.store.backends import Store

NORMAL = "Normal"
WARNING = "Warning"


class GateNotClosed(ValueError):
    """The gate could not be closed (nothing rated, not fully rated, a selection that fails its digest)."""


@dataclass(frozen=True)
class Notice:
    """Something an executor tells the people watching: an Event on the cluster, a line locally."""

    level: str  # NORMAL or WARNING
    reason: str  # a phases.R_* reason
    message: str
    key: str  # what it announces ("gate-r3"): the operator posts each key's Event once, across restarts


@dataclass(frozen=True)
class GateStep:
    gate: Gate
    digests: dict[str, str]  # what the executor adds to its digests
    notices: list[Notice] = field(default_factory=list)


def effective_spec(frozen: RunSpec, live: RunSpec) -> RunSpec:
    """The spec an executor plans with: the frozen one, but ``suspend`` is the one field that may
    change after the start (the live one's)."""
    return frozen.model_copy(update={"suspend": live.suspend})


def close_round_gate(
    store: Store,
    paths: RunPaths,
    spec: RunSpec,
    action: CloseGate,
    executor: str,
    closed_by: str,
    digests: Mapping[str, str],
    keep: Callable[[str, str], None],
    previous: RoundState | None = None,
    vault: PredictionsVault | None = None,
) -> GateStep:
    """Close the gate the planner asked for, as ``executor`` ("runner", "operator") holding ``digests``;
    ``keep(name, digest)`` stores the gate's digest with them before gate.json is written."""
    try:
        closed = close_gate(
            store, paths, action.round, spec.feedback, action.reason, closed_by,
            digests=digests, keep=keep, previous=previous, vault=vault,
        )
    except (RatingError, integrity.IntegrityError) as err:
        raise GateNotClosed(str(err)) from None
    gate = closed.gate
    notices = []
    if closed.replaced:
        message = replaced_message(store, paths, action.round, executor)
        notices.append(Notice(WARNING, phases.R_GATE_REPLACED, message, f"replaced-r{action.round}"))
    notices += gate_notices(gate) + selection_notices(store, paths, gate)
    return GateStep(gate, {integrity.gate_name(paths, action.round): closed.digest}, notices)


def gate_notices(gate: Gate) -> list[Notice]:
    """What a closed gate announces: that it closed (and how), and the reward model's drift if it found any."""
    reason = phases.R_GATE_OVERRIDDEN if gate.reason == "override" else phases.R_GATE_CLOSED
    notices = [Notice(NORMAL, reason, gate_closed_message(gate), f"gate-r{gate.round}")]
    drift = gate_drift_message(gate)
    if drift:
        notices.append(Notice(WARNING, phases.R_REWARD_MODEL_DRIFT, drift, f"drift-r{gate.round}"))
    return notices


def selection_notices(store: Store, paths: RunPaths, gate: Gate) -> list[Notice]:
    """What the round's selection and the model's history add: crises above safetyCap, and a model that found
    its skill again after a drift (selection resumes)."""
    out = []
    selection = read_selection(store, paths, gate.round)
    if selection is not None and selection.safety_cap_exceeded:
        out.append(Notice(WARNING, phases.R_SAFETY_CAP_EXCEEDED, safety_cap_message(selection), f"safety-cap-r{gate.round}"))
    check = gate.reward_model
    if check is not None and check.judged and not check.drifted:
        earlier = judged_checks(store, paths, gate.round, limit=1)
        if earlier and earlier[0][1].drifted:
            message = (
                f"round {gate.round}: the reward model has skill again ({check.skill:.3f}, lower bound "
                f"{check.skill_lower:.3f} on {check.responses} fresh ratings); round {gate.round + 1} resumes selection"
            )
            out.append(Notice(NORMAL, phases.R_REWARD_MODEL_RECOVERED, message, f"recovered-r{gate.round}"))
    return out


def safety_cap_message(selection: Selection) -> str:
    return (
        f"round {selection.round}: {len(selection.safety_selected)} safety-flagged responses, more than safetyCap "
        f"{selection.safety_cap}: crises dominate the batch (all of them go to the experts, outside the budget)"
    )


def replaced_message(store: Store, paths: RunPaths, round_no: int, executor: str) -> str:
    return (
        f"round {round_no}: replaced a gate.json this {executor} had not closed ({store.describe(paths.gate(round_no))}) "
        f"by the gate the {executor} closed from the verified ratings"
    )


def gate_closed_message(gate: Gate) -> str:
    model = describe_gate(gate)
    return (
        f"round {gate.round}: gate closed ({gate.reason}), {gate.responses_rewarded}/{gate.responses_total} "
        f"responses rewarded by experts, mean reward {gate.mean_reward:.3f}" + (f"; {model}" if model else "")
    )


def gate_drift_message(gate: Gate) -> str | None:
    """Said when a gate finds the reward model no better than the mean: the next round falls back."""
    check = gate.reward_model
    if check is None or not check.drifted:
        return None
    if check.skill is None:  # a gate written before issue 21
        return f"round {gate.round}: the reward model's error on the experts' fresh ratings was {check.mae:.3f}; round {gate.round + 1} falls back"
    return (
        f"round {gate.round}: the reward model is no better than the mean of the experts' fresh ratings (skill "
        f"{check.skill:.3f}, lower bound {check.skill_lower:.3f} at {check.confidence:g}, {check.responses} ratings); "
        f"round {gate.round + 1} falls back and judges it again"
    )


def selection_reason(selection: Selection | None) -> tuple[str, str] | None:
    """(reason, message) said while a round awaits its ratings, when its selection has something to say: it fell
    back because of drift, crises dominate it (over safetyCap), or selection resumed after a drift."""
    if selection is None:
        return None
    if selection.drift is not None:
        return phases.R_REWARD_MODEL_DRIFT, selection.fallback or f"reward model drift found at round {selection.drift.round}"
    if selection.safety_cap_exceeded:
        return phases.R_SAFETY_CAP_EXCEEDED, safety_cap_message(selection)
    if selection.decision == phases.R_REWARD_MODEL_RECOVERED:
        return phases.R_REWARD_MODEL_RECOVERED, f"round {selection.round}: the reward model has skill again; selection resumes"
    return None
