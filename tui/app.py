"""The scoring app: screens, the rating writer thread, quitting safely.

Start-up does no store I/O on the UI thread: the first screen appears at once
and reads the store in a worker. The writer runs in one thread worker for
the app's lifetime (see ``writer.py``).
"""

from __future__ import annotations

import time
from typing import Callable

from textual import events, on, work
from textual.app import App
from textual.binding import Binding

from therapy_rlhf import __version__
from therapy_rlhf.store import Store
from therapy_rlhf.tui.messages import WriteResult
from therapy_rlhf.tui.writer import RETRY_BACKOFF, RatingWriter, WriteEvent

# The smallest terminal the screens are laid out for.
MIN_WIDTH, MIN_HEIGHT = 80, 24


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
    ) -> None:
        super().__init__()
        self.store = store
        self.rater = rater
        self.start_run = run
        self.start_round = round_no
        self.guidelines_text = guidelines
        self.unblind = unblind
        self.clock = clock
        self.client_name = f"therapy-rlhf-tui/{__version__}"
        self.writer = RatingWriter(lambda event: self.post_message(WriteResult(event)), backoff)
        self.failures: dict[int, WriteEvent] = {}  # id(job) -> last failure
        self.rejected: list[WriteEvent] = []

    # ----------------------------------------------------------- start-up
    def on_mount(self) -> None:
        from therapy_rlhf.tui.start_screen import StartScreen

        self.run_writer()
        self.push_screen(StartScreen())
        if self.start_run is not None:
            self.open_round(*self.start_run, self.start_round)
        self._check_size()

    @work(thread=True, group="writer", name="rating-writer")
    def run_writer(self) -> None:
        self.writer.run()

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
        # A printable key reaches the app while the comment field is focused
        # only when it was routed before the field took focus (fast typing or a
        # paste right behind "c"); Textual fires no binding for it then, so it
        # would vanish. Type it into the field instead.
        focused = self.focused
        if getattr(focused, "id", None) == "comment" and event.is_printable and event.character:
            focused.insert_text_at_cursor(event.character)
            event.stop()

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
    @on(WriteResult)
    def _write_result(self, message: WriteResult) -> None:
        event = message.event
        job = event.job
        if event.kind == "saved":
            job.session.saved(job.rating)
            self.failures.pop(id(job), None)
        elif event.kind == "failed":
            first = id(job) not in self.failures
            self.failures[id(job)] = event
            if first:
                self.notify(
                    f"Could not save the rating of {job.rating.response_id}: {job.error}. "
                    "It stays queued and is retried.",
                    severity="error",
                    timeout=8,
                )
        else:
            job.session.saved(job.rating)
            self.failures.pop(id(job), None)
            self.rejected.append(event)
            self.notify(
                f"The store refused the rating of {job.rating.response_id}: {job.error}",
                severity="error",
                timeout=30,
            )
        refresh = getattr(self.screen, "refresh_status", None)
        if refresh is not None:
            refresh()

    def queue_summary(self) -> tuple[str, bool]:
        """(text for the status bar, whether it signals a problem)."""
        pending = self.writer.pending()
        if self.rejected:
            return f"[!] {len(self.rejected)} rating(s) refused, see messages", True
        if not pending:
            return "all saved", False
        failing = [self.failures[id(j)] for j in pending if id(j) in self.failures]
        if failing:
            last = failing[-1]
            return (
                f"[!] NOT SAVED YET: {len(pending)} queued, retry {last.job.attempts} "
                f"in {last.retry_in:.0f}s ({last.job.error[:40]})",
                True,
            )
        return f"saving {len(pending)}...", False

    # -------------------------------------------------------------- quit
    def unsaved_summary(self) -> str | None:
        parts = []
        pending = self.writer.pending()
        if pending:
            parts.append(f"{len(pending)} submitted rating(s) are not stored yet (the store is not answering)")
        for screen in self.screen_stack:
            typed = getattr(screen, "unsaved", lambda: [])()
            if typed:
                parts.append(f"scores typed but not submitted for {len(typed)} response(s)")
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

        self.push_screen(
            ConfirmScreen(f"Unsaved work: {problem}. Quit anyway and lose it?", yes="Quit and lose it", no="Stay"),
            done,
        )

    def _finish(self) -> None:
        self.writer.stop()
        self.exit(0)

    def on_unmount(self) -> None:
        self.writer.stop()

    def action_help(self) -> None:
        from therapy_rlhf.tui.help_screen import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.screen))

