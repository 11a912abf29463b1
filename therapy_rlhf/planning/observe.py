"""Read a run's progress markers from the store, for the planner.

Shared by the operator and the local runner, so both see a run the same way.
Only the round that awaits ratings has its ratings read; earlier rounds are
judged by their markers alone, which keeps a poll cheap however long the run.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping

from therapy_rlhf.store.integrity import gate_name
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.planning.planner import JobObservation, Observed, RoundObservation
from therapy_rlhf.feedback.rounds import RoundState, load_round, read_gate
from therapy_rlhf.feedback.gate import coverage
from therapy_rlhf.store.runs import read_fluency
from therapy_rlhf.contracts.spec import RunSpec
from therapy_rlhf.store.backends import Store


def observe_store(
    store: Store,
    paths: RunPaths,
    spec: RunSpec,
    *,
    jobs: dict[tuple[str, int], JobObservation] | None = None,
    close_gate_requested: bool = False,
    now: float = 0.0,
    previous: RoundState | None = None,
    executor_digests: Mapping[str, str] | None = None,
) -> tuple[Observed, RoundState | None]:
    """(observed markers, the state of the round awaiting ratings if any).

    ``previous`` is the awaiting round's state from the last poll: only the
    ratings added since are read (see ``load_round``). ``executor_digests`` is
    the executor's own record (``therapy_rlhf.store.integrity``): with it, a round's
    gate is closed only if the executor recorded it; without it (a read-only
    view such as ``status``) any gate.json counts.
    """
    keys = set(store.list(paths.root + "/"))
    rounds: dict[int, RoundObservation] = {}
    awaiting: RoundState | None = None
    for r in range(1, spec.ppo.rounds + 1):
        stored_gate = paths.gate(r) in keys
        closed = stored_gate and (executor_digests is None or gate_name(paths, r) in executor_digests)
        ro = RoundObservation(
            r,
            batch=paths.batch(r) in keys,
            gate=closed,
            gate_unrecorded=stored_gate and not closed,
            policy=paths.policy_metrics(r) in keys,
        )
        if ro.batch and not ro.gate and awaiting is None:
            awaiting = load_round(store, paths, r, previous=previous, feedback=spec.feedback, gate=None)
            cov = coverage(awaiting, spec.feedback.min_raters)
            ro = replace(
                ro,
                rated=cov.complete,
                total=cov.total,
                complete=cov.is_complete,
                awaiting_since=store.modified_at(paths.batch(r)),
                fluency=read_fluency(store, paths, r) if paths.fluency(r) in keys else None,
            )
        rounds[r] = ro
        if not ro.batch:
            break
    window = spec.ppo.stopping.window
    if window:  # the stopping rule reads the mean reward of the last closed gates (a bounded number of reads)
        for r in [q for q in sorted(rounds) if rounds[q].gate][-window:]:
            gate = read_gate(store, paths, r)
            rounds[r] = replace(rounds[r], mean_reward=gate.mean_reward if gate is not None else None)
    observed = Observed(
        sft_done=paths.sft_metrics() in keys,
        eval_done=paths.eval_results() in keys,
        rounds=rounds,
        jobs=dict(jobs or {}),
        close_gate_requested=close_gate_requested,
        now=now,
    )
    return observed, awaiting
