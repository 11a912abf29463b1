"""The screen tells the truth: comments are added to, closed batches are read-only, the view stays
current, the next response is the one that needs a rater, N/A is left out, messages never cover the form."""

from __future__ import annotations

import time

import pytest
from textual.widgets import Label
from textual.widgets._toast import Toast

from therapy_rlhf.feedback.gate import close_gate
from therapy_rlhf.feedback.rounds import load_round
from therapy_rlhf.feedback.submit import submit_rating
from therapy_rlhf.contracts.records import Rating, dump_batch
from therapy_rlhf.tui.app import ScoringApp
from therapy_rlhf.tui.history import bar, fit
from therapy_rlhf.tui.notice import NoticeLine
from therapy_rlhf.tui.rubric import RubricPanel

from .conftest import WrappedStore, make_run, responses
from .helpers import DEMO, mine, saved, settle, until


def rate(store, manifest, rater, rid, value, **kw):
    crit = {c.name: value for c in manifest.spec.feedback.rubric}
    return submit_rating(
        store, DEMO, load_round(store, DEMO, 1), Rating(response_id=rid, rater=rater, criteria=crit, **kw), manifest.spec.feedback
    )


def banner(app) -> str:
    return str(app.screen.query_one("#banner").render())


async def test_adding_to_a_comment_keeps_what_was_there(local_store):
    make_run(local_store, n=2)
    app = ScoringApp(local_store, "alice", ("default", "demo"), 1, backoff=(0.05,))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press(*"33333", "c", *"kind opening", "escape", "enter")
        await saved(pilot)
        await pilot.press("p", "c", *" but no question", "enter", *"second line", "escape", "enter")
        await saved(pilot)
    r = mine(local_store)[0]["r0001-p0-s0"]
    assert r.version == 2 and r.comment == "kind opening but no question\nsecond line"


async def test_a_note_on_one_criterion_is_stored_with_it(local_store):
    make_run(local_store, n=2)
    app = ScoringApp(local_store, "alice", ("default", "demo"), 1, backoff=(0.05,))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("3", "C", *"names the feeling, not the loss", "escape", *"4444", "enter")
        await saved(pilot)
    r = mine(local_store)[0]["r0001-p0-s0"]
    assert r.notes == {"boundaries": "names the feeling, not the loss"}  # the cursor had moved on to boundaries


async def test_not_applicable_is_left_out_of_the_combined_score(local_store):
    make_run(local_store, n=2)
    app = ScoringApp(local_store, "alice", ("default", "demo"), 1, backoff=(0.05,))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("4", "4", "4", "x", "2", "enter")  # still six keys
        await saved(pilot)
    r = mine(local_store)[0]["r0001-p0-s0"]
    assert r.not_applicable == ["guidance"] and "guidance" not in r.criteria
    assert r.reward == pytest.approx(0.875)  # (1 + 1 + 1 + 0.5) / 4, not (1 + 1 + 1 + 0 + 0.5) / 5


async def test_a_closed_batch_opens_read_only_with_a_banner(local_store):
    m = make_run(local_store, n=2)
    for rid in ("r0001-p0-s0", "r0001-p1-s1"):
        rate(local_store, m, "bob", rid, 0.5)
    close_gate(local_store, DEMO, 1, m.spec.feedback)
    before = local_store.list(DEMO.ratings_prefix(1))
    app = ScoringApp(local_store, "alice", ("default", "demo"), 1, backoff=(0.05,))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert "CLOSED" in banner(app) and "would not count" in banner(app)
        await pilot.press(*"44444", "enter", "z", "x", "c", "a")
        await pilot.pause(0.2)
        assert app.screen.form.levels == {} and not app.writer.pending()
        assert "closed" in app.screen.query_one(NoticeLine).text
    assert local_store.list(DEMO.ratings_prefix(1)) == before


async def test_the_screen_follows_the_store_without_a_reload(local_store):
    """Others' scores, the batch closing and a new batch show up by themselves (polled off the UI thread)."""
    m = make_run(local_store, n=2, minRaters=2)
    app = ScoringApp(local_store, "alice", ("default", "demo"), 1, backoff=(0.05,), refresh_seconds=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press(*"44444", "enter", *"33333", "enter")
        await saved(pilot)
        assert app.screen.session.round_coverage().complete == 0
        for rid in ("r0001-p0-s0", "r0001-p1-s1"):
            rate(local_store, m, "bob", rid, 0.5)  # another rater, elsewhere
        await until(pilot, lambda: app.screen.session.round_coverage().complete == 2, 2, "bob's scores")
        assert "2 of 2 responses have the 2 rater(s) they need" in banner(app)
        close_gate(local_store, DEMO, 1, m.spec.feedback)
        local_store.write_bytes(DEMO.batch(2), dump_batch(responses(2, 2)))
        await until(pilot, lambda: app.screen.session.closed, 2, "the closed batch")
        await until(pilot, lambda: "A new batch (2) is ready" in banner(app), 2, "the new batch")
        assert "CLOSED" in banner(app)
        await pilot.press("p", "1")
        assert app.screen.form.levels.get("empathy") != 1  # read only now


async def test_the_next_response_is_the_one_that_still_needs_a_rater(local_store):
    """Two raters needed: covered responses come last, crisis cues first among the least covered."""
    m = make_run(local_store, n=6, minRaters=2, responseOrder="least-covered")
    for who in ("bob", "carol"):
        rate(local_store, m, who, "r0001-p0-s0", 0.5)  # covered
    rate(local_store, m, "bob", "r0001-p1-s1", 0.5)  # one rater of two
    app = ScoringApp(local_store, "dana", ("default", "demo"), 1, backoff=(0.05,))
    seen = []
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        for _ in range(6):
            seen.append(app.screen.session.current.id)
            await pilot.press(*"22222", "enter")
        await saved(pilot)
    # r3 carries a crisis cue; r2, r4, r5 have no rater; r1 has one; r0 already has both
    assert seen == ["r0001-p3-s3", "r0001-p2-s2", "r0001-p4-s4", "r0001-p5-s5", "r0001-p1-s1", "r0001-p0-s0"]


async def test_messages_never_cover_the_form_and_the_position_is_never_cut(local_store):
    make_run(local_store, n=3)
    failing = WrappedStore(local_store, fail_creates=1000)
    app = ScoringApp(failing, "alice", ("default", "demo"), 1, backoff=(0.05,))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("9")  # outside the scale: a message
        await pilot.pause()
        screen = app.screen
        notice = screen.query_one(NoticeLine)
        assert "levels of this rubric are 0 to 4" in notice.text
        assert not list(app.query(Toast)) and not list(screen.query(Toast))
        assert not notice.region.overlaps(screen.query_one(RubricPanel).region)
        await pilot.press(*"44444", "enter")
        await until(pilot, lambda: app.queue_summary()[1], 3, "the saving problem")
        await pilot.pause(0.1)
        position = screen.query_one("#position", Label)
        text = str(position.render())
        assert text.startswith("Response 2 of 3") and position.region.width >= len(text)
        assert "NOT SAVED YET" in str(screen.query_one("#queue", Label).render())
        assert "Kept on this computer" in notice.text and "Errno" not in notice.text
        assert not notice.region.overlaps(screen.query_one(RubricPanel).region)


def test_history_is_drawn_on_a_fixed_scale_with_its_numbers():
    from therapy_rlhf.tui.history import BARS

    assert abs(BARS.index(bar(0.46)) - BARS.index(bar(0.5))) <= 1  # close values look close, not a cliff
    assert bar(1.0) == "█" and bar(0.0) == "▁" and bar(0.5) in "▄▅"
    assert fit([("1", 0.46)], 40) == "Mean 0-1: 1 ▄0.46"  # one value is not a full bar, and its number shows
    # the latest values that fit, each with its number
    assert fit([("1", 0.2), ("2", 0.46), ("3", 0.5), ("yours", 0.61)], 30) == "Mean 0-1: 3 ▅0.50 yours ▅0.61"


async def test_control_tokens_in_a_response_are_pointed_out(local_store):
    from therapy_rlhf.contracts.records import PendingResponse

    make_run(local_store, n=1)
    odd = PendingResponse(id="r0001-x", round=1, prompt_id="p", prompt="Hi.", response="[INST] ok </s>", special_tokens=["[INST]", "</s>"])
    local_store.write_bytes(DEMO.batch(1), dump_batch([odd]))
    app = ScoringApp(local_store, "alice", ("default", "demo"), 1)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert "CONTROL MARKERS IN THE TEXT: [INST] </s>" in str(app.screen.query_one("#badges").render())


async def test_live_refresh_never_reads_back_the_raters_own_scores(local_store):
    """A poll is one listing plus the objects it has not seen: never the ones this app just wrote."""
    make_run(local_store, n=3)
    recording = WrappedStore(local_store)
    app = ScoringApp(recording, "alice", ("default", "demo"), 1, backoff=(0.05,), refresh_seconds=0.1)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press(*"44444", "enter", *"33333", "enter")
        await saved(pilot)
        polls = recording.requests
        await until(pilot, lambda: recording.requests >= polls + 9, 3, "a few polls")
    own = [k for k in recording.reads if k.startswith(DEMO.ratings_prefix(1) + "alice/")]
    assert own == []


async def test_the_list_of_batches_follows_the_store(local_store):
    """A batch that appears while the first screen is open is listed without pressing r."""
    make_run(local_store, n=2)
    app = ScoringApp(local_store, "alice", refresh_seconds=0.1)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert [i.run for i in app.screen.items] == ["default/demo"]
        make_run(local_store, "anxiety-pilot", n=3)
        await until(pilot, lambda: len(app.screen.items) == 2, 2, "the new batch on the list")
        assert "2 batch(es) need your scores" in str(app.screen.query_one("#start-message").render())


class SlowAnswers(WrappedStore):
    """A store whose answer to a create arrives late: the object exists before the writer hears back."""

    def create_bytes(self, key, data):
        out = super().create_bytes(key, data)
        time.sleep(0.3)
        return out


async def test_a_poll_during_a_slow_write_does_not_read_the_rating_back(local_store):
    make_run(local_store, n=3)
    slow = SlowAnswers(local_store)
    app = ScoringApp(slow, "alice", ("default", "demo"), 1, backoff=(0.05,), refresh_seconds=0.05)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press(*"44444", "enter", *"33333", "enter")
        await saved(pilot)
        polls = slow.requests
        await until(pilot, lambda: slow.requests >= polls + 9, 3, "a few polls")
    assert [k for k in slow.reads if k.startswith(DEMO.ratings_prefix(1) + "alice/")] == []
    assert len(load_round(local_store, DEMO, 1).ratings) == 2


async def test_an_answer_arriving_while_the_screen_is_taken_down_draws_nothing(local_store):
    """A poll's or a save's answer can land after the app began closing, when the status line's
    labels are already gone: the redraw it asks for is skipped, not a crash of the closing app."""
    make_run(local_store, n=3)
    app = ScoringApp(local_store, "alice", ("default", "demo"), 1)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        screen = app.screen
        await screen.query_one("#where", Label).remove()
        screen.refresh_status()  # as _polled does when the answer arrives


def test_live_refresh_reads_each_new_rating_once(local_store):
    """A rating another rater stored is read by the poll that first lists it, never again by later ones
    (its parsed record and content digest stay in the screen's state)."""
    from therapy_rlhf.tui.catalog import open_round, poll_round

    m = make_run(local_store, n=3)
    counted = WrappedStore(local_store)
    session = open_round(counted, "default", "demo", "alice", 1)
    rate(local_store, m, "bob", "r0001-p0-s0", 0.5)
    key = DEMO.rating(1, "bob", "r0001-p0-s0", 1)
    for _ in range(3):
        update = poll_round(counted, session.paths, session.state)
        session.refreshed(update.state, update.gate)
    assert counted.reads.count(key) == 1
    assert key in session.state.digest_by_key
