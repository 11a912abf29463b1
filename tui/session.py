"""One rater working through one round: order, own ratings, queued writes.

No Textual here. The screen asks the session what to show and tells it what
the rater did; the session keeps the rater's view *blind* (only their own
ratings are ever looked up) and overlays ratings that are queued but not yet
stored, so the screen shows a submitted rating at once, before the write
lands. The next response offered is the one that most needs a rater
(``therapy_rlhf.feedback.pending.response_order``), recomputed as others score.
A round whose gate has closed is read-only (``closed``).
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field

from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.feedback.pending import response_order
from therapy_rlhf.feedback.rounds import RoundState
from therapy_rlhf.feedback.rewards import check_rater
from therapy_rlhf.feedback.gate import coverage
from therapy_rlhf.contracts.records import Gate, PendingResponse, Rating
from therapy_rlhf.contracts.spec import RunManifest
from therapy_rlhf.store.backends import Store


@dataclass
class RoundSession:
    store: Store
    paths: RunPaths
    manifest: RunManifest
    state: RoundState
    rater: str
    gate: Gate | None = None  # set once the round's gate has closed: read-only
    order: str | None = None  # overrides feedback.responseOrder
    index: int = 0
    skipped: set[str] = field(default_factory=set)
    queued: dict[str, Rating] = field(default_factory=dict)  # response id -> newest queued rating
    history: list[str] = field(default_factory=list)  # response ids rated in this session, in order
    undone: dict[str, Rating] = field(default_factory=dict)  # withdrawn rating, to pre-fill a redo
    seconds: dict[str, float] = field(default_factory=dict)
    _shown_at: float | None = None
    _own_index: dict[str, Rating] = field(default_factory=dict)
    _index_key: tuple[int, int] | None = None
    # Held by the writer thread for one store attempt and by a live-refresh poll while it
    # reads: a poll never lists a rating this app is storing before the writer has noted it.
    store_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

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

    @property
    def closed(self) -> bool:
        return self.gate is not None

    def position(self, response_id: str) -> int:
        """1-based place of a response in the batch ("response 3 of 24")."""
        for i, resp in enumerate(self.responses):
            if resp.id == response_id:
                return i + 1
        return 0

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

    def others_have_covered(self) -> bool:
        """Every response this rater has not scored already has the raters it needs."""
        raters = self.state.raters_by_response()
        need = self.feedback.min_raters
        return all(len(raters[r.id]) >= need for r in self.responses if not self.is_rated(r.id))

    # ---------------------------------------------------------- movement
    def _queue(self) -> list[int]:
        """Responses this rater has not scored, the one that most needs a rater first."""
        return [i for i in response_order(self.state, self.feedback, self.order) if not self.is_rated(self.responses[i].id)]

    def first_unrated(self) -> int:
        """Where a (re)start begins: the unscored response that most needs a rater."""
        queue = self._queue()
        return queue[0] if queue else 0

    def next_unrated(self) -> int | None:
        """The next response to score (not the current one); skipped ones come last.

        In batch order that is the next one after the current response; in the
        other orders the one that most needs a rater now.
        """
        queue = [i for i in self._queue() if i != self.index] or self._queue()
        if (self.order or self.feedback.response_order) == "batch" and self.responses:
            n = len(self.responses)
            queue.sort(key=lambda i: (i - self.index - 1) % n)
        for i in queue:
            if self.responses[i].id not in self.skipped:
                return i
        return queue[0] if queue else None

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
        queued = self.queued.get(rating.response_id)
        if queued is rating or (queued is not None and queued.submission_id and queued.submission_id == rating.submission_id):
            del self.queued[rating.response_id]

    def refreshed(self, fresh: RoundState, gate: Gate | None) -> None:
        """A poll read the round again: take its ratings (keeping any the writer added) and its gate."""
        self.state.take_reads(fresh)  # the writer's ratings stored after the poll listed are kept, never read back
        if gate is not None:
            self.gate = gate

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
        return Rating(
            response_id=response_id,
            rater=self.rater,
            withdrawn=True,
            comment="undo",
            client=client,
            submission_id=uuid.uuid4().hex,
        )
