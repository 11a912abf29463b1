"""At 80x24 (the SSH default) panels fit, or scroll and say so; the review opens on closed batches only."""

from __future__ import annotations

from textual.widgets import DataTable

from therapy_rlhf.feedback.gate import close_gate
from therapy_rlhf.feedback.rounds import load_round
from therapy_rlhf.feedback.submit import submit_rating
from therapy_rlhf.contracts.records import Rating
from therapy_rlhf.tui.app import ScoringApp
from therapy_rlhf.tui.guidelines_screen import GuidelinesScreen
from therapy_rlhf.tui.help_screen import HelpScreen
from therapy_rlhf.tui.review_screen import ReviewScreen
from therapy_rlhf.tui.scroll_hint import HintedScroll
from therapy_rlhf.tui.summary_screen import SummaryScreen

from .conftest import make_run
from .helpers import DEMO, settle, until


def panel(app) -> HintedScroll:
    return app.screen.query_one(HintedScroll)


async def test_help_fits_and_guidelines_say_there_is_more(demo_store):
    app = ScoringApp(demo_store, "alice", ("default", "demo"), 1)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("H")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), 0.2, "the keys")
        await pilot.pause()
        assert panel(app).max_scroll_y == 0 and not panel(app).border_subtitle  # every key on one screen
        await pilot.press("escape", "question_mark")
        await until(pilot, lambda: isinstance(app.screen, GuidelinesScreen) and panel(app).border_subtitle, 0.5, "the guidelines")
        scroll = panel(app)
        assert scroll.max_scroll_y > 0 and scroll.border_subtitle == "more below: PgDn or arrows"
        scroll.scroll_end(animate=False)
        await until(pilot, lambda: scroll.border_subtitle == "end (PgUp for the top)", 0.2, "the end hint")


async def test_summary_fits_80_columns_and_reviews_a_closed_batch(local_store):
    m = make_run(local_store, n=3)
    state = load_round(local_store, DEMO, 1)
    for who, values in (("bob", (1.0, 0.5, 0.25)), ("carol-with-a-long-id", (0.5, 0.5, 0.75))):
        for rid, v in zip(state.response_ids, values):
            crit = {c.name: v for c in m.spec.feedback.rubric}
            submit_rating(local_store, DEMO, state, Rating(response_id=rid, rater=who, criteria=crit, comment=f"{who}: {v}"), m.spec.feedback)
    close_gate(local_store, DEMO, 1, m.spec.feedback)
    app = ScoringApp(local_store, "alice", ("default", "demo"), 1)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("t")
        await settle(pilot)
        assert isinstance(app.screen, SummaryScreen)
        for table in app.screen.query(DataTable):
            assert table.virtual_size.width <= table.region.width, table.id  # no column cut off
        await pilot.press("enter")  # the closed batch: its disagreements
        await settle(pilot)
        assert isinstance(app.screen, ReviewScreen)
        text = str(app.screen.query_one("#review-text").render())
        assert "Response 1 of 3: scores differ by 0.50" in text and "carol-with-a-long-id: 0.5" in text
        calibration = app.screen.query_one("#calibration", DataTable)
        assert [calibration.get_row_at(i)[2] for i in range(calibration.row_count)] == ["+0.00", "+0.00"]


async def test_the_review_waits_for_the_batch_to_close(demo_store):
    app = ScoringApp(demo_store, "alice", ("default", "demo"), 1)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("r")
        await pilot.pause()
        assert not isinstance(app.screen, ReviewScreen)
        assert "once this batch is closed" in app.screen.query_one("#notice").text
