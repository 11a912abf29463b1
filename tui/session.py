"""One rater working through one round: order, own ratings, queued writes.

No Textual here. The screen asks the session what to show and tells it what
the rater did; the session keeps the rater's view *blind* (only their own
ratings are ever looked up) and overlays ratings that are queued but not yet
stored, so the screen shows a submitted rating at once, before the write
lands.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from therapy_rlhf.layout import RunPaths
from therapy_rlhf.ratings import RoundState, check_rater, coverage
from therapy_rlhf.records import PendingResponse, Rating
from therapy_rlhf.spec import RunManifest
from therapy_rlhf.store import Store


@dataclass
class RoundSession:
    store: Store
    paths: RunPaths
    manifest: RunManifest
    state: RoundState
    rater: str
    index: int = 0
    skipped: set[str] = field(default_factory=set)
    queued: dict[str, Rating] = field(default_factory=dict)  # response id -> newest queued rating
    history: list[str] = field(default_factory=list)  # response ids rated in this session, in order
    undone: dict[str, Rating] = field(default_factory=dict)  # withdrawn rating, to pre-fill a redo
    seconds: dict[str, float] = field(default_factory=dict)
    _shown_at: float | None = None
    _own_index: dict[str, Rating] = field(default_factory=dict)
    _index_key: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        check_rater(self.rater, self.feedback)
        self.index = self.first_unrated() if self.responses else 0

    # ------------------------------------------------------------ basics
    @property
    def feedback(self):
        return self.manifest.spec.feedback

    @property
    def round(self) -> int:
        return self.state.round

    @property
    def responses(self) -> list[PendingResponse]:
        return self.state.responses

    @property
    def current(self) -> PendingResponse | None:
        return self.responses[self.index] if self.responses else None

    @property
    def title(self) -> str:
        return f"{self.paths.namespace}/{self.paths.run}"

    # ---------------------------------------------------- own ratings only
    def own(self, response_id: str) -> Rating | None:
        """This rater's newest judgement (queued or stored); None if unrated or withdrawn."""
        if response_id in self.queued:
            rating = self.queued[response_id]
        else:
            rating = self._stored_own(response_id)
        return None if rating is None or rating.withdrawn else rating

    def _stored_own(self, response_id: str) -> Rating | None:
        ratings = self.state.ratings
        key = (id(ratings), len(ratings))
        if self._index_key != key:
            # Rebuilt only when the list changes (a write landed, a reload):
            # keeps every redraw O(responses) on rounds with many ratings.
            index: dict[str, Rating] = {}
            for r in list(ratings):
                if r.rater == self.rater and (r.response_id not in index or r.version > index[r.response_id].version):
                    index[r.response_id] = r
            self._own_index, self._index_key = index, key
        return self._own_index.get(response_id)

    def is_rated(self, response_id: str) -> bool:
        return self.own(response_id) is not None

    def rated_count(self) -> int:
        return sum(1 for r in self.responses if self.is_rated(r.id))

    def own_rewards(self) -> list[float]:
        out = []
        for resp in self.responses:
            rating = self.own(resp.id)
            if rating is not None and rating.reward is not None:
                out.append(rating.reward)
        return out

    def round_coverage(self):
        return coverage(self.state, self.feedback.min_raters)

    @property
    def done(self) -> bool:
        return bool(self.responses) and self.rated_count() == len(self.responses)

    # ---------------------------------------------------------- movement
    def first_unrated(self) -> int:
        """Where a restart resumes: the first response this rater has not rated."""
        for i, resp in enumerate(self.responses):
            if not self.is_rated(resp.id):
                return i
        return 0

    def next_unrated(self) -> int | None:
        """The next unrated response after the current one; skipped ones come last."""
        n = len(self.responses)
        order = [(self.index + step) % n for step in range(1, n + 1)]
        fresh = [i for i in order if not self.is_rated(self.responses[i].id)]
        for i in fresh:
            if self.responses[i].id not in self.skipped:
                return i
        return fresh[0] if fresh else None

    def go(self, index: int) -> None:
        self.stop_clock()
        self.index = max(0, min(index, len(self.responses) - 1))

    def step(self, delta: int) -> None:
        self.go((self.index + delta) % len(self.responses))

    def skip(self) -> None:
        if self.current is not None:
            self.skipped.add(self.current.id)
        target = self.next_unrated()
        self.go(target if target is not None else (self.index + 1) % len(self.responses))

    # ----------------------------------------------------------- timing
    def start_clock(self) -> None:
        if self._shown_at is None:
            self._shown_at = time.monotonic()

    def stop_clock(self) -> None:
        if self._shown_at is not None and self.current is not None:
            rid = self.current.id
            self.seconds[rid] = self.seconds.get(rid, 0.0) + time.monotonic() - self._shown_at
        self._shown_at = None

    def time_on_current(self) -> float:
        self.stop_clock()
        spent = self.seconds.pop(self.current.id, 0.0) if self.current else 0.0
        self.start_clock()
        return spent

    # ------------------------------------------------------ rate / undo
    def record(self, rating: Rating) -> None:
        """A rating was queued for writing: show it at once."""
        self.queued[rating.response_id] = rating
        self.skipped.discard(rating.response_id)
        if not rating.withdrawn:
            self.undone.pop(rating.response_id, None)
            self.history.append(rating.response_id)

    def saved(self, rating: Rating) -> None:
        """The writer stored it; drop the overlay unless a newer rating is queued."""
        if self.queued.get(rating.response_id) is rating:
            del self.queued[rating.response_id]

    def last_rated(self) -> str | None:
        """The response whose rating an undo withdraws: this session's last, else the newest stored."""
        while self.history:
            rid = self.history.pop()
            if self.is_rated(rid):
                return rid
        mine = [r for r in self.state.latest().values() if r.rater == self.rater and self.is_rated(r.response_id)]
        if not mine:
            return None
        return max(mine, key=lambda r: (r.created_at, r.version)).response_id

    def withdrawal(self, response_id: str, client: str) -> Rating:
        previous = self.own(response_id)
        if previous is not None:
            self.undone[response_id] = previous
        return Rating(response_id=response_id, rater=self.rater, withdrawn=True, comment="undo", client=client)
