"""Reading the store for the screens: the work list, a round to rate, summaries.

Everything here is blocking store I/O and runs in Textual thread workers,
never on the UI thread. It only combines the shared contracts
(``therapy_rlhf.store.runs`` and ``therapy_rlhf.feedback.rounds``); errors come back as one
line a psychologist can act on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.feedback.pending import WaitingRound, find_waiting
from therapy_rlhf.feedback.rater_keys import signer_for
from therapy_rlhf.feedback.rewards import RatingError, check_rater
from therapy_rlhf.feedback.rounds import RoundState, load_round, read_gate
from therapy_rlhf.feedback.gate import overlap
from therapy_rlhf.contracts.records import Gate
from therapy_rlhf.feedback.summary import RoundSummary, summarize_round
from therapy_rlhf.store.runs import read_frozen_run, stored_rounds
from therapy_rlhf.contracts.spec import RunManifest, SpecError
from therapy_rlhf.feedback.simrater import is_simulated
from therapy_rlhf.store.backends import NotFound, Store, StoreError
from therapy_rlhf.tui.session import RoundSession
from therapy_rlhf.tui.writer import plain_error


class WorkError(RuntimeError):
    """A problem the rater must see (one line, no traceback)."""


# One open round of one run, as the start screen lists it (see therapy_rlhf.feedback.pending).
WorkItem = WaitingRound


@dataclass
class WorkList:
    items: list[WorkItem] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # runs that could not be read


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def store_error(store: Store, err: Exception) -> WorkError:
    return WorkError(f"cannot reach the store {store.uri}: {plain_error(err)}")


def find_work(store: Store, rater: str) -> WorkList:
    """Open rounds (gate not closed) of every run, with this rater's progress, most urgent first."""
    try:
        found = find_waiting(store, rater)
    except (StoreError, OSError) as err:
        raise store_error(store, err) from None
    return WorkList(found.rounds, found.problems)


def open_run(store: Store, namespace: str, run: str) -> tuple[RunPaths, RunManifest]:
    paths = RunPaths(namespace, run)
    try:
        return paths, read_frozen_run(store, paths)
    except SpecError as err:
        raise WorkError(
            f"the spec of run {namespace}/{run} cannot be used (unknown or invalid rubric/fields): "
            + "; ".join(err.problems[:3])
        ) from None
    except NotFound as err:
        raise WorkError(str(err)) from None
    except (StoreError, OSError) as err:
        raise store_error(store, err) from None


def open_round(
    store: Store, namespace: str, run: str, rater: str, round_no: int | None = None, order: str | None = None
) -> RoundSession:
    """Load one round for scoring (the first open round when round_no is None).

    A round whose gate has closed opens read-only (``session.closed``): its
    scores can be read and reviewed, never added to.
    """
    paths, manifest = open_run(store, namespace, run)
    try:
        check_rater(rater, manifest.spec.feedback)
        signer_for(rater, manifest.spec.feedback)  # a run that takes only signed ratings needs this machine's key
    except RatingError as err:
        raise WorkError(f"run {namespace}/{run}: {err}") from None
    try:
        rounds = stored_rounds(store, paths)
        if not rounds:
            raise WorkError(f"run {namespace}/{run} has no responses to score yet")
        if round_no is None:
            open_rounds = [r for r in rounds if read_gate(store, paths, r) is None]
            round_no = open_rounds[0] if open_rounds else rounds[-1]
        elif round_no not in rounds:
            raise WorkError(f"run {namespace}/{run} has no batch {round_no} (stored batches: {rounds})")
        gate = read_gate(store, paths, round_no)
        state = load_round(store, paths, round_no)
    except (StoreError, OSError) as err:
        raise store_error(store, err) from None
    return RoundSession(store, paths, manifest, state, rater, gate=gate, order=order)


@dataclass(frozen=True)
class RoundReport:
    """The summary screen's numbers for one round."""

    summary: RoundSummary
    by_rater: dict[str, int]  # latest ratings per rater
    seconds_by_rater: dict[str, float]  # time spent per rater (all versions)
    shared: int = 0  # responses scored by 2+ raters
    simulated: tuple[str, ...] = ()  # raters whose ratings are simulated


def run_report(store: Store, paths: RunPaths, manifest: RunManifest) -> list[RoundReport]:
    reports = []
    for round_no in stored_rounds(store, paths):
        state = load_round(store, paths, round_no)
        summary = summarize_round(store, paths, manifest, round_no, state=state)
        by_rater: dict[str, int] = {}
        simulated: set[str] = set()
        for (_resp, who), rating in state.latest().items():
            by_rater[who] = by_rater.get(who, 0) + 1
            if is_simulated(rating):
                simulated.add(who)
        seconds: dict[str, float] = {}
        for rating in state.ratings:
            seconds[rating.rater] = seconds.get(rating.rater, 0.0) + rating.seconds_spent
        reports.append(
            RoundReport(
                summary, dict(sorted(by_rater.items())), dict(sorted(seconds.items())), overlap(state), tuple(sorted(simulated))
            )
        )
    return reports


def score_history(store: Store, paths: RunPaths, current_round: int, current_gate: Gate | None = None) -> list[tuple[int, float]]:
    """(batch, mean score) of each batch up to this one whose gate closed, after safety penalties.

    Open batches are left out: blind raters must not see each other's scores
    (the screen appends this rater's own mean for an open batch being
    scored, computed the same way). ``current_gate``: the current batch's
    gate as already read.
    """
    values = []
    try:
        for round_no in stored_rounds(store, paths):
            if round_no > current_round:
                break
            gate = current_gate if round_no == current_round else read_gate(store, paths, round_no)
            if gate is not None and gate.mean_reward is not None:
                values.append((round_no, gate.mean_reward))
    except (StoreError, OSError) as err:
        raise store_error(store, err) from None
    return values


@dataclass(frozen=True)
class RoundUpdate:
    """What a live-refresh poll found for the round on screen."""

    state: RoundState
    gate: Gate | None
    next_batch: bool  # the next round's batch exists (a new batch to score)


def poll_round(store: Store, paths: RunPaths, state: RoundState) -> RoundUpdate:
    """A cheap re-read of one round: one listing, the new rating objects, the gate, the next batch.

    Raises StoreError/OSError when the store does not answer (the screen keeps its view).
    """
    fresh = load_round(store, paths, state.round, previous=state)
    gate = read_gate(store, paths, state.round)
    return RoundUpdate(fresh, gate, store.exists(paths.batch(state.round + 1)))


def age(since: float | None, now: float | None = None) -> str:
    """'3 h 05 min' style age of a timestamp."""
    if since is None:
        return "-"
    seconds = max(0, int((now if now is not None else time.time()) - since))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    return f"{hours // 24} days"
