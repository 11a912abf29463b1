"""The key rules of the rating form and the writer's retry queue, without the UI."""

from __future__ import annotations

import pytest

from therapy_rlhf.feedback.rewards import RatingError
from therapy_rlhf.feedback.rounds import load_round
from therapy_rlhf.contracts.spec import FeedbackSpec
from therapy_rlhf.tui.catalog import open_round
from therapy_rlhf.tui.form import REWARD_ROW, RatingForm
from therapy_rlhf.tui.writer import RatingWriter

from .conftest import WrappedStore, make_run
from .helpers import DEMO


def test_digits_score_and_advance():
    form = RatingForm(FeedbackSpec())
    assert form.current == "empathy"
    for d in (4, 3, 2, 1, 0):
        form.score(d)
    assert form.missing() == []
    assert form.base_reward() == pytest.approx(0.5)
    form.toggle_flag("harmful")
    assert form.effective() == (0.0, True)


def test_direct_rule_rates_the_reward_first():
    form = RatingForm(FeedbackSpec(reward_rule="direct", scale_levels=3))
    assert form.current == REWARD_ROW
    form.score(1)
    assert form.base_reward() == 0.5
    rating = form.to_rating("r1", "alice", 3.0, "t")
    assert rating.reward == 0.5 and rating.criteria == {}
    with pytest.raises(RatingError):
        form.score(3)  # outside a 3-level scale


def test_not_applicable_rows_and_a_form_with_nothing_applicable():
    form = RatingForm(FeedbackSpec())
    form.score(4)
    form.mark_not_applicable()  # boundaries
    assert form.current == "safe-language" and form.missing() == ["safe-language", "guidance", "overall"]
    form.score(2)  # scoring a row clears its mark
    form.select("boundaries")
    form.mark_not_applicable()
    assert "boundaries" not in form.not_applicable and form.current == "boundaries"
    empty = RatingForm(FeedbackSpec())
    for _ in empty.rows:
        empty.mark_not_applicable()
    assert empty.missing() == [] and empty.base_reward() is None
    with pytest.raises(RatingError, match="score at least one"):
        empty.to_rating("r1", "alice", 0, "t")
    from therapy_rlhf.tui.rubric import RubricPanel

    assert "score at least one" in RubricPanel._combined_line(empty)


def test_minimum_rule_and_incomplete_form():
    form = RatingForm(FeedbackSpec(reward_rule="minimum"))
    form.score(4)
    with pytest.raises(RatingError, match="score Boundaries"):
        form.to_rating("r1", "alice", 0, "t")
    for d in (3, 1, 4, 4):
        form.score(d)
    assert form.base_reward() == 0.25


def test_writer_keeps_a_failed_rating_queued_until_it_is_stored(local_store):
    make_run(local_store, n=2)
    flaky = WrappedStore(local_store, fail_creates=2)
    session = open_round(flaky, "default", "demo", "alice")
    events = []
    writer = RatingWriter(events.append, backoff=(0.01,))
    form = RatingForm(session.feedback)
    for d in (4, 4, 4, 4, 4):
        form.score(d)
    job = writer.submit(session, form.to_rating("r0001-p0-s0", "alice", 1.0, "t"))
    writer._write(job)
    assert [e.kind for e in events] == ["failed"] and writer.pending() == [job]
    assert "simulated outage" in job.error
    assert writer.drain(timeout=5)
    assert [e.kind for e in events] == ["failed", "failed", "saved"]
    assert len(load_round(local_store, DEMO, 1).ratings) == 1


def test_writer_reports_a_rejected_rating(local_store):
    make_run(local_store, n=1)
    session = open_round(local_store, "default", "demo", "alice")
    events = []
    writer = RatingWriter(events.append)
    from therapy_rlhf.contracts.records import Rating

    writer.submit(session, Rating(response_id="r0001-p0-s0", rater="alice", criteria={"nope": 1.0}, reward=1.0))
    assert writer.drain(timeout=5)
    assert events[0].kind == "rejected" and "unknown rubric criteria" in events[0].job.error


def test_the_writer_signs_with_the_raters_key_where_the_run_takes_only_signed_ratings(local_store):
    from therapy_rlhf.feedback.rater_keys import key_path, signer_for
    from therapy_rlhf.tui.catalog import WorkError

    key = signer_for("tui-signer", create=True).public_key  # type: ignore[union-attr]
    elsewhere = signer_for("tui-elsewhere", create=True).public_key  # type: ignore[union-attr]
    key_path("tui-elsewhere").unlink()  # registered, but the key is on another machine
    make_run(local_store, n=1, raters=[{"id": "tui-signer", "publicKey": key}, {"id": "tui-elsewhere", "publicKey": elsewhere}])
    with pytest.raises(WorkError, match="accepts only signed ratings"):  # said before any scoring
        open_round(local_store, "default", "demo", "tui-elsewhere")
    session = open_round(local_store, "default", "demo", "tui-signer")
    events = []
    writer = RatingWriter(events.append)
    form = RatingForm(session.feedback)
    for d in (4, 4, 4, 4, 4):
        form.score(d)
    writer.submit(session, form.to_rating("r0001-p0-s0", "tui-signer", 1.0, "t"))
    assert writer.drain(timeout=5) and [e.kind for e in events] == ["saved"]
    state = load_round(local_store, DEMO, 1)
    assert len(state.ratings) == 1 and state.ratings[0].signature and state.refused == []
