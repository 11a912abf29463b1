"""The steps the job tests repeat: run one job in process, and a round generated, rated and gated."""

from __future__ import annotations

from therapy_rlhf.jobs import generate
from therapy_rlhf.jobs.common import JobContext
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.feedback.gate import close_gate
from therapy_rlhf.feedback import simrater


def run_job(module, kind, m, store, round_no):
    """A job's ``main`` in this process, with the context closed afterwards as the entrypoint does."""
    ctx = JobContext(kind=kind, manifest=m, round=round_no, store=store)
    try:
        module.main(ctx)
    finally:
        ctx.close()


def rated_round(m, store, round_no=1):
    """Generate, let the simulated rater score everything, close the gate; returns the gate."""
    paths = RunPaths("default", m.name)
    run_job(generate, "generate", m, store, round_no)
    simrater.rate_round(store, paths, m, round_no)
    return close_gate(store, paths, round_no, m.spec.feedback, closed_by="test").gate
