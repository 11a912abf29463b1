"""One executor per run against the emulated cluster (kmock + moto S3): the operator refuses a run a live
local runner holds (HeldByLocalRunner, a Warning naming it), takes it once the runner let go, and a local
runner refuses the run the operator manages."""

from __future__ import annotations

import os
import socket

import pytest
from tests.support.budget import budget

from therapy_rlhf.store import lease
from therapy_rlhf.contracts import phases
from therapy_rlhf.contracts.layout import RunPaths

from .test_emulated_cluster import condition

PATHS = RunPaths("default", "demo")


async def test_the_operator_refuses_a_run_a_local_runner_holds_then_takes_it(cluster, run_spec, run_store):
    held = lease.acquire(run_store, PATHS, lease.local_holder(), lease.KIND_LOCAL, 60)
    await cluster.start_operator()
    await cluster.create_run("demo", run_spec())

    run = await cluster.wait_reason("demo", phases.R_HELD_BY_LOCAL_RUNNER, budget(3))
    message = condition(run, "Ready")["message"]
    assert f"local-runner pid {os.getpid()} on {socket.gethostname()}, since " in message
    await cluster.settle()
    assert await cluster.jobs() == []  # nothing started under the runner
    warnings = [e for e in await cluster.events() if e["reason"] == phases.R_HELD_BY_LOCAL_RUNNER]
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning"
    held.release()  # the runner ended
    await cluster.wait_phase("demo", phases.AWAITING_RATINGS, round_no=1)
    current = run_store.read_json(PATHS.lease())
    assert current["holder"] == lease.operator_holder("default", "demo") and current["kind"] == lease.KIND_OPERATOR
    with pytest.raises(lease.LeaseHeld, match="is managed by the operator"):
        lease.acquire(run_store, PATHS, lease.local_holder(), lease.KIND_LOCAL, 60)
