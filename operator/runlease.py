"""The operator's side of the run lease (``therapy_rlhf.store.lease``): one executor per run.

The operator holds a run's lease as ``operator:NAMESPACE/NAME`` while it
manages it, so a local ``therapy-rlhf run`` on the same store refuses that
run; and it refuses a run a live local runner holds (``hold`` raises
LeaseHeld naming the runner, which the reconcile turns into the
``HeldByLocalRunner`` reason and a Warning Event). The lease is renewed at
most every third of its length, so an idle run costs no store write per tick.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from therapy_rlhf.store import lease
from therapy_rlhf.contracts import phases
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.store.lease import LeaseHeld
from therapy_rlhf.store.backends import Store

__all__ = ["LeaseHeld", "OperatorLease", "hold", "release_when_ended"]


@dataclass
class OperatorLease:
    """The holding the operator keeps for one run between reconciles, and when it last wrote it."""

    holding: lease.Holding | None = None
    written_at: float = 0.0


def hold(store: Store, paths: RunPaths, kept: OperatorLease, now: float | None = None) -> None:
    """Take or renew the run's lease (LeaseHeld when a live local runner has it)."""
    now = time.time() if now is None else now
    seconds = lease.OPERATOR_LEASE_SECONDS
    if kept.holding is not None and now - kept.written_at < seconds / 3:
        return
    if kept.holding is not None:
        try:
            kept.holding.renew(seconds)
            kept.written_at = now
            return
        except lease.LeaseLost:
            kept.holding = None  # taken over (the runner saw it expire): ask again below
    kept.holding = lease.acquire(
        store, paths, lease.operator_holder(paths.namespace, paths.run), lease.KIND_OPERATOR, seconds, now
    )
    kept.written_at = now


def release_when_ended(kept: OperatorLease, phase: str) -> None:
    """Once the run ended (Succeeded, Failed), a local runner may take it at once."""
    if phase in (phases.SUCCEEDED, phases.FAILED) and kept.holding is not None:
        kept.holding.release()
        kept.holding = None
