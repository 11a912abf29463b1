"""The rating writer: one background thread that stores ratings in order.

A submitted rating goes into a queue and the UI moves on at once. The writer
stores each with ``therapy_rlhf.ratings.submit_rating`` (a new object per
rating, conditional create), one at a time so an undo is always written after
the rating it withdraws. A store failure keeps the rating at the head of the
queue and retries with backoff, for as long as the app runs: nothing is ever
dropped silently. Only a rating the rules reject (``RatingError``) leaves the
queue, and it is reported, never hidden.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from therapy_rlhf.ratings import RatingError, submit_rating
from therapy_rlhf.records import Rating

if TYPE_CHECKING:
    from therapy_rlhf.tui.session import RoundSession

# Seconds between retries of a failed write; the last value repeats.
RETRY_BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0)


@dataclass
class WriteJob:
    session: "RoundSession"
    rating: Rating
    attempts: int = 0
    error: str | None = None
    stored: Rating | None = None


@dataclass(frozen=True)
class WriteEvent:
    """What the writer tells the UI: 'saved', 'failed' (will retry) or 'rejected'."""

    kind: str
    job: WriteJob
    retry_in: float = 0.0


class RatingWriter:
    def __init__(self, notify: Callable[[WriteEvent], None], backoff: tuple[float, ...] = RETRY_BACKOFF):
        self._notify = notify
        self._backoff = backoff
        self._jobs: deque[WriteJob] = deque()
        self._wake = threading.Condition()
        self._stop = False

    # ------------------------------------------------------- UI side
    def submit(self, session: "RoundSession", rating: Rating) -> WriteJob:
        job = WriteJob(session, rating)
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
        s = job.session
        try:
            job.stored = submit_rating(s.store, s.paths, s.state, job.rating, s.feedback)
        except RatingError as err:
            job.error = str(err)
            self._pop(job)
            self._notify(WriteEvent("rejected", job))
            return None
        except Exception as err:  # noqa: BLE001 - any store/network failure is retried, never lost
            job.attempts += 1
            job.error = str(err).splitlines()[0] if str(err) else type(err).__name__
            retry_in = self._backoff[min(job.attempts, len(self._backoff)) - 1]
            self._notify(WriteEvent("failed", job, retry_in))
            return retry_in
        self._pop(job)
        self._notify(WriteEvent("saved", job))
        return None

    def _pop(self, job: WriteJob) -> None:
        with self._wake:
            if self._jobs and self._jobs[0] is job:
                self._jobs.popleft()
