"""Read a run's progress markers from the store, for the planner.

Shared by the operator and the local runner, so both see a run the same way.
Only the round that awaits ratings has its ratings read; earlier rounds are
judged by their markers alone, which keeps a poll cheap however long the run.
"""

from __future__ import annotations

from dataclasses import replace

from therapy_rlhf.layout import RunPaths
from therapy_rlhf.planner import JobObservation, Observed, RoundObservation
from therapy_rlhf.ratings import RoundState, coverage, load_round
from therapy_rlhf.spec import RunSpec
from therapy_rlhf.store import Store


def observe_store(
    store: Store,
    paths: RunPaths,
    spec: RunSpec,
    *,
    jobs: dict[tuple[str, int], JobObservation] | None = None,
    close_gate_requested: bool = False,
    now: float = 0.0,
    previous: RoundState | None = None,
) -> tuple[Observed, RoundState | None]:
    """(observed markers, the state of the round awaiting ratings if any).

    ``previous`` is the awaiting round's state from the last poll: only the
    ratings added since are read (see ``load_round``).
    """
    keys = set(store.list(paths.root + "/"))
    rounds: dict[int, RoundObservation] = {}
    awaiting: RoundState | None = None
    for r in range(1, spec.ppo.rounds + 1):
        ro = RoundObservation(
            r,
            batch=paths.batch(r) in keys,
            gate=paths.gate(r) in keys,
            policy=paths.policy_metrics(r) in keys,
        )
        if ro.batch and not ro.gate and awaiting is None:
            awaiting = load_round(store, paths, r, previous=previous)
            cov = coverage(awaiting, spec.feedback.min_raters)
            ro = replace(
                ro,
                rated=cov.complete,
                total=cov.total,
                complete=cov.is_complete,
                awaiting_since=store.modified_at(paths.batch(r)),
            )
        rounds[r] = ro
        if not ro.batch:
            break
    observed = Observed(
        sft_done=paths.sft_metrics() in keys,
        eval_done=paths.eval_results() in keys,
        rounds=rounds,
        jobs=dict(jobs or {}),
        close_gate_requested=close_gate_requested,
        now=now,
    )
    return observed, awaiting
