"""Job observation and status/conditions logic, without a cluster."""

from __future__ import annotations

import pytest

from therapy_rlhf.contracts import phases
from therapy_rlhf.contracts.status import RunStatus

from therapy_rlhf.operator import builders
from therapy_rlhf.operator.conditions import Outcome, build_status, conditions_for, is_transition
from therapy_rlhf.operator.jobstate import job_state, observe_jobs, pod_failure


def job(kind, round_no, attempt, status=None, run="demo"):
    return {
        "metadata": {"name": builders.job_name(run, kind, round_no, attempt),
                     "labels": builders.job_labels(run, kind, round_no, attempt)},
        "status": status or {},
    }


DONE = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
FAILED = {"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                                       "message": "Job was active longer than specified deadline"}]}


def test_job_state_from_status():
    assert job_state(job("sft", 0, 1)) == ("running", "")
    assert job_state(job("sft", 0, 1, {"active": 1})) == ("running", "")
    assert job_state(job("sft", 0, 1, DONE)) == ("succeeded", "")
    state, reason = job_state(job("sft", 0, 1, FAILED))
    assert state == "failed" and "DeadlineExceeded" in reason and "deadline" in reason


def test_newest_attempt_and_failures_are_counted():
    obs = observe_jobs(
        [job("generate", 1, 1, FAILED), job("generate", 1, 2, FAILED), job("generate", 1, 3), job("sft", 0, 1, DONE),
         job("sft", 0, 1, DONE, run="other")],
        "demo",
    )
    gen = obs[("generate", 1)]
    assert (gen.attempt, gen.state, gen.failures) == (3, "running", 2)
    assert obs[("sft", 0)].state == "succeeded"
    assert len(obs) == 2  # the other run's Job is not ours


def test_failures_survive_deleted_earlier_attempts():
    # attempt 1 was removed by its TTL; attempt 2 failed: two failures so far.
    obs = observe_jobs([job("ppo", 2, 2, FAILED)], "demo")[("ppo", 2)]
    assert (obs.attempt, obs.failures) == (2, 2)


def test_jobs_being_deleted_or_foreign_are_ignored():
    deleting = job("sft", 0, 1)
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    foreign = {"metadata": {"name": "x", "labels": {builders.LABEL_RUN: "demo"}}}
    assert observe_jobs([deleting, foreign], "demo") == {}


def pod(code, message=None, reason="Error", finished="2026-11-25T10:00:00Z"):
    ended = {"exitCode": code, "reason": reason, "finishedAt": finished}
    if message is not None:
        ended["message"] = message
    return {"status": {"containerStatuses": [{"name": "ppo", "state": {"terminated": ended}}]}}


def test_pod_failure_is_the_jobs_error_line():
    log = "2026-11-25 INFO [ppo r1] loading\nerror: round 1's gate is not closed: gate.json does not exist\n"
    assert pod_failure([pod(1, log)]) == "error: round 1's gate is not closed: gate.json does not exist"


def test_pod_failure_of_a_pod_killed_from_outside():
    assert pod_failure([pod(137, "", reason="OOMKilled")]) == "container OOMKilled with exit code 137"
    assert pod_failure([pod(2, "Traceback...\nKeyError: 'x'")]) == (
        "container Error with exit code 2; last output: KeyError: 'x'"
    )


def test_pod_failure_takes_the_newest_failed_pod_and_ignores_successes():
    old = pod(1, "error: first", finished="2026-11-25T10:00:00Z")
    new = pod(1, "error: second", finished="2026-11-25T10:05:00Z")
    assert pod_failure([new, old, pod(0, "fine")]) == "error: second"
    assert pod_failure([pod(0, "fine")]) == "" and pod_failure([]) == ""
    assert pod_failure([{"status": {}}]) == ""  # still pending: nothing to say


def test_the_pods_reason_leads_a_failed_jobs_reason():
    name = builders.job_name("demo", "ppo", 1, 1)
    obs = observe_jobs([job("ppo", 1, 1, FAILED)], "demo", {name: "error: bad gate"})[("ppo", 1)]
    assert obs.reason.startswith("error: bad gate (DeadlineExceeded")
    running = observe_jobs([job("ppo", 1, 1)], "demo", {name: "error: stale"})[("ppo", 1)]
    assert running.reason == ""  # only a failed Job carries a pod's reason


def conds(outcome, previous=(), now=1000.0):
    return {c["type"]: c for c in conditions_for(outcome, list(previous), 3, now)}


def test_conditions_for_each_kind_of_outcome():
    awaiting = conds(Outcome(phases.AWAITING_RATINGS, 2, phases.R_WAITING_FOR_RATINGS, "round 2: 18/24"))
    assert awaiting["AwaitingRatings"]["status"] == "True" and "18/24" in awaiting["AwaitingRatings"]["message"]
    assert awaiting["Ready"]["status"] == "True" and awaiting["Failed"]["status"] == "False"
    assert all(c["observedGeneration"] == 3 for c in awaiting.values())
    failed = conds(Outcome(phases.FAILED, 1, phases.R_JOB_FAILED, "ppo failed"))
    assert failed["Failed"]["status"] == "True" and failed["Failed"]["reason"] == phases.R_JOB_FAILED
    assert failed["Ready"]["status"] == "False"
    blocked = conds(Outcome(phases.GENERATING, 1, phases.R_SECRET_MISSING, "no secret", blocked=True))
    assert blocked["Ready"]["status"] == "False" and blocked["Ready"]["reason"] == phases.R_SECRET_MISSING
    assert blocked["Failed"]["status"] == "False"
    suspended = conds(Outcome(phases.SUSPENDED, 1, phases.R_SUSPENDED, "suspended before ppo (round 1)"))
    assert suspended["Suspended"]["status"] == "True"


def test_transition_time_moves_only_when_status_flips():
    first = conditions_for(Outcome(phases.GENERATING, 1, phases.R_JOB_RUNNING, "a"), [], 1, 1000.0)
    same = {c["type"]: c for c in conditions_for(Outcome(phases.UPDATING, 1, phases.R_JOB_RUNNING, "b"), first, 1, 2000.0)}
    assert same["Ready"]["lastTransitionTime"] == "1970-01-01T00:16:40Z"
    assert same["Ready"]["message"] == "b"
    flipped = {c["type"]: c for c in conditions_for(Outcome(phases.FAILED, 1, phases.R_JOB_FAILED, "x"), first, 1, 2000.0)}
    assert flipped["Ready"]["lastTransitionTime"] == "1970-01-01T00:33:20Z"


def test_status_document_validates_against_the_crd_model():
    outcome = Outcome(phases.AWAITING_RATINGS, 1, phases.R_WAITING_FOR_RATINGS, "round 1: 18/24")
    doc = build_status(outcome, None, 2, 1000.0, rated="18/24", reward=0.61, activeJob=None,
                       rounds=[{"round": 1, "responses": 24, "rated": 18, "gateClosed": False}])
    RunStatus.model_validate({k: v for k, v in doc.items() if v is not None})
    assert doc["phase"] == "AwaitingRatings" and doc["rated"] == "18/24" and doc["observedGeneration"] == 2
    with pytest.raises(Exception):
        build_status(outcome, None, 2, 1000.0, rated="eighteen")


def test_transition_detection():
    previous = {"phase": phases.GENERATING, "round": 1,
                "conditions": [{"type": "Ready", "status": "True", "reason": phases.R_JOB_RUNNING}]}
    assert not is_transition(previous, Outcome(phases.GENERATING, 1, phases.R_JOB_RUNNING, "x"))
    assert is_transition(previous, Outcome(phases.AWAITING_RATINGS, 1, phases.R_WAITING_FOR_RATINGS, "x"))
    assert is_transition(previous, Outcome(phases.GENERATING, 1, phases.R_JOB_RETRYING, "x"))
    assert is_transition(None, Outcome(phases.PENDING, 0, phases.R_JOB_STARTED, "x"))


def test_ratings_authenticated_condition_says_whether_a_roster_is_registered():
    outcome = Outcome(phases.AWAITING_RATINGS, 1, phases.R_WAITING_FOR_RATINGS, "waiting")
    by_type = lambda conds: {c["type"]: c for c in conds}  # noqa: E731
    assert phases.COND_RATINGS_AUTHENTICATED not in by_type(conditions_for(outcome, [], 1, 0.0))
    off = by_type(conditions_for(outcome, [], 1, 0.0, authenticated=False))[phases.COND_RATINGS_AUTHENTICATED]
    assert (off["status"], off["reason"]) == ("False", phases.R_NO_RATER_KEYS) and "unauthenticated" not in off["message"]
    assert "no rater keys" in off["message"]
    on = by_type(conditions_for(outcome, [], 1, 0.0, authenticated=True))[phases.COND_RATINGS_AUTHENTICATED]
    assert (on["status"], on["reason"]) == ("True", phases.R_RATERS_REGISTERED)
    RunStatus.model_validate(build_status(outcome, None, 1, 0.0, authenticated=True))


def test_refused_ratings_are_a_warning_event_once_per_new_refusal():
    from types import SimpleNamespace

    from therapy_rlhf.feedback.authenticity import Refusal
    from therapy_rlhf.operator.gateclose import report_unusable_ratings

    events: list[tuple[str, str, str]] = []
    emit = lambda kind, reason, message: events.append((kind, reason, message))  # noqa: E731
    refusal = Refusal("store/x.json", "mallory/r1/v1", "unknown-rater", "'mallory' is not in feedback.raters")
    awaiting = SimpleNamespace(round=1, garbage=[], refused=[refusal])
    reported: dict = {}
    report_unusable_ratings(awaiting, reported, emit)
    report_unusable_ratings(awaiting, reported, emit)  # nothing new: no second Event
    assert len(events) == 1 and events[0][:2] == ("Warning", phases.R_REFUSED_RATINGS)
    assert "refused (unknown-rater)" in events[0][2]
