"""Prometheus metrics of the operator (prometheus-client, default registry).

Served on ``THERAPY_RLHF_METRICS_PORT`` (the chart's metrics Service). Run
phases are a gauge recomputed from the operator's last view of every run, so a
deleted run stops counting.
"""

from __future__ import annotations

import threading
from collections import Counter as _Counter

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from therapy_rlhf.contracts import phases

RUNS_BY_PHASE = Gauge("therapy_rlhf_runs", "TherapyRLHFRuns by phase, as last reconciled.", ["phase"])
RECONCILES = Counter("therapy_rlhf_reconciles_total", "Reconcile passes (timer ticks and run events), all runs.")
JOBS_CREATED = Counter("therapy_rlhf_jobs_created_total", "Jobs created by the operator.", ["kind"])
JOBS_SUCCEEDED = Counter("therapy_rlhf_jobs_succeeded_total", "Jobs seen finishing successfully.", ["kind"])
JOBS_FAILED = Counter("therapy_rlhf_jobs_failed_total", "Jobs seen failing.", ["kind"])
GATE_WAIT = Histogram(
    "therapy_rlhf_gate_wait_seconds",
    "Seconds from a round's batch being written to its gate closing (the psychologist's time).",
    buckets=(60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 24 * 3600, 72 * 3600, 7 * 24 * 3600),
)
GATE_TO_PPO = Histogram(
    "therapy_rlhf_gate_close_to_ppo_job_seconds",
    "Seconds from a gate closing to the round's PPO Job being created.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)

_lock = threading.Lock()
_phase_of_run: dict[str, str] = {}
_finished_jobs: set[str] = set()


def record_phase(run_uid: str, phase: str | None) -> None:
    """Remember a run's phase (None forgets the run) and refresh the gauge."""
    with _lock:
        if phase is None:
            _phase_of_run.pop(run_uid, None)
        else:
            _phase_of_run[run_uid] = phase
        counts = _Counter(_phase_of_run.values())
        for p in phases.PHASES:
            RUNS_BY_PHASE.labels(phase=p).set(counts.get(p, 0))


def record_job_finished(job_uid: str, kind: str, succeeded: bool) -> None:
    """Count a finished Job once, however many reconciles see it."""
    with _lock:
        if job_uid in _finished_jobs:
            return
        _finished_jobs.add(job_uid)
    (JOBS_SUCCEEDED if succeeded else JOBS_FAILED).labels(kind=kind).inc()


def serve(port: int) -> None:
    start_http_server(port)
