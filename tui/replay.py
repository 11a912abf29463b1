"""Replaying the journal at start: what an earlier session submitted but could not store.

Blocking store I/O (run it in a thread worker). Each outstanding rating goes
back to the writer with its original ``submission_id``; the writer re-reads
its round and recognises one that did reach the store, so a replay stores
every rating exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.feedback.rounds import RoundState, load_round
from therapy_rlhf.contracts.records import Rating
from therapy_rlhf.store.runs import read_frozen_run
from therapy_rlhf.contracts.spec import FeedbackSpec, SpecError
from therapy_rlhf.store.backends import NotFound, Store
from therapy_rlhf.tui.journal import QueuedRating


@dataclass
class ReplayTarget:
    """A round opened only to store journaled ratings (the writer's WriteTarget)."""

    store: Store
    paths: RunPaths
    state: RoundState
    feedback_spec: FeedbackSpec

    @property
    def feedback(self) -> FeedbackSpec:
        return self.feedback_spec

    @property
    def title(self) -> str:
        return f"{self.paths.namespace}/{self.paths.run}"

    @property
    def round(self) -> int:
        return self.state.round

    def saved(self, rating: Rating) -> None:
        """Nothing to update: no screen shows this target."""


@dataclass
class Replay:
    jobs: list[tuple[ReplayTarget, Rating]] = field(default_factory=list)
    unstorable: list[str] = field(default_factory=list)  # rounds that cannot be opened, and why


def prepare(store: Store, outstanding: list[QueuedRating]) -> Replay:
    """Open each round that has outstanding ratings; store failures raise (try again later)."""
    out = Replay()
    targets: dict[tuple[str, int], ReplayTarget | None] = {}
    for item in outstanding:
        key = (item.run, item.round)
        if key not in targets:
            namespace, _, name = item.run.partition("/")
            paths = RunPaths(namespace, name)
            try:
                manifest = read_frozen_run(store, paths)
                targets[key] = ReplayTarget(store, paths, load_round(store, paths, item.round), manifest.spec.feedback)
            except (NotFound, SpecError) as err:
                # The run or its batch is not in this store (any more): the ratings stay in
                # the journal, reported at every start, rather than being thrown away.
                targets[key] = None
                out.unstorable.append(f"batch {item.round} of {item.run}: {str(err).splitlines()[0]}")
        target = targets[key]
        if target is not None:
            out.jobs.append((target, item.rating))
    return out
