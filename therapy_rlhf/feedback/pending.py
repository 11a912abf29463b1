"""What awaits a rater: the open rounds of a store, and which response needs a score next.

One place for "what is waiting", shared by ``therapy-rlhf pending``, the
scoring TUI's start screen and rating order, and ``therapy-rlhf rate``:

* a round is *open* while it has a batch and no ``gate.json``;
* a response *needs a rater* while it has fewer than ``feedback.minRaters``
  distinct raters;
* the next response to score follows ``feedback.responseOrder``: by default
  the least-covered first (crisis cues first among equals), so a panel's
  time goes where the gate still waits, and a third rater is not led to
  responses two raters already covered.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.feedback.rewards import RatingError, check_rater
from therapy_rlhf.feedback.rounds import RoundState, load_round, read_gate
from therapy_rlhf.store.runs import list_runs, read_frozen_run, stored_rounds
from therapy_rlhf.feedback.summary import summarize_round
from therapy_rlhf.contracts.spec import FeedbackSpec, RunManifest, SpecError
from therapy_rlhf.store.backends import Store

ORDERS = ("least-covered", "crisis-first", "batch")


def response_order(state: RoundState, feedback: FeedbackSpec, order: str | None = None) -> list[int]:
    """Batch indices of a round's responses, the one that most needs a rater first."""
    order = order or feedback.response_order
    if order not in ORDERS:
        raise ValueError(f"unknown response order {order!r}: use one of {', '.join(ORDERS)}")
    raters = state.raters_by_response()
    need = feedback.min_raters

    def key(i: int) -> tuple:
        resp = state.responses[i]
        n = len(raters.get(resp.id, ()))
        crisis = bool(resp.safety.crisis_cues)
        if order == "least-covered":
            return (n >= need, n, not crisis, i)
        if order == "crisis-first":
            return (not crisis, n >= need, n, i)
        return (i,)

    return sorted(range(len(state.responses)), key=key)


def awaiting_round(store: Store, paths: RunPaths) -> int | None:
    """The first round with a batch and no gate (the one a rater can score), or None."""
    for round_no in stored_rounds(store, paths):
        if not store.exists(paths.gate(round_no)):
            return round_no
    return None


@dataclass(frozen=True)
class WaitingResponse:
    id: str
    position: int  # 1-based place in the batch ("response 3 of 24")
    raters: int  # distinct raters so far
    needed: bool  # still short of minRaters
    crisis_cues: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            "responseId": self.id,
            "position": self.position,
            "raters": self.raters,
            "needsRaters": self.needed,
            "crisisCues": list(self.crisis_cues),
        }


@dataclass(frozen=True)
class WaitingRound:
    paths: RunPaths
    round: int
    responses: int
    fully_scored: int  # responses with minRaters raters
    min_raters: int
    yours: int  # responses this rater has scored (0 without a rater)
    waiting_since: str | None
    todo: tuple[WaitingResponse, ...] = ()  # not scored by this rater, in scoring order
    problem: str | None = None  # why this rater may not score it

    @property
    def run(self) -> str:
        return f"{self.paths.namespace}/{self.paths.run}"

    @property
    def needs_you(self) -> int:
        return sum(1 for w in self.todo if w.needed)

    def to_dict(self) -> dict:
        return {
            "run": self.run,
            "round": self.round,
            "responses": self.responses,
            "fullyScored": self.fully_scored,
            "minRaters": self.min_raters,
            "yours": self.yours,
            "waitingSince": self.waiting_since,
            "problem": self.problem,
            "toScore": [w.to_dict() for w in self.todo],
        }


@dataclass
class Waiting:
    rounds: list[WaitingRound] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # runs that could not be read


def waiting_round(
    store: Store,
    paths: RunPaths,
    manifest: RunManifest,
    state: RoundState,
    rater: str | None,
    problem: str | None = None,
) -> WaitingRound | None:
    """One open round as a rater sees it; None when its gate has closed meanwhile."""
    feedback = manifest.spec.feedback
    round_no = state.round
    summary = summarize_round(store, paths, manifest, round_no, state=state)
    if summary.gate_closed:
        return None
    raters = state.raters_by_response()
    todo = []
    for i in response_order(state, feedback):
        resp = state.responses[i]
        if rater is not None and rater in raters[resp.id]:
            continue
        n = len(raters[resp.id])
        if rater is None and n >= feedback.min_raters:
            continue
        todo.append(WaitingResponse(resp.id, i + 1, n, n < feedback.min_raters, tuple(resp.safety.crisis_cues)))
    yours = sum(1 for who in raters.values() if rater in who) if rater else 0
    return WaitingRound(
        paths=paths,
        round=round_no,
        responses=summary.responses,
        fully_scored=summary.rated,
        min_raters=feedback.min_raters,
        yours=yours,
        waiting_since=summary.waiting_since,
        todo=tuple(todo),
        problem=problem,
    )


def find_waiting(store: Store, rater: str | None = None, runs: list[RunPaths] | None = None) -> Waiting:
    """Every open round of the store's runs (or of ``runs``), most urgent first.

    Store failures raise (the caller says the store is unreachable); a run
    whose stored spec cannot be used is listed in ``problems`` and skipped.
    """
    out = Waiting()
    for paths in runs if runs is not None else list_runs(store):
        try:
            manifest = read_frozen_run(store, paths)
        except SpecError as err:
            out.problems.append(f"{paths.namespace}/{paths.run}: {err.problems[0]}")
            continue
        problem = None
        if rater is not None:
            try:
                check_rater(rater, manifest.spec.feedback)
            except RatingError as err:
                problem = str(err)
        for round_no in stored_rounds(store, paths):
            # A closed round has nothing to score: skip it on its gate alone, before
            # reading its ratings (a 50-round run would otherwise read every rating
            # ever given at each start). A gate that is not a gate raises here.
            if read_gate(store, paths, round_no) is not None:
                continue
            state = load_round(store, paths, round_no)
            item = waiting_round(store, paths, manifest, state, rater, problem)
            if item is not None:
                out.rounds.append(item)
    # Most urgent first: rounds that still need this rater, oldest waiting first.
    out.rounds.sort(key=lambda w: (w.problem is not None, w.needs_you == 0, not w.todo, w.waiting_since or ""))
    return out
