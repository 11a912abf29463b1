"""Snapshots of every screen at 80x24 (the SSH default) and 120x40 (pytest-textual-snapshot).

Regenerate after an intended change with
``pytest tests/tui/test_snapshots.py --snapshot-update`` and look at the SVGs.
"""

from __future__ import annotations

import os

import pytest

from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.feedback.gate import build_gate
from therapy_rlhf.feedback.rounds import load_round
from therapy_rlhf.feedback.submit import submit_rating
from therapy_rlhf.contracts.records import Rating
from therapy_rlhf.tui.app import ScoringApp

from .conftest import WrappedStore, make_run
from .helpers import DEMO, settle, until

BATCH_TIME = 1_764_000_000
SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((120, 40), id="120x40")]
CLOSED = RunPaths("default", "closed-pilot")


def _rate(store, paths, manifest, rater, rid, value, **kw):
    crit = {c.name: value for c in manifest.spec.feedback.rubric}
    submit_rating(
        store, paths, load_round(store, paths, 1),
        Rating(response_id=rid, rater=rater, criteria=crit, seconds_spent=42.0, created_at="2026-11-25T12:30:00Z", **kw),
        manifest.spec.feedback,
    )


@pytest.fixture
def snap_store(local_store):
    m = make_run(local_store, extra_lines='{"id": "cut-off", "prom\n', minRaters=2, responseOrder="least-covered")
    make_run(local_store, "anxiety-pilot", n=3)
    # bob has scored two responses already (with fixed timings, so the summary is stable)
    for rid, value in (("r0001-p0-s0", 0.75), ("r0001-p1-s1", 0.5)):
        _rate(local_store, DEMO, m, "bob", rid, value)
    # a batch that closed: two raters who disagree
    c = make_run(local_store, "closed-pilot", n=3)
    for i, rid in enumerate(("r0001-p0-s0", "r0001-p1-s1", "r0001-p2-s2")):
        _rate(local_store, CLOSED, c, "bob", rid, 0.25 * (i + 1), comment=f"Bob on response {i + 1}.")
        _rate(local_store, CLOSED, c, "carol", rid, 0.25 * (3 - i), comment=f"Carol on response {i + 1}.")
    gate = build_gate(load_round(local_store, CLOSED, 1), c.spec.feedback, "complete", "test")
    local_store.create_json(CLOSED.gate(1), gate.model_copy(update={"closed_at": "2026-11-25T14:00:00Z"}).model_dump(mode="json"))
    # fixed batch times and a fixed clock: "waiting 2 h 05 min" on every run
    for run in ("demo", "anxiety-pilot", "closed-pilot"):
        os.utime(local_store.root / "default" / run / "rounds/0001/batch.jsonl", (BATCH_TIME, BATCH_TIME))
    wrapped = WrappedStore(local_store, uri="s3://clinic-ratings/therapy-rlhf")
    return wrapped, (lambda: BATCH_TIME + 2 * 3600 + 300)


def guidelines_drawn(app) -> bool:
    from therapy_rlhf.tui.guidelines_screen import GuidelinesScreen
    from therapy_rlhf.tui.scroll_hint import HintedScroll

    return isinstance(app.screen, GuidelinesScreen) and bool(app.screen.query_one(HintedScroll).border_subtitle)


def make_app(snap_store, run=None, **kw):
    store, clock = snap_store
    return ScoringApp(store, "alice", run, 1 if run else None, clock=clock, refresh_seconds=0, **kw)


DEMO_RUN = ("default", "demo")
CLOSED_RUN = ("default", "closed-pilot")


@pytest.mark.parametrize("size", SIZES)
def test_start_screen(snap_compare, snap_store, size):
    async def before(pilot):
        await settle(pilot)

    assert snap_compare(make_app(snap_store), terminal_size=size, run_before=before)


@pytest.mark.parametrize("size", SIZES)
def test_rating_screen_mid_rating(snap_compare, snap_store, size):
    async def before(pilot):
        await settle(pilot)
        # the crisis response comes first (no rater yet, crisis cue); then three more
        await pilot.press("1", "2", "0", "x", "m", "a", "c", *"Suggests pills;", "enter", *"no crisis line.", "escape")
        await pilot.pause()

    assert snap_compare(make_app(snap_store, DEMO_RUN), terminal_size=size, run_before=before)


@pytest.mark.parametrize("size", SIZES)
def test_rating_screen_writing_a_comment(snap_compare, snap_store, size):
    async def before(pilot):
        await settle(pilot)
        await pilot.press("3", "3", "c", *"Warm, but", "enter", *"no question back.")
        await pilot.pause()

    assert snap_compare(make_app(snap_store, DEMO_RUN), terminal_size=size, run_before=before)


@pytest.mark.parametrize("size", SIZES)
def test_rating_screen_store_not_answering(snap_compare, snap_store, size):
    store, clock = snap_store
    store.fail_creates = 1000

    async def before(pilot):
        await settle(pilot)
        await pilot.press(*"44444", "enter", "9")
        await until(pilot, lambda: pilot.app.queue_summary()[1], 1, "the saving problem")
        await pilot.pause()

    app = ScoringApp(store, "alice", DEMO_RUN, 1, clock=clock, refresh_seconds=0, backoff=(30.0,))
    assert snap_compare(app, terminal_size=size, run_before=before)


@pytest.mark.parametrize("size", SIZES)
def test_closed_batch_read_only(snap_compare, snap_store, size):
    async def before(pilot):
        await settle(pilot)
        await pilot.press("3")
        await pilot.pause()

    assert snap_compare(make_app(snap_store, CLOSED_RUN), terminal_size=size, run_before=before)


@pytest.mark.parametrize("size", SIZES)
def test_disagreement_review(snap_compare, snap_store, size):
    async def before(pilot):
        await settle(pilot)
        await pilot.press("r")
        await settle(pilot)

    assert snap_compare(make_app(snap_store, CLOSED_RUN), terminal_size=size, run_before=before)


@pytest.mark.parametrize("size", SIZES)
def test_help_screen(snap_compare, snap_store, size):
    async def before(pilot):
        await settle(pilot)
        await pilot.press("H")
        await pilot.pause()

    assert snap_compare(make_app(snap_store, DEMO_RUN), terminal_size=size, run_before=before)


@pytest.mark.parametrize("size", SIZES)
def test_guidelines_panel(snap_compare, snap_store, size):
    async def before(pilot):
        await settle(pilot)
        await pilot.press("question_mark")
        await until(pilot, lambda: guidelines_drawn(pilot.app), 1, "the guidelines")
        await pilot.pause()

    assert snap_compare(make_app(snap_store, DEMO_RUN), terminal_size=size, run_before=before)


@pytest.mark.parametrize("size", SIZES)
def test_summary_screen(snap_compare, snap_store, size):
    async def before(pilot):
        await settle(pilot)
        await pilot.press("t")
        await settle(pilot)

    assert snap_compare(make_app(snap_store, DEMO_RUN), terminal_size=size, run_before=before)


@pytest.mark.parametrize("size", SIZES)
def test_quit_with_a_draft(snap_compare, snap_store, size):
    async def before(pilot):
        await settle(pilot)
        await pilot.press("2", "q")
        await pilot.pause()

    assert snap_compare(make_app(snap_store, DEMO_RUN), terminal_size=size, run_before=before)


def test_terminal_too_small(snap_compare, snap_store):
    async def before(pilot):
        await settle(pilot)

    assert snap_compare(make_app(snap_store, DEMO_RUN), terminal_size=(60, 20), run_before=before)


def test_rating_screen_light_theme(snap_compare, snap_store):
    async def before(pilot):
        await settle(pilot)
        await pilot.press("ctrl+t", "2", "3", "h")
        await pilot.pause()

    assert snap_compare(make_app(snap_store, DEMO_RUN), terminal_size=(80, 24), run_before=before)


def test_batch_closed_while_open_with_the_next_ready(snap_compare, local_store):
    """80x24: everything was submitted, the batch closed and batch 2 is waiting: the instruction is in view,
    no draft is claimed, and the header shows batch 1's mean."""
    from therapy_rlhf.feedback.gate import close_gate
    from therapy_rlhf.contracts.records import dump_batch

    from .conftest import responses

    m = make_run(local_store, n=2)
    app = ScoringApp(local_store, "alice", DEMO_RUN, 1, refresh_seconds=0)

    async def before(pilot):
        await settle(pilot)
        await pilot.press(*"44444", "enter", *"33333", "enter")
        await until(pilot, lambda: not app.writer.pending(), 2, "the scores to be stored")
        gate = close_gate(local_store, DEMO, 1, m.spec.feedback).gate
        local_store.write_bytes(DEMO.batch(2), dump_batch(responses(2, 2)))
        # a fixed closing time on screen
        doc = local_store.read_json(DEMO.gate(1))
        local_store.write_json(DEMO.gate(1), {**doc, "closed_at": "2026-11-25T14:00:00Z"})
        assert gate.round == 1
        await pilot.press("ctrl+r")
        await until(pilot, lambda: app.screen.next_batch, 2, "the next batch")
        await pilot.pause()

    assert snap_compare(app, terminal_size=(80, 24), run_before=before)
