"""The operator says what the reward model's judgement decided: a Warning Event when a gate finds it no better
than the mean and a Normal one when a later gate finds skill again, and the reason (RewardModelDrift,
RewardModelRecovered, SafetyCapExceeded) on Ready/AwaitingRatings while such a round awaits ratings."""

from __future__ import annotations

import logging

from tests.support import selection_rounds as sel

from therapy_rlhf.store import integrity
from therapy_rlhf.contracts import phases
from therapy_rlhf.feedback.gate import close_gate
from therapy_rlhf.store.runs import freeze_spec
from therapy_rlhf.operator import gateclose, reconcile
from therapy_rlhf.operator.conditions import Outcome, conditions_for
from therapy_rlhf.planning.planner import CloseGate, Decision, WaitForRatings


class RecordingApi:
    """The two calls a gate close makes to the Kubernetes API, recorded (the emulated cluster tests make them for real)."""

    def __init__(self):
        self.events: list[tuple[str, str, str]] = []
        self.status: list[dict] = []

    def create_event(self, event):
        self.events.append((event["type"], event["reason"], event["message"]))

    def patch_run_status(self, namespace, name, status):
        self.status.append(status)


def _close(local_store, m, round_no, memory):
    """Close a round's gate as the operator does (its digest record, its Events); (gate, Events)."""
    record = {integrity.relative(sel.PATHS, sel.PATHS.selection(round_no)): integrity.sha256(local_store.read_bytes(sel.PATHS.selection(round_no)))}
    decision = Decision(CloseGate(round_no, "complete"), phases.AWAITING_RATINGS, round_no, phases.R_WAITING_FOR_RATINGS, "rated")
    api = RecordingApi()
    announcer = gateclose.Announcer(api, {"name": sel.PATHS.run, "namespace": sel.PATHS.namespace, "uid": "u"},
                                    logging.getLogger("test"))
    gate = gateclose.close_gate(local_store, sel.PATHS, m.spec, decision, None, announcer, record, memory.digest.recorded)
    gate_key = f"rounds/{round_no:04d}/gate.json"
    assert api.status == [{"digests": {gate_key: record[gate_key]}}]  # recorded first
    return gate, api.events


def _waiting(local_store, m, round_no, memory, total):
    waiting = Decision(WaitForRatings(round_no, 0, total, False), phases.AWAITING_RATINGS, round_no,
                       phases.R_WAITING_FOR_RATINGS, f"0/{total} rated")
    return reconcile._drift_reason(local_store, sel.PATHS, m.spec, waiting, memory)


def test_drift_and_recovery_are_events_and_the_waiting_rounds_reason(local_store):
    m = sel.manifest()
    freeze_spec(local_store, m)
    for r in (1, 2, 3):
        sel.sample_round(local_store, m, r)
        sel.rate_all(local_store, m, r)
        close_gate(local_store, sel.PATHS, r, m.spec.feedback)
    sel.sample_round(local_store, m, 4)
    sel.rate_all(local_store, m, 4, noise=0.5)
    memory = reconcile.RunMemory()
    gate, events = _close(local_store, m, 4, memory)
    assert gate.reward_model.drifted
    drift = [e for e in events if e[1] == phases.R_REWARD_MODEL_DRIFT]
    assert drift and drift[0][0] == "Warning" and "round 5 falls back" in drift[0][2] and "no better than the mean" in drift[0][2]
    assert "24 model-scored" in next(e for e in events if e[1] == phases.R_GATE_CLOSED)[2]

    sel.sample_round(local_store, m, 5)  # falls back: random picks, judged again
    reason, message = _waiting(local_store, m, 5, memory, 8)
    assert reason == phases.R_REWARD_MODEL_DRIFT and "reward model drift" in message and message.startswith("0/8 rated")
    conds = {c["type"]: c for c in conditions_for(Outcome(phases.AWAITING_RATINGS, 5, reason, message), [], 1, 0.0)}
    assert conds[phases.COND_AWAITING_RATINGS]["reason"] == phases.R_REWARD_MODEL_DRIFT
    # The experts' scale is back: round 5's gate finds skill again, and says so.
    sel.rate_all(local_store, m, 5)
    gate5, events5 = _close(local_store, m, 5, memory)
    assert gate5.reward_model.judged and not gate5.reward_model.drifted and gate5.model_scored == {}
    recovered = [e for e in events5 if e[1] == phases.R_REWARD_MODEL_RECOVERED]
    assert recovered and recovered[0][0] == "Normal" and "round 6 resumes selection" in recovered[0][2]
    assert sel.sample_round(local_store, m, 6).mode == "active"
    assert _waiting(local_store, m, 6, memory, 8)[0] == phases.R_REWARD_MODEL_RECOVERED
    # A round whose selection has nothing to say keeps the planner's reason.
    assert _waiting(local_store, m, 3, memory, 8)[0] == phases.R_WAITING_FOR_RATINGS


def test_crises_above_the_safety_cap_warn(local_store):
    m = sel.manifest(safetyCap=4)
    freeze_spec(local_store, m)
    chosen = sel.sample_round(local_store, m, 1, flagged=10)
    assert chosen.safety_cap_exceeded and chosen.safety_cap == 4 and len(chosen.selected) == 10 + 8
    memory = reconcile.RunMemory()
    reason, message = _waiting(local_store, m, 1, memory, 18)
    assert reason == phases.R_SAFETY_CAP_EXCEEDED and "10 safety-flagged responses, more than safetyCap 4" in message
    sel.rate_all(local_store, m, 1)
    _, events = _close(local_store, m, 1, memory)
    assert [e[0] for e in events if e[1] == phases.R_SAFETY_CAP_EXCEEDED] == ["Warning"]
