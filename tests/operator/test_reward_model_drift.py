"""The operator says when the reward model drifted: a Warning Event when the gate that measured it closes,
and the reason RewardModelDrift on Ready/AwaitingRatings while the round that fell back awaits ratings."""

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


def test_a_drifted_gate_is_a_warning_event_and_the_next_round_waits_with_the_reason(local_store):
    m = sel.manifest(driftBound=0.15)
    freeze_spec(local_store, m)
    for r in (1, 2):
        sel.sample_round(local_store, m, r)
        sel.rate_all(local_store, m, r)
        close_gate(local_store, sel.PATHS, r, m.spec.feedback)
    sel.sample_round(local_store, m, 3)
    sel.rate_all(local_store, m, 3, noise=0.5)
    record = {integrity.relative(sel.PATHS, sel.PATHS.selection(3)): integrity.sha256(local_store.read_bytes(sel.PATHS.selection(3)))}
    memory = reconcile.RunMemory()
    decision = Decision(CloseGate(3, "complete"), phases.AWAITING_RATINGS, 3, phases.R_WAITING_FOR_RATINGS, "rated")
    api = RecordingApi()
    announcer = gateclose.Announcer(api, {"name": sel.PATHS.run, "namespace": sel.PATHS.namespace, "uid": "u"},
                                    logging.getLogger("test"))
    gate = gateclose.close_gate(local_store, sel.PATHS, m.spec, decision, None, announcer, record, memory.digest.recorded)
    assert gate.reward_model.drifted
    assert api.status == [{"digests": {"rounds/0003/gate.json": record["rounds/0003/gate.json"]}}]  # recorded first
    events = api.events
    drift = [e for e in events if e[1] == phases.R_REWARD_MODEL_DRIFT]
    assert drift and drift[0][0] == "Warning" and "round 4 goes to the experts whole" in drift[0][2]
    assert "24 model-scored" in next(e for e in events if e[1] == phases.R_GATE_CLOSED)[2]

    sel.sample_round(local_store, m, 4)  # falls back to 'all'
    waiting = Decision(WaitForRatings(4, 0, 32, False), phases.AWAITING_RATINGS, 4, phases.R_WAITING_FOR_RATINGS, "0/32 rated")
    reason, message = reconcile._drift_reason(local_store, sel.PATHS, m.spec, waiting, memory)
    assert reason == phases.R_REWARD_MODEL_DRIFT and "reward model drift" in message and message.startswith("0/32 rated")
    conds = {c["type"]: c for c in conditions_for(Outcome(phases.AWAITING_RATINGS, 4, reason, message), [], 1, 0.0)}
    assert conds[phases.COND_AWAITING_RATINGS]["reason"] == phases.R_REWARD_MODEL_DRIFT
    # A round that did not fall back keeps the planner's reason.
    plain = Decision(WaitForRatings(3, 0, 8, False), phases.AWAITING_RATINGS, 3, phases.R_WAITING_FOR_RATINGS, "0/8 rated")
    assert reconcile._drift_reason(local_store, sel.PATHS, m.spec, plain, memory)[0] == phases.R_WAITING_FOR_RATINGS
