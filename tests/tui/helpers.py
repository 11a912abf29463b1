"""Helpers for driving the scoring app with the Pilot."""

from __future__ import annotations

import time

from tests.support.budget import budget
from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.feedback.rounds import load_round

DEMO = RunPaths("default", "demo")


async def settle(pilot, timeout: float | None = None) -> None:
    """Wait for loading workers (not the writer, which runs for the app's life)."""
    app = pilot.app
    timeout = budget(1.25) if timeout is None else timeout
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not [w for w in app.workers if w.group != "writer" and not w.is_finished]:
            break
        await pilot.pause(0.05)
    await pilot.pause()


async def saved(pilot, timeout: float | None = None) -> None:
    """Wait until the writer has stored everything queued."""
    timeout = budget(2) if timeout is None else timeout
    deadline = time.monotonic() + timeout
    while pilot.app.writer.pending() and time.monotonic() < deadline:
        await pilot.pause(0.05)
    await pilot.pause()
    assert not pilot.app.writer.pending(), "ratings still queued"


def mine(store, rater="alice", paths=DEMO, round_no=1):
    """This rater's latest stored ratings, by response id."""
    state = load_round(store, paths, round_no)
    return {resp: r for (resp, who), r in state.latest().items() if who == rater}, state


async def until(pilot, predicate, seconds: float, what: str) -> None:
    """Wait for ``predicate()`` (a step that takes ``seconds`` on a quiet machine, scaled by the budget)."""
    from tests.support.budget import budget

    deadline = time.monotonic() + budget(seconds)
    while time.monotonic() < deadline:
        if predicate():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"timed out waiting for {what}")
