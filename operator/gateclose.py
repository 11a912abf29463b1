"""The operator's gate close and the Events that must be posted exactly once, across restarts.

What a gate close does and says is the executors' shared step (``execution.step``); this module
keeps the operator's part: the status patch before the write, and Events named after what they
announce.

A crash can stop the operator between any two of its writes. Each write that a
restart could otherwise repeat or misread is made recognisable:

* gate.json: its digest goes into ``status.digests`` (a status patch) before the
  object is written (``execution.step.close_round_gate`` -> ``feedback.gate.close_gate``), so a restarted
  operator finds its own gate recorded and never replaces it;
* the Events that announce a gate or a Job: they are named after what they
  announce (``builders.build_event``), so posting one again after a restart is
  answered 409 by the API server instead of making a second Event;
* a gate whose announcement a restart cannot be sure of -- recorded in
  ``status.digests`` but not yet shown as closed in ``status.rounds`` (the crash
  came between the write and the status patch of the pass) -- is announced again
  (409 if it had been).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from therapy_rlhf.contracts import phases
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.execution import step
from therapy_rlhf.feedback.rounds import read_gate
from therapy_rlhf.planning.planner import CloseGate, Decision, Observed
from therapy_rlhf.store.backends import StoreError

from therapy_rlhf.operator import builders, kube
from therapy_rlhf.operator.conditions import timestamp


class Announcer:
    """Posts the once-only Events of one run (a failed post is logged, never fatal: Events are advisory)."""

    def __init__(self, api: kube.KubeApi, run_meta: dict[str, Any], logger: logging.Logger):
        self.api = api
        self.meta = run_meta
        self.logger = logger

    def post(self, key: str, event_type: str, reason: str, message: str) -> None:
        event = builders.build_event(self.meta, key, event_type, reason, message, timestamp(time.time()))
        try:
            self.api.create_event(event)
        except kube.Conflict:
            self.logger.info("Event %s was posted before a restart", event["metadata"]["name"])
        except kube.KubeError as err:
            self.logger.warning("cannot post Event %s: %s", event["metadata"]["name"], err)


def job_event_key(kind: str, round_no: int, attempt: int) -> str:
    return f"job-{kind}-r{round_no}-a{attempt}"


def _gate_key(round_no: int) -> str:
    return f"gate-r{round_no}"


def announce_gate(announcer: Announcer, gate) -> None:
    for notice in step.gate_notices(gate):
        announcer.post(notice.key, notice.level, notice.reason, notice.message)


def close_gate(store, paths: RunPaths, spec, decision: Decision, awaiting, announcer: Announcer,
               record: dict[str, str], recorded: dict[str, str]):
    """Close the decision's gate: the digest is patched into status.digests before gate.json is written."""
    action: CloseGate = decision.action  # type: ignore[assignment]
    closed_by = "operator" if action.reason == "complete" else f"operator ({builders.ANNOTATION_CLOSE_GATE} annotation)"
    meta = announcer.meta

    def keep(name: str, digest: str) -> None:
        announcer.api.patch_run_status(meta["namespace"], meta["name"], {"digests": {name: digest}})
        record[name] = recorded[name] = digest

    try:
        done = step.close_round_gate(store, paths, spec, action, "operator", closed_by, record, keep, previous=awaiting)
    except step.GateNotClosed as err:
        raise StoreError(str(err)) from None
    record.update(done.digests)
    recorded.update(done.digests)
    for notice in done.notices:
        announcer.post(notice.key, notice.level, notice.reason, notice.message)
    return done.gate


def unannounced_gates(status: dict[str, Any]) -> set[int]:
    """Rounds whose gate the status records but does not show closed: a restart cannot tell if it was announced."""
    shown = {r.get("round") for r in status.get("rounds") or [] if r.get("gateClosed")}
    recorded = set(status.get("digests") or {})
    rounds = {int(name.split("/")[1]) for name in recorded if name.startswith("rounds/") and name.endswith("/gate.json")}
    return rounds - shown


def announce_restored(store, paths: RunPaths, observed: Observed, pending: set[int], announcer: Announcer) -> None:
    """Announce (once, by name) each pending round whose recorded gate is in the store; drop it from ``pending``."""
    for r in sorted(pending):
        if not observed.round(r).gate:
            continue  # not written before the crash: the round is closed again, and announced then
        gate = read_gate(store, paths, r)
        if gate is not None:
            announce_gate(announcer, gate)
        pending.discard(r)


def report_unusable_ratings(awaiting, reported: dict[tuple[int, str], int], emit) -> None:
    """Warning Events for a round's rating objects that count nowhere, once per new object:
    garbage (not a valid rating) and refused (not its rater's own: ``feedback.authenticity``)."""
    from therapy_rlhf.feedback.authenticity import describe_refusals

    r = awaiting.round
    if len(awaiting.garbage) > reported.get((r, "garbage"), 0):
        reported[(r, "garbage")] = len(awaiting.garbage)
        emit(
            "Warning", phases.R_GARBAGE_RATINGS,
            f"round {r}: {len(awaiting.garbage)} object(s) in the ratings prefix are not valid "
            f"ratings and are ignored; first: {awaiting.garbage[0]}",
        )
    if len(awaiting.refused) > reported.get((r, "refused"), 0):
        reported[(r, "refused")] = len(awaiting.refused)
        emit(
            "Warning", phases.R_REFUSED_RATINGS,
            f"round {r}: {len(awaiting.refused)} rating(s) refused, not signed by their rater's registered key "
            "(never counted): " + "; ".join(describe_refusals(awaiting.refused, limit=3)),
        )
