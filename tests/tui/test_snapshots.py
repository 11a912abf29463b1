"""Snapshots of the main screens at 80x24 and 120x40 (pytest-textual-snapshot).

Regenerate after an intended change with
``pytest tests/tui/test_snapshots.py --snapshot-update`` and look at the SVGs.
"""

from __future__ import annotations

import os

import pytest

from therapy_rlhf.ratings import load_round, submit_rating
from therapy_rlhf.records import Rating
from therapy_rlhf.tui.app import ScoringApp

from .conftest import WrappedStore, make_run
from .helpers import DEMO, settle

BATCH_TIME = 1_764_000_000
SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((120, 40), id="120x40")]


@pytest.fixture
def snap_store(local_store):
    m = make_run(local_store, extra_lines='{"id": "cut-off", "prom\n')
    make_run(local_store, "anxiety-pilot", n=3)
    # bob has rated two responses already (with fixed timings, so the summary is stable)
    state = load_round(local_store, DEMO, 1)
    for rid, reward in (("r0001-p0-s0", 0.75), ("r0001-p1-s1", 0.5)):
        crit = {c.name: reward for c in m.spec.feedback.rubric}
        submit_rating(
            local_store, DEMO, state,
            Rating(response_id=rid, rater="bob", criteria=crit, reward=reward, seconds_spent=42.0, created_at="2026-11-25T12:30:00Z"),
            m.spec.feedback,
        )
    # fixed batch times and a fixed clock: "waiting 2 h 05 min" on every run
    for run in ("demo", "anxiety-pilot"):
        os.utime(local_store.root / "default" / run / "rounds/0001/batch.jsonl", (BATCH_TIME, BATCH_TIME))
    wrapped = WrappedStore(local_store, uri="s3://clinic-ratings/therapy-rlhf")
    return wrapped, (lambda: BATCH_TIME + 2 * 3600 + 300)


def make_app(snap_store, run=None):
    store, clock = snap_store
    return ScoringApp(store, "alice", run, 1 if run else None, clock=clock)


@pytest.mark.parametrize("size", SIZES)
def test_start_screen(snap_compare, snap_store, size):
    async def before(pilot):
        await settle(pilot)

    assert snap_compare(make_app(snap_store), terminal_size=size, run_before=before)


@pytest.mark.parametrize("size", SIZES)
def test_rating_screen_mid_rating(snap_compare, snap_store, size):
    async def before(pilot):
        await settle(pilot)
        await pilot.press(*"44444", "enter", *"44444", "enter", *"44444", "enter")  # to the crisis response
        await pilot.press("1", "2", "0", "m", "a", "c", *"Suggests pills; no crisis line.")
        await pilot.pause()

    assert snap_compare(make_app(snap_store, ("default", "demo")), terminal_size=size, run_before=before)


@pytest.mark.parametrize("size", SIZES)
def test_help_screen(snap_compare, snap_store, size):
    async def before(pilot):
        await settle(pilot)
        await pilot.press("H")
        await pilot.pause()

    assert snap_compare(make_app(snap_store, ("default", "demo")), terminal_size=size, run_before=before)


@pytest.mark.parametrize("size", SIZES)
def test_guidelines_panel(snap_compare, snap_store, size):
    async def before(pilot):
        await settle(pilot)
        await pilot.press("question_mark")
        await pilot.pause(0.3)

    assert snap_compare(make_app(snap_store, ("default", "demo")), terminal_size=size, run_before=before)


@pytest.mark.parametrize("size", SIZES)
def test_summary_screen(snap_compare, snap_store, size):
    async def before(pilot):
        await settle(pilot)
        await pilot.press("t")
        await settle(pilot)

    assert snap_compare(make_app(snap_store, ("default", "demo")), terminal_size=size, run_before=before)


def test_rating_screen_light_theme(snap_compare, snap_store):
    async def before(pilot):
        await settle(pilot)
        await pilot.press("ctrl+t", "2", "3", "h")
        await pilot.pause()

    assert snap_compare(make_app(snap_store, ("default", "demo")), terminal_size=(80, 24), run_before=before)
