"""Nothing typed is lost: the local journal, SIGHUP/SIGTERM with the store unreachable, replay exactly once.

The session-end tests run the real ``therapy-rlhf score`` in a pseudo-terminal
against S3 (moto over HTTP) reached through a TCP proxy that the test cuts:
the store stops answering, the rater submits a score, the session ends, and a
later start stores that score exactly once.
"""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import struct
import sys
import threading
import time
from pathlib import Path

import pytest
from tests.support.budget import budget
from tests.support.tcp_proxy import TcpProxy

from therapy_rlhf.feedback.rounds import load_round
from therapy_rlhf.feedback.submit import submit_rating
from therapy_rlhf.contracts.spec import FeedbackSpec
from therapy_rlhf.store.backends import S3Store
from therapy_rlhf.tui.app import ScoringApp
from therapy_rlhf.tui.form import RatingForm
from therapy_rlhf.tui.journal import Journal, journal_path

from .conftest import make_run
from .helpers import DEMO, mine, saved, settle

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>]")


def wait_for(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + budget(seconds)
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def rating_objects(store) -> list[str]:
    return store.list(DEMO.ratings_prefix(1))


# ------------------------------------------------------------------ journal


def test_journal_keeps_entries_across_processes_and_skips_a_torn_line(local_store, rater_data_dir):
    make_run(local_store, n=2)
    journal = Journal.open(local_store.uri, "alice")
    form = RatingForm(FeedbackSpec())
    for d in (4, 4, 4, 4, 4):
        form.score(d)
    rating = form.to_rating("r0001-p0-s0", "alice", 1.0, "test")
    journal.queued("default/demo", 1, rating)
    journal.draft("default/demo", 1, "r0001-p1-s1", {"levels": {"empathy": 2}})
    with open(journal.path, "ab") as fh:
        fh.write(b'{"kind": "stored", "submission_id": "trunc')  # a kill in the middle of a write
    again = Journal.open(local_store.uri, "alice").read()
    assert [q.rating.submission_id for q in again.outstanding] == [rating.submission_id]
    assert again.drafts == {("default/demo", 1, "r0001-p1-s1"): {"levels": {"empathy": 2}}}
    assert again.skipped_lines == 1
    assert journal.path == journal_path(local_store.uri, "alice", rater_data_dir)
    # stored -> no longer outstanding; a new queued entry supersedes the response's draft
    journal.stored(rating.submission_id)
    journal.queued("default/demo", 1, rating.model_copy(update={"response_id": "r0001-p1-s1", "submission_id": "b" * 32}))
    state = journal.read()
    assert [q.rating.response_id for q in state.outstanding] == ["r0001-p1-s1"] and state.drafts == {}
    # one owner at a time; compaction keeps exactly what is still needed
    other = Journal.open(local_store.uri, "alice")
    assert journal.claim() and not other.claim()
    journal.compact()
    lines = journal.path.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["kind"] == "queued"
    journal.release()
    assert other.claim()
    other.release()


async def test_replay_stores_each_rating_once_even_when_the_first_write_landed(local_store, rater_data_dir):
    """Two ratings left in the journal: one never reached the store, one did but its answer was lost."""
    m = make_run(local_store, n=3)
    fb = m.spec.feedback
    journal = Journal.open(local_store.uri, "alice")
    ratings = []
    for rid, level in (("r0001-p0-s0", 4), ("r0001-p1-s1", 2)):
        form = RatingForm(fb)
        for _ in fb.rubric:
            form.score(level)
        ratings.append(form.to_rating(rid, "alice", 2.0, "test"))
        journal.queued("default/demo", 1, ratings[-1])
    # the second one was written, but the process died before the journal heard back
    submit_rating(local_store, DEMO, load_round(local_store, DEMO, 1), ratings[1], fb)
    for _ in range(2):  # a second start finds nothing left to do
        app = ScoringApp(local_store, "alice", ("default", "demo"), 1, backoff=(0.05,))
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            deadline = time.monotonic() + budget(2)
            while (app.writer.pending() or Journal.open(local_store.uri, "alice").read().outstanding) and time.monotonic() < deadline:
                await pilot.pause(0.05)
            await saved(pilot)
    stored = load_round(local_store, DEMO, 1).ratings
    assert sorted((r.response_id, r.version) for r in stored) == [("r0001-p0-s0", 1), ("r0001-p1-s1", 1)]
    assert {r.submission_id for r in stored} == {r.submission_id for r in ratings}
    assert Journal.open(local_store.uri, "alice").read().outstanding == []


async def test_half_typed_scores_come_back_as_a_draft(local_store):
    make_run(local_store, n=3)
    app = ScoringApp(local_store, "alice", ("default", "demo"), 1)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("3", "1", "x", "h", "c", *"half done")
        await pilot.press("escape", "q")
        await pilot.pause()
        await pilot.press("y")  # "kept as drafts ... Quit now?"
        await pilot.pause()
    assert mine(local_store)[0] == {}  # nothing was submitted
    again = ScoringApp(local_store, "alice", ("default", "demo"), 1)
    async with again.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        screen = again.screen
        assert screen.session.current.id == "r0001-p0-s0"
        form = screen.form
        assert form.levels == {"empathy": 3, "boundaries": 1} and form.not_applicable == {"safe-language"}
        assert form.flags == {"harmful"} and form.comment == "half done"
        assert "came back from last time" in screen.query_one("#notice").text


# ------------------------------------------------------------ session end


class ScoreInTerminal:
    """``therapy-rlhf score`` in a real pseudo-terminal (80x24), its output collected."""

    def __init__(self, env: dict[str, str], *args: str):
        pid, fd = pty.fork()
        if pid == 0:  # child: the app, with the pty as its controlling terminal
            os.execvpe(sys.executable, [sys.executable, "-m", "therapy_rlhf.cli", "score", *args], env)
        import fcntl
        import termios

        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        self.pid, self.fd = pid, fd
        self.output = bytearray()
        self.status: int | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                return
            if not data:
                return
            self.output += data

    def text(self) -> str:
        return ANSI.sub(b"", bytes(self.output)).decode("utf-8", "replace")

    def type(self, keys: str) -> None:
        for ch in keys:
            os.write(self.fd, ch.encode())
            time.sleep(0.05)

    def wait(self, seconds: float) -> int:
        deadline = time.monotonic() + budget(seconds)
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = status
                return status
            time.sleep(0.05)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        raise AssertionError("the app did not exit")


def _queued_in_journal(data_dir: Path) -> bool:
    files = list((data_dir / "journal").glob("*.jsonl"))
    return bool(files) and '"kind": "queued"' in files[0].read_text()


@pytest.mark.parametrize("how", ["ssh-drop", "sigterm"])
async def test_session_end_with_the_store_unreachable_then_restart_stores_once(
    how, s3_store, s3_endpoint, rater_data_dir
):
    make_run(s3_store, n=3)
    host, port = s3_endpoint.removeprefix("http://").split(":")
    proxy = TcpProxy((host, int(port)))
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": proxy.url,
        "THERAPY_RLHF_DATA_DIR": str(rater_data_dir),
        "TERM": "xterm-256color",
    }
    env.pop("TEXTUAL", None)
    app = ScoreInTerminal(env, "--store", s3_store.uri, "--rater", "alice", "--run", "demo", "--round", "1", "--refresh", "0")
    try:
        wait_for(lambda: "Response 1 of 3" in app.text(), 10, "the rating screen")
        proxy.cut()  # the store stops answering
        app.type("44444\r")  # a complete rating, submitted
        wait_for(lambda: _queued_in_journal(rater_data_dir), 5, "the rating in the journal")
        app.type("12")  # half-typed scores on the next response
        wait_for(lambda: "NOT SAVED YET" in app.text(), 20, "the saving problem on screen")
        time.sleep(budget(0.2))
        if how == "ssh-drop":
            os.close(app.fd)  # the terminal goes away: the kernel sends SIGHUP
        else:
            os.kill(app.pid, signal.SIGTERM)
        status = app.wait(20)
    finally:
        if app.status is None:
            os.kill(app.pid, signal.SIGKILL)
            os.waitpid(app.pid, 0)
    # a clean exit through the app (not killed by the signal), with the code of the signal
    expected = 128 + (signal.SIGHUP if how == "ssh-drop" else signal.SIGTERM)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == expected, status
    if how == "sigterm":
        assert b"\x1b[?1049l" in app.output  # the terminal was given back (alternate screen left)
    assert rating_objects(s3_store) == []  # nothing reached the store

    # the store answers again: the next start stores the rating, once; the draft comes back
    for _ in range(2):
        again = ScoringApp(S3Store(s3_store.bucket, "therapy-rlhf", endpoint_url=s3_endpoint), "alice", ("default", "demo"), 1, backoff=(0.05,))
        async with again.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            deadline = time.monotonic() + budget(3)
            while not rating_objects(s3_store) and time.monotonic() < deadline:
                await pilot.pause(0.05)
            await saved(pilot)
            draft = again.screen.drafts.forms.get("r0001-p1-s1")
            assert draft is not None and draft.levels == {"empathy": 1, "boundaries": 2}
    stored = load_round(s3_store, DEMO, 1).ratings
    assert [(r.response_id, r.version, r.reward) for r in stored] == [("r0001-p0-s0", 1, 1.0)]
