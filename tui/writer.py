"""The rating writer: one background thread that stores ratings in order.

A submitted rating is first written to the rater's local journal (fsynced:
it survives a dropped session or a kill), then goes into a queue and the UI
moves on at once. The writer stores each with
``therapy_rlhf.feedback.submit.submit_rating`` (a new object per rating, conditional
create), one at a time so an undo is always written after the rating it
withdraws. A store failure keeps the rating at the head of the queue and
retries with backoff for as long as the app runs; before a retry the round is
re-read and a rating already stored under its ``submission_id`` (the write
landed but its answer was lost) is taken as saved, never written twice. Only
a rating the rules reject (``RatingError``) leaves the queue, and it is
reported, never hidden. Every outcome is journaled, so what is left at exit
is replayed on the next start. Each attempt holds the target's ``store_lock``
(a live-refresh poll takes it too), so a poll never lists a rating between its
write and the writer noting it in the round's state.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.feedback.rater_keys import signer_for
from therapy_rlhf.feedback.rewards import RatingError
from therapy_rlhf.feedback.rounds import RoundState, load_round
from therapy_rlhf.feedback.submit import submit_rating
from therapy_rlhf.contracts.records import Rating
from therapy_rlhf.contracts.spec import FeedbackSpec
from therapy_rlhf.store.backends import Store

if TYPE_CHECKING:
    from therapy_rlhf.tui.journal import Journal

# Seconds between retries of a failed write; the last value repeats.
RETRY_BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0)


class WriteTarget(Protocol):
    """Where a rating goes: a RoundSession, or a round opened to replay the journal."""

    store: Store
    paths: RunPaths
    state: RoundState

    @property
    def feedback(self) -> FeedbackSpec: ...


@dataclass
class WriteJob:
    target: WriteTarget
    rating: Rating
    attempts: int = 0
    error: str | None = None
    stored: Rating | None = None
    replayed: bool = False  # from the journal of an earlier session

    @property
    def session(self) -> WriteTarget:  # the name the screens use
        return self.target


@dataclass(frozen=True)
class WriteEvent:
    """What the writer tells the UI: 'saved', 'failed' (will retry) or 'rejected'."""

    kind: str
    job: WriteJob
    retry_in: float = 0.0


def plain_error(err: BaseException) -> str:
    """One line a rater can read: no errno codes, no tracebacks."""
    if isinstance(err, OSError) and err.strerror:
        where = f": {err.filename}" if err.filename else ""
        return f"{err.strerror}{where}"
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


class RatingWriter:
    def __init__(
        self,
        notify: Callable[[WriteEvent], None],
        backoff: tuple[float, ...] = RETRY_BACKOFF,
        journal: "Journal | None" = None,
    ):
        self._notify = notify
        self._backoff = backoff
        self.journal = journal
        self._jobs: deque[WriteJob] = deque()
        self._wake = threading.Condition()
        self._stop = False

    # ------------------------------------------------------- UI side
    def submit(self, target: WriteTarget, rating: Rating, *, replayed: bool = False) -> WriteJob:
        """Queue a rating; the caller journaled it first (or it comes from the journal)."""
        job = WriteJob(target, rating, replayed=replayed)
        with self._wake:
            self._jobs.append(job)
            self._wake.notify()
        return job

    def pending(self) -> list[WriteJob]:
        with self._wake:
            return list(self._jobs)

    def retry_now(self) -> None:
        with self._wake:
            self._wake.notify()

    def stop(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify()

    # --------------------------------------------------- thread side
    def run(self) -> None:
        """The writer loop (runs in a Textual thread worker until stop())."""
        while True:
            with self._wake:
                while not self._jobs and not self._stop:
                    self._wake.wait()
                if self._stop:
                    return
                job = self._jobs[0]
            retry_in = self._write(job)
            if retry_in is None:
                continue
            with self._wake:
                if not self._stop:
                    self._wake.wait(timeout=retry_in)

    def drain(self, timeout: float = 10.0) -> bool:
        """Write everything queued from the calling thread (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        while self.pending() and time.monotonic() < deadline:
            retry_in = self._write(self._jobs[0])
            if retry_in:
                time.sleep(min(retry_in, max(0.0, deadline - time.monotonic())))
        return not self.pending()

    def _write(self, job: WriteJob) -> float | None:
        """One attempt; returns None when the job left the queue, else seconds until the retry."""
        t = job.target
        try:
            with getattr(t, "store_lock", None) or contextlib.nullcontext():
                self._store(job)
        except RatingError as err:
            job.error = str(err)
            self._outcome(job, "rejected")
            return None
        except Exception as err:  # noqa: BLE001 - any store/network failure is retried, never lost
            job.attempts += 1
            job.error = plain_error(err)
            retry_in = self._backoff[min(job.attempts, len(self._backoff)) - 1]
            self._notify(WriteEvent("failed", job, retry_in))
            return retry_in
        self._outcome(job, "saved")
        return None

    @staticmethod
    def _store(job: WriteJob) -> None:
        t = job.target
        if job.attempts or job.replayed:
            # An earlier attempt may have been stored with its answer lost.
            t.state.take_reads(load_round(t.store, t.paths, t.state.round, previous=t.state))
            job.stored = t.state.find_submission(job.rating)
        if job.stored is None:
            # Signed with the rater's key from this machine (required when the run registers keys).
            signer = signer_for(job.rating.rater, t.feedback)
            # submit_rating records it in the state by key, with its digest: a live-refresh poll never reads it back.
            job.stored = submit_rating(t.store, t.paths, t.state, job.rating, t.feedback, signer=signer)

    def _outcome(self, job: WriteJob, kind: str) -> None:
        if self.journal is not None and job.rating.submission_id:
            try:
                if kind == "saved":
                    self.journal.stored(job.rating.submission_id)
                else:
                    self.journal.rejected(job.rating.submission_id, job.error or "")
            except OSError:
                pass  # the store has it; a replay would recognise it by its submission_id
        with self._wake:
            if self._jobs and self._jobs[0] is job:
                self._jobs.popleft()
        self._notify(WriteEvent(kind, job))
