"""Two apps rating the same round at the same time lose nothing."""

from __future__ import annotations

import asyncio

from therapy_rlhf.feedback.rounds import load_round
from therapy_rlhf.tui.app import ScoringApp

from .conftest import make_run
from .helpers import DEMO, saved, settle


async def rate_all(app: ScoringApp, digit: str, n: int) -> None:
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        for _ in range(n):
            await pilot.press(*(digit * 5), "enter")
            await asyncio.sleep(0)  # interleave with the other app
        await saved(pilot)
        assert app.screen.session.done


async def test_two_windows_and_two_raters_at_once(store):
    n = 4
    make_run(store, n=n)
    window_a = ScoringApp(store, "alice", ("default", "demo"), 1)
    window_b = ScoringApp(store, "alice", ("default", "demo"), 1)  # same rater, second window
    other = ScoringApp(store, "bob", ("default", "demo"), 1)
    await asyncio.gather(rate_all(window_a, "4", n), rate_all(window_b, "0", n), rate_all(other, "2", n))
    state = load_round(store, DEMO, 1)
    alice = [r for r in state.ratings if r.rater == "alice"]
    # every judgement of both windows is stored: 2 versions per response, none overwritten
    assert len(alice) == 2 * n
    for resp in state.response_ids:
        versions = sorted(r.version for r in alice if r.response_id == resp)
        assert versions == [1, 2]
        assert sorted(r.reward for r in alice if r.response_id == resp) == [0.0, 1.0]
    assert sum(1 for r in state.ratings if r.rater == "bob") == n
    assert len(store.list(DEMO.ratings_prefix(1))) == 3 * n
