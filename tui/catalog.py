"""Reading the store for the screens: the work list, a round to rate, summaries.

Everything here is blocking store I/O and runs in Textual thread workers,
never on the UI thread. It only combines the shared contracts
(``therapy_rlhf.runs`` and ``therapy_rlhf.ratings``); errors come back as one
line a psychologist can act on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

from therapy_rlhf.layout import RunPaths
from therapy_rlhf.ratings import RatingError, check_rater, load_round, read_gate
from therapy_rlhf.runs import RoundSummary, list_runs, read_frozen_run, stored_rounds, summarize_round
from therapy_rlhf.spec import RunManifest, SpecError
from therapy_rlhf.store import NotFound, Store, StoreError
from therapy_rlhf.tui.session import RoundSession


class WorkError(RuntimeError):
    """A problem the rater must see (one line, no traceback)."""


@dataclass(frozen=True)
class WorkItem:
    """One open round of one run, as the start screen lists it."""

    paths: RunPaths
    round: int
    mine: int  # responses this rater has rated
    total: int
    covered: int  # responses with enough raters
    waiting_since: float | None  # batch written at (epoch seconds)
    problem: str | None = None  # why this rater cannot rate it

    @property
    def run(self) -> str:
        return f"{self.paths.namespace}/{self.paths.run}"


@dataclass
class WorkList:
    items: list[WorkItem] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # runs that could not be read


def _parse_time(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _store_error(store: Store, err: Exception) -> WorkError:
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    return WorkError(f"cannot reach the store {store.uri}: {first}")


def find_work(store: Store, rater: str) -> WorkList:
    """Open rounds (gate not closed) of every run, with this rater's progress."""
    out = WorkList()
    try:
        runs = list_runs(store)
    except (StoreError, OSError) as err:
        raise _store_error(store, err) from None
    for paths in runs:
        try:
            manifest = read_frozen_run(store, paths)
        except SpecError as err:
            out.problems.append(f"{paths.namespace}/{paths.run}: {err.problems[0]}")
            continue
        except (StoreError, OSError) as err:
            raise _store_error(store, err) from None
        problem = None
        try:
            check_rater(rater, manifest.spec.feedback)
        except RatingError as err:
            problem = str(err)
        for round_no in stored_rounds(store, paths):
            # A closed round has nothing to rate: skip it on its gate alone, before
            # reading its ratings (a 50-round run would otherwise read every rating
            # ever given at each start). A gate that is not a gate raises here.
            if read_gate(store, paths, round_no) is not None:
                continue
            state = load_round(store, paths, round_no)
            summary: RoundSummary = summarize_round(store, paths, manifest, round_no, state=state)
            if summary.gate_closed:  # closed meanwhile
                continue
            mine = {resp for resp, who in state.latest() if who == rater}
            out.items.append(
                WorkItem(
                    paths=paths,
                    round=round_no,
                    mine=len(mine),
                    total=summary.responses,
                    covered=summary.rated,
                    waiting_since=_parse_time(summary.waiting_since),
                    problem=problem,
                )
            )
    # Most urgent first: rounds still needing this rater, oldest waiting first.
    out.items.sort(key=lambda w: (w.problem is not None, w.mine >= w.total, w.waiting_since or 0.0))
    return out


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
        raise _store_error(store, err) from None


def open_round(store: Store, namespace: str, run: str, rater: str, round_no: int | None = None) -> RoundSession:
    """Load one round for rating (the first open round when round_no is None)."""
    paths, manifest = open_run(store, namespace, run)
    try:
        check_rater(rater, manifest.spec.feedback)
    except RatingError as err:
        raise WorkError(f"run {namespace}/{run}: {err}") from None
    try:
        rounds = stored_rounds(store, paths)
        if not rounds:
            raise WorkError(f"run {namespace}/{run} has no responses to rate yet")
        if round_no is None:
            open_rounds = [r for r in rounds if read_gate(store, paths, r) is None]
            round_no = open_rounds[0] if open_rounds else rounds[-1]
        elif round_no not in rounds:
            raise WorkError(f"run {namespace}/{run} has no round {round_no} (stored rounds: {rounds})")
        state = load_round(store, paths, round_no)
    except (StoreError, OSError) as err:
        raise _store_error(store, err) from None
    return RoundSession(store, paths, manifest, state, rater)


@dataclass(frozen=True)
class RoundReport:
    """The summary screen's numbers for one round."""

    summary: RoundSummary
    by_rater: dict[str, int]  # latest ratings per rater
    seconds_by_rater: dict[str, float]  # time spent per rater (all versions)


def run_report(store: Store, paths: RunPaths, manifest: RunManifest) -> list[RoundReport]:
    reports = []
    for round_no in stored_rounds(store, paths):
        summary = summarize_round(store, paths, manifest, round_no)
        state = load_round(store, paths, round_no)
        by_rater: dict[str, int] = {}
        for _resp, who in state.latest():
            by_rater[who] = by_rater.get(who, 0) + 1
        seconds: dict[str, float] = {}
        for rating in state.ratings:
            seconds[rating.rater] = seconds.get(rating.rater, 0.0) + rating.seconds_spent
        reports.append(RoundReport(summary, dict(sorted(by_rater.items())), dict(sorted(seconds.items()))))
    return reports


def closed_round_means(store: Store, paths: RunPaths, current_round: int) -> list[float]:
    """Mean reward of each earlier round whose gate closed, for the sparkline.

    Open rounds are left out: blind raters must not see each other's scores
    (the screen appends this rater's own mean for the round being rated).
    """
    values = []
    try:
        for round_no in stored_rounds(store, paths):
            if round_no >= current_round:
                break
            gate = read_gate(store, paths, round_no)
            if gate is not None and gate.mean_reward is not None:
                values.append(gate.mean_reward)
    except (StoreError, OSError) as err:
        raise _store_error(store, err) from None
    return values


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
