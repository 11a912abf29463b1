"""At 80x24, a batch that closes while it is open: the banner keeps the next batch's instruction in view,
speaks of drafts only when there are some, the header's history gains the closed batch, and a message
about one response does not stay on the next one."""

from __future__ import annotations

import textwrap

from therapy_rlhf.feedback.gate import close_gate
from therapy_rlhf.feedback.rounds import load_round
from therapy_rlhf.feedback.submit import submit_rating
from therapy_rlhf.contracts.records import Rating, dump_batch
from therapy_rlhf.tui.app import ScoringApp
from therapy_rlhf.tui.history import ScoreHistory
from therapy_rlhf.tui.notice import NoticeLine

from .conftest import make_run, responses
from .helpers import DEMO, saved, settle, until

READY = "A new batch (2) is ready: Esc, then Enter."


def rate(store, manifest, rater, rid, value):
    crit = {c.name: value for c in manifest.spec.feedback.rubric}
    submit_rating(store, DEMO, load_round(store, DEMO, 1), Rating(response_id=rid, rater=rater, criteria=crit), manifest.spec.feedback)


def banner_text(app) -> str:
    return str(app.screen.query_one("#banner").render())


def fits(app) -> bool:
    """Every line of the banner's text, wrapped at its width, is inside the banner's rows."""
    banner = app.screen.query_one("#banner")
    width, height = banner.content_region.width, banner.content_region.height
    return width > 0 and len(textwrap.wrap(banner_text(app), width)) <= height


async def close_with_next_batch(pilot, store, manifest) -> None:
    close_gate(store, DEMO, 1, manifest.spec.feedback)
    store.write_bytes(DEMO.batch(2), dump_batch(responses(2, 2)))
    await until(pilot, lambda: READY in banner_text(pilot.app), 2, "the new batch")


async def test_everything_submitted_the_banner_fits_and_claims_no_draft(local_store):
    m = make_run(local_store, n=2)
    app = ScoringApp(local_store, "alice", ("default", "demo"), 1, backoff=(0.05,), refresh_seconds=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert "no closed batch yet" in str(app.screen.query_one(ScoreHistory).render())
        await pilot.press(*"44444", "enter", *"33333", "enter")
        await saved(pilot)
        await close_with_next_batch(pilot, local_store, m)
        text = banner_text(app)
        assert text.startswith(READY) and "CLOSED" in text
        assert "draft" not in text  # nothing typed was left unsubmitted
        assert fits(app), text
        # the header's history now has batch 1's mean instead of "no closed batch yet"
        await until(pilot, lambda: "#1" in str(app.screen.query_one(ScoreHistory).render()), 2, "the history")
        assert "no closed batch yet" not in str(app.screen.query_one(ScoreHistory).render())


async def test_typed_work_left_unsubmitted_is_said_to_be_kept(local_store):
    m = make_run(local_store, n=2)
    app = ScoringApp(local_store, "alice", ("default", "demo"), 1, backoff=(0.05,), refresh_seconds=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press(*"44444", "enter", "3", "3")  # the second response: typed, not submitted
        await saved(pilot)
        rate(local_store, m, "bob", "r0001-p1-s1", 0.5)  # someone else's score lets the batch close
        await close_with_next_batch(pilot, local_store, m)
        text = banner_text(app)
        assert text.startswith(READY) and "What you typed for 1 response(s) is kept as a draft." in text
        assert fits(app), text


async def test_the_undo_message_does_not_stay_on_the_next_response(local_store):
    make_run(local_store, n=3)
    app = ScoringApp(local_store, "alice", ("default", "demo"), 1, backoff=(0.05,))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press(*"44444", "enter")
        await saved(pilot)
        await pilot.press("z")  # undo
        await pilot.pause()
        notice = app.screen.query_one(NoticeLine)
        assert "Took back your score of response 1" in notice.text
        await pilot.press(*"33333", "enter")  # scored again; on to response 2
        await pilot.pause()
        assert app.screen.session.current.id == "r0001-p1-s1"
        assert "Took back" not in notice.text
