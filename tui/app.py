"""The scoring app: screens, the rating writer thread, the local journal, quitting safely.

Start-up does no store I/O on the UI thread: the first screen appears at once
and reads the store in a worker. The writer runs in one thread worker for
the app's lifetime (see ``writer.py``); every submitted score is journaled on
this computer first (``journal.py``) and what an earlier session left unsaved
is replayed at start. SIGHUP (a dropped SSH session) and SIGTERM save the
drafts, stop the writer and exit through Textual, so the terminal is restored
and the next start finds everything in the journal.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from typing import Callable

from textual import events, on, work
from textual.app import App
from textual.binding import Binding

from therapy_rlhf import __version__
from therapy_rlhf.contracts.records import Rating
from therapy_rlhf.store.backends import Store, StoreError
from therapy_rlhf.tui.journal import Journal
from therapy_rlhf.tui.messages import WriteResult
from therapy_rlhf.tui.writer import RETRY_BACKOFF, RatingWriter, WriteEvent, plain_error

# The smallest terminal the screens are laid out for.
MIN_WIDTH, MIN_HEIGHT = 80, 24
# Seconds between live-refresh polls of the round on screen (0 turns polling off).
REFRESH_SECONDS = 10.0
EXIT_SIGNALS = (signal.SIGHUP, signal.SIGTERM)


class ScoringApp(App[int]):
    CSS_PATH = "scoring.tcss"
    TITLE = "therapy-rlhf score"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True),
        Binding("f1,H", "help", "Keys", key_display="H"),
        Binding("ctrl+t", "toggle_dark", "Switch light/dark theme", show=False),
    ]

    def __init__(
        self,
        store: Store,
        rater: str,
        run: tuple[str, str] | None = None,
        round_no: int | None = None,
        *,
        guidelines: str | None = None,
        unblind: bool = False,
        clock: Callable[[], float] = time.time,
        backoff: tuple[float, ...] = RETRY_BACKOFF,
        refresh_seconds: float = REFRESH_SECONDS,
        order: str | None = None,
        journal: Journal | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.rater = rater
        self.start_run = run
        self.start_round = round_no
        self.guidelines_text = guidelines
        self.unblind = unblind
        self.clock = clock
        self.refresh_seconds = refresh_seconds
        self.order = order
        self.client_name = f"therapy-rlhf-tui/{__version__}"
        self.journal = journal or Journal.open(store.uri, rater)
        self.writer = RatingWriter(lambda event: self.post_message(WriteResult(event)), backoff, self.journal)
        self.failures: dict[int, WriteEvent] = {}  # id(job) -> last failure
        self.rejected: list[WriteEvent] = []
        self.journal_problem: str | None = None
        self.exit_signal: int | None = None
        self._stopping = threading.Event()
        self._previous_handlers: dict[int, object] = {}
        # Ratings an earlier session submitted but did not store, by (run, round).
        self.carried_over: dict[tuple[str, int], list[Rating]] = {}

    # ----------------------------------------------------------- start-up
    def on_mount(self) -> None:
        from therapy_rlhf.tui.start_screen import StartScreen

        self._install_signal_handlers()
        try:
            for item in self.journal.read().outstanding:
                self.carried_over.setdefault((item.run, item.round), []).append(item.rating)
        except OSError as err:
            self.journal_problem = f"cannot read the local journal {self.journal.path}: {plain_error(err)}"
        self.run_writer()
        self.replay_journal()
        self.push_screen(StartScreen())
        if self.start_run is not None:
            self.open_round(*self.start_run, self.start_round)
        self._check_size()

    @work(thread=True, group="writer", name="rating-writer")
    def run_writer(self) -> None:
        self.writer.run()

    @work(thread=True, group="writer", name="journal-replay")
    def replay_journal(self) -> None:
        """Store what an earlier session left in the journal (only the journal's owner does)."""
        from therapy_rlhf.tui.replay import prepare

        try:
            if not self.journal.claim():
                return  # another window of this rater replays it
            outstanding = self.journal.compact().outstanding
        except OSError as err:
            self.journal_problem = f"cannot use the local journal {self.journal.path}: {plain_error(err)}"
            return
        attempt = 0
        while outstanding and not self._stopping.is_set():
            try:
                replay = prepare(self.store, outstanding)
            except (StoreError, OSError):
                # The store is not answering yet: the ratings wait in the journal.
                self._stopping.wait(self.writer_backoff(attempt))
                attempt += 1
                continue
            for target, rating in replay.jobs:
                self.writer.submit(target, rating, replayed=True)
            if replay.unstorable:
                self.journal_problem = "kept on this computer, cannot be saved: " + "; ".join(replay.unstorable)
            self.call_from_thread(self._refresh_screen)
            return

    def writer_backoff(self, attempt: int) -> float:
        backoff = self.writer._backoff
        return backoff[min(attempt, len(backoff) - 1)]

    def open_round(self, namespace: str, run: str, round_no: int | None = None) -> None:
        from therapy_rlhf.tui.rate_screen import RateScreen

        self.push_screen(RateScreen(namespace, run, round_no))

    def leave_round(self, screen) -> None:
        from therapy_rlhf.tui.start_screen import StartScreen

        if self.screen is screen:
            self.pop_screen()
        if isinstance(self.screen, StartScreen):
            self.screen.reload()

    def on_key(self, event: events.Key) -> None:
        # A printable key reaches the app while a text box is focused only when
        # it was routed before the box took focus (fast typing or a paste right
        # behind "c"); Textual fires no binding for it then, so it would vanish.
        # Type it into the box instead.
        focused = self.focused
        if getattr(focused, "id", None) == "editor" and event.is_printable and event.character:
            focused.insert(event.character)
            event.stop()

    # ------------------------------------------------------------ signals
    def _install_signal_handlers(self) -> None:
        try:
            loop = asyncio.get_running_loop()
            for sig in EXIT_SIGNALS:
                self._previous_handlers[sig] = signal.getsignal(sig)
                loop.add_signal_handler(sig, self._on_exit_signal, sig)
        except (NotImplementedError, RuntimeError, ValueError):
            self._previous_handlers.clear()  # not the main thread: leave signals alone

    def _remove_signal_handlers(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        for sig, previous in self._previous_handlers.items():
            loop.remove_signal_handler(sig)
            signal.signal(sig, previous)  # type: ignore[arg-type]
        self._previous_handlers.clear()

    def _on_exit_signal(self, signum: int) -> None:
        """The session is going away: keep everything in the journal, then exit cleanly."""
        self.exit_signal = signum
        self.flush_drafts()
        self.journal.sync()
        self._stop_background()
        self.exit(result=128 + signum, return_code=128 + signum)

    def flush_drafts(self) -> None:
        for screen in self.screen_stack:
            flush = getattr(screen, "flush_drafts", None)
            if flush is not None:
                flush()

    def _stop_background(self) -> None:
        self._stopping.set()
        self.writer.stop()

    # --------------------------------------------------------- too small
    def on_resize(self, event: events.Resize) -> None:
        self._check_size(event.size)

    def _check_size(self, size=None) -> None:
        from therapy_rlhf.tui.too_small_screen import TooSmallScreen

        width, height = size or self.size
        small = width < MIN_WIDTH or height < MIN_HEIGHT
        if small and not isinstance(self.screen, TooSmallScreen):
            self.push_screen(TooSmallScreen(MIN_WIDTH, MIN_HEIGHT))
        elif not small and isinstance(self.screen, TooSmallScreen):
            self.pop_screen()
        elif small:
            self.screen.refresh()

    # ------------------------------------------------------------ writes
    def submit(self, session, rating: Rating) -> None:
        """Keep the rating in the journal (fsynced), then queue it for the store."""
        try:
            self.journal.queued(session.title, session.round, rating)
        except OSError as err:
            self.journal_problem = f"no local copy kept ({plain_error(err)}); it is still being saved"
        self.writer.submit(session, rating)

    @on(WriteResult)
    def _write_result(self, message: WriteResult) -> None:
        event = message.event
        job = event.job
        if event.kind == "failed":
            self.failures[id(job)] = event
        else:
            self.failures.pop(id(job), None)
            self._saved_everywhere(job)
            if event.kind == "rejected":
                self.rejected.append(event)
        self._refresh_screen()

    def _saved_everywhere(self, job) -> None:
        """Every screen showing this rating as waiting to save stops doing so."""
        target = job.target
        key = (getattr(target, "title", ""), getattr(target, "round", 0))
        carried = self.carried_over.get(key, [])
        self.carried_over[key] = [r for r in carried if r.submission_id != job.rating.submission_id]
        target.saved(job.rating)
        for screen in self.screen_stack:
            session = getattr(screen, "session", None)
            if session is not None and session is not target and (session.title, session.round) == key:
                session.saved(job.rating)

    def _refresh_screen(self) -> None:
        refresh = getattr(self.screen, "refresh_status", None)
        if refresh is not None:  # the rating screen's (safe while the screen is taken down)
            refresh()

    def queue_summary(self) -> tuple[str, bool]:
        """(short text for the status line, whether it signals a problem)."""
        pending = self.writer.pending()
        if self.rejected:
            return f"[!] {len(self.rejected)} not accepted", True
        if not pending:
            return "all saved", False
        if any(id(j) in self.failures for j in pending):
            return f"[!] {len(pending)} NOT SAVED YET", True
        return f"saving {len(pending)}...", False

    def save_problem(self) -> str | None:
        """The longer explanation of a saving problem, for the notice line."""
        if self.rejected:
            last = self.rejected[-1]
            return f"The store did not accept one of your scores: {last.job.error}"
        pending = self.writer.pending()
        failing = [self.failures[id(j)] for j in pending if id(j) in self.failures]
        if failing:
            last = failing[-1]
            reason = (last.job.error or "").rsplit(" failed: ", 1)[-1]  # the store key is no help to a rater
            return (
                f"{len(pending)} score(s) waiting to save (store not answering: {reason}). "
                f"Kept on this computer; trying again in {last.retry_in:.0f} s."
            )
        return self.journal_problem

    # -------------------------------------------------------------- quit
    def unsaved_summary(self) -> str | None:
        parts = []
        pending = self.writer.pending()
        if pending:
            parts.append(
                f"{len(pending)} submitted score(s) are not in the store yet; they are kept on this "
                "computer and saved the next time you start the app"
            )
        for screen in self.screen_stack:
            typed = getattr(screen, "unsaved", lambda: [])()
            if typed:
                parts.append(
                    f"scores typed but not submitted for {len(typed)} response(s) are kept as drafts "
                    "and come back when you open this batch again"
                )
        return "; ".join(parts) or None

    async def action_quit(self) -> None:
        problem = self.unsaved_summary()
        if problem is None:
            self._finish()
            return
        from therapy_rlhf.tui.confirm_screen import ConfirmScreen

        def done(quit_anyway: bool | None) -> None:
            if quit_anyway:
                self._finish()

        self.push_screen(ConfirmScreen(f"Before you go: {problem}. Quit now?", yes="Quit", no="Stay"), done)

    def _finish(self) -> None:
        self.flush_drafts()
        self.journal.sync()
        self._stop_background()
        self.exit(result=0, return_code=0)

    def on_unmount(self) -> None:
        self._stop_background()
        self.journal.release()
        self._remove_signal_handlers()

    def action_help(self) -> None:
        from therapy_rlhf.tui.help_screen import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.screen))
