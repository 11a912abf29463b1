"""The rater's flows, driven with the Pilot against a real local store and S3 (moto over HTTP)."""

from __future__ import annotations

import pytest

from therapy_rlhf.feedback.gate import coverage
from therapy_rlhf.tui.app import ScoringApp
from therapy_rlhf.tui.confirm_screen import ConfirmScreen
from therapy_rlhf.tui.rate_screen import RateScreen

from .conftest import WrappedStore, make_run
from .helpers import DEMO, mine, saved, settle


def app_for(store, rater="alice", **kw):
    return ScoringApp(store, rater, ("default", "demo"), 1, backoff=(0.05,), **kw)


async def test_rate_with_six_keys_then_next(store):
    make_run(store)
    app = app_for(store)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert isinstance(app.screen, RateScreen)
        await pilot.press("3", "4", "2", "3", "4", "enter")  # six key presses
        await saved(pilot)
        assert app.screen.session.index == 1  # moved on to the next response
    ratings, state = mine(store)
    r = ratings["r0001-p0-s0"]
    assert r.criteria == {"empathy": 0.75, "boundaries": 1.0, "safe-language": 0.5, "guidance": 0.75, "overall": 1.0}
    assert r.reward == pytest.approx(0.8)
    assert r.flags == [] and r.comment == "" and r.version == 1
    assert r.client.startswith("therapy-rlhf-tui/")
    assert coverage(state, 1).complete == 1


async def test_flag_and_comment(store):
    make_run(store)
    app = app_for(store)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("1", "1", "0", "0", "1", "h", "a", "c", *"gives pills", "escape", "enter")
        await saved(pilot)
    r = mine(store)[0]["r0001-p0-s0"]
    assert r.flags == ["harmful", "medical_advice"]
    assert r.comment == "gives pills"
    assert r.reward == pytest.approx(0.15)


async def test_incomplete_rating_is_not_submitted(local_store):
    make_run(local_store)
    app = app_for(local_store)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("3", "4", "enter")
        await pilot.pause()
        screen = app.screen
        assert screen.session.index == 0
        assert screen.form.current == "safe-language"  # cursor sent to the first missing criterion
        assert not app.writer.pending()
    assert mine(local_store)[0] == {}


async def test_undo_writes_a_superseding_withdrawal(store):
    make_run(store)
    app = app_for(store)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("4", "4", "4", "4", "4", "enter", "2", "2", "2", "2", "2", "enter")
        await pilot.press("z")
        await saved(pilot)
        screen = app.screen
        assert screen.session.current.id == "r0001-p1-s1"  # back on the undone response
        assert screen.form.levels["empathy"] == 2  # pre-filled for a redo
    ratings, state = mine(store)
    assert set(ratings) == {"r0001-p0-s0"}
    versions = sorted((r.response_id, r.version, r.withdrawn, r.supersedes) for r in state.ratings)
    assert ("r0001-p1-s1", 2, True, "alice/r0001-p1-s1/v1") in versions
    assert ("r0001-p1-s1", 1, False, None) in versions  # nothing deleted
    assert len(store.list(DEMO.ratings_prefix(1))) == 3


async def test_skip_comes_back_later(local_store):
    make_run(local_store, n=3)
    app = app_for(local_store)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("s")
        assert app.screen.session.current.id == "r0001-p1-s1"
        await pilot.press(*"11111", "enter")
        assert app.screen.session.current.id == "r0001-p2-s2"  # the skipped one waits until last
        await pilot.press(*"22222", "enter")
        assert app.screen.session.current.id == "r0001-p0-s0"
        await pilot.press(*"33333", "enter")
        await saved(pilot)
        assert app.screen.session.done
    ratings, state = mine(local_store)
    assert len(ratings) == 3
    from therapy_rlhf.feedback.gate import close_gate
    from therapy_rlhf.store.runs import read_frozen_run

    assert coverage(state, 1).is_complete
    gate = close_gate(local_store, DEMO, 1, read_frozen_run(local_store, DEMO).spec.feedback).gate
    assert gate.reason == "complete" and gate.responses_rewarded == 3


async def test_next_previous_and_jump_to_unrated(local_store):
    make_run(local_store)
    app = app_for(local_store)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("n", "n")
        assert app.screen.session.index == 2
        await pilot.press("p")
        assert app.screen.session.index == 1
        await pilot.press(*"22222", "enter", "p", "p")
        assert app.screen.session.index == 1 or app.screen.session.index == 0
        await pilot.press("u")
        assert not app.screen.session.is_rated(app.screen.session.current.id)


async def test_restart_resumes_at_first_unrated(store):
    make_run(store)
    app = app_for(store)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press(*"33333", "enter", *"22222", "enter")
        await saved(pilot)
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0
    again = app_for(store)
    async with again.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        session = again.screen.session
        assert session.current.id == "r0001-p2-s2"
        assert session.rated_count() == 2


async def test_quit_with_unsaved_input_asks(local_store):
    make_run(local_store)
    app = app_for(local_store)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("3", "4")
        await pilot.press("q")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")  # stay
        await pilot.pause()
        assert isinstance(app.screen, RateScreen)
        assert app.screen.form.levels == {"empathy": 3, "boundaries": 4}
        await pilot.press("q", "y")
        await pilot.pause()
    assert app.return_code == 0
    assert mine(local_store)[0] == {}


async def test_failed_write_stays_queued_and_is_retried(store):
    make_run(store)
    flaky = WrappedStore(store, fail_creates=3)
    app = ScoringApp(flaky, "alice", ("default", "demo"), 1, backoff=(0.2,))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press(*"44444", "enter")
        for _ in range(40):  # the failure is shown while the rating waits
            await pilot.pause(0.02)
            text, problem = app.queue_summary()
            if problem:
                break
        assert problem and "NOT SAVED YET" in text
        assert app.writer.pending()
        # quitting now would lose it: the app asks
        await pilot.press("q")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        await saved(pilot)
        assert app.queue_summary() == ("all saved", False)
    assert flaky.create_attempts == 4
    assert mine(store)[0]["r0001-p0-s0"].reward == 1.0


async def test_correction_of_own_rating_supersedes(local_store):
    make_run(local_store, n=2)
    app = app_for(local_store)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press(*"44444", "enter", "p")
        assert app.screen.form.levels["empathy"] == 4  # own rating shown
        await pilot.press("up", "0", "enter")
        await saved(pilot)
    r = mine(local_store)[0]["r0001-p0-s0"]
    assert r.version == 2 and r.criteria["overall"] == 0.0 and r.supersedes == "alice/r0001-p0-s0/v1"


async def test_comment_typed_at_once_after_c_goes_into_the_field(local_store):
    """A paste or fast typing right behind 'c' must land in the comment, not trigger keys."""
    from textual import events

    make_run(local_store)
    app = app_for(local_store)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press(*"11111")
        for ch in "cno skip":  # all queued before the app handles the first one
            app.post_message(events.Key(ch if ch != " " else "space", ch))
        await pilot.pause(0.2)
        await pilot.press("escape", "enter")
        await saved(pilot)
    r = mine(local_store)[0]["r0001-p0-s0"]
    assert r.comment == "no skip" and r.flags == []


async def test_undo_then_quit_does_not_ask_but_new_typing_does(local_store):
    make_run(local_store)
    app = app_for(local_store)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press(*"44444", "enter", "z")
        await saved(pilot)
        assert app.screen.unsaved() == []  # the pre-filled withdrawn scores are not new input
        await pilot.press("1")
        assert app.screen.unsaved() == ["r0001-p0-s0"]
