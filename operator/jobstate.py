"""Kubernetes Jobs -> the planner's JobObservation (pure; no API calls).

The operator lists a run's Jobs by label and hands them here. Each (kind,
round) step may have several attempts (one Job each, named by attempt); the
planner sees the newest attempt and how many attempts failed, and compares
that with ``spec.backoffLimit``.
"""

from __future__ import annotations

from typing import Any, Iterable

from therapy_rlhf.planning.planner import JobObservation, JobState

from therapy_rlhf.operator.builders import LABEL_ATTEMPT, LABEL_KIND, LABEL_ROUND, LABEL_RUN


def _condition(job: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype and cond.get("status") == "True":
            return cond
    return None


def job_state(job: dict[str, Any]) -> tuple[JobState, str]:
    """(state, reason) of one Job from its status, as the Job controller reports it."""
    status = job.get("status") or {}
    if _condition(job, "Complete") or (status.get("succeeded") or 0) >= 1:
        return "succeeded", ""
    failed = _condition(job, "Failed")
    if failed is not None:
        why = failed.get("message") or failed.get("reason") or "the Job failed"
        reason = failed.get("reason")
        return "failed", f"{reason}: {why}" if reason and reason not in why else why
    if (status.get("failed") or 0) >= 1 and not status.get("active"):
        return "failed", "the Job's pod failed"
    return "running", ""


def pod_failure(pods: Iterable[dict[str, Any]]) -> str:
    """Why a Job's newest failed pod ended, in one line ("" when no pod says).

    Every job prints one ``error: ...`` line as its last words, and its
    container's ``FallbackToLogsOnError`` policy makes the kubelet keep the
    log's tail as the termination message: that line is the reason. A pod
    killed from outside (OOMKilled, evicted) has no such line; its container
    reason and exit code are.
    """
    newest: tuple[str, str] | None = None
    for pod in pods:
        status = pod.get("status") or {}
        for container in status.get("containerStatuses") or []:
            ended = (container.get("state") or {}).get("terminated") or {}
            if not ended or ended.get("exitCode", 0) == 0:
                continue
            lines = [ln.strip() for ln in (ended.get("message") or "").splitlines() if ln.strip()]
            errors = [ln for ln in lines if ln.startswith("error:")]
            if errors:
                why = errors[-1]
            else:
                why = f"container {ended.get('reason') or 'terminated'} with exit code {ended.get('exitCode')}"
                if lines:
                    why += f"; last output: {lines[-1]}"
            when = ended.get("finishedAt") or ""
            if newest is None or when >= newest[0]:
                newest = (when, why[:400])
    if newest is None:
        return ""
    return newest[1]


def job_key(job: dict[str, Any]) -> tuple[str, int, int] | None:
    """(kind, round, attempt) from a Job's labels; None for Jobs we did not make."""
    labels = (job.get("metadata") or {}).get("labels") or {}
    try:
        return labels[LABEL_KIND], int(labels[LABEL_ROUND]), int(labels[LABEL_ATTEMPT])
    except (KeyError, ValueError):
        return None


def observe_jobs(
    jobs: Iterable[dict[str, Any]], run: str, pod_reasons: dict[str, str] | None = None
) -> dict[tuple[str, int], JobObservation]:
    """Newest attempt per (kind, round), with the number of failed attempts so far.

    ``pod_reasons`` maps failed Jobs' names to ``pod_failure`` of their pods;
    it leads the failure reason (the Job's own condition only says that it
    hit its backoff limit).
    """
    per_step: dict[tuple[str, int], list[tuple[int, JobState, str]]] = {}
    for job in jobs:
        meta = job.get("metadata") or {}
        if (meta.get("labels") or {}).get(LABEL_RUN) != run or meta.get("deletionTimestamp"):
            continue
        key = job_key(job)
        if key is None:
            continue
        kind, round_no, attempt = key
        state, reason = job_state(job)
        detail = (pod_reasons or {}).get(meta.get("name", ""))
        if state == "failed" and detail:
            reason = f"{detail} ({reason})"
        per_step.setdefault((kind, round_no), []).append((attempt, state, reason))
    out: dict[tuple[str, int], JobObservation] = {}
    for (kind, round_no), attempts in per_step.items():
        attempts.sort()
        attempt, state, reason = attempts[-1]
        # Attempts are sequential: attempt n exists only because n-1 failed. Counting
        # from the number (not from the Jobs still present) survives Jobs removed
        # by their TTL or by hand.
        failures = attempt - 1 + (1 if state == "failed" else 0)
        out[(kind, round_no)] = JobObservation(kind, round_no, attempt, state, failures, reason)
    return out
