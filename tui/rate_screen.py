"""The rating screen: one response at a time, scored with a handful of keys.

A complete rating is five digits and Enter with the default rubric: the
first criterion is pre-selected and each digit scores the current criterion
and moves on. Submitting journals the rating on this computer, queues it with
the writer thread and shows the next response that most needs a rater at
once (the whole batch is read up front, so moving on never waits for the
network). A poll off the UI thread keeps coverage, the batch's state and the
next batch current; a closed batch is read-only. Messages go to a line of
their own, never over the form.
"""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import Footer, LoadingIndicator, Static

from therapy_rlhf.feedback.rewards import RatingError, effective_reward
from therapy_rlhf.tui import rate_words
from therapy_rlhf.tui.badges import SafetyBadges
from therapy_rlhf.tui.catalog import RoundUpdate, WorkError, open_round, poll_round, score_history
from therapy_rlhf.tui.comment_box import COMMENT, CommentBox
from therapy_rlhf.tui.dialogue import Dialogue
from therapy_rlhf.tui.drafts import Drafts
from therapy_rlhf.tui.flags import FlagBar
from therapy_rlhf.tui.form import REWARD_ROW, RatingForm
from therapy_rlhf.tui.notice import NoticeLine, set_text
from therapy_rlhf.tui.rate_keys import RATE_KEYS
from therapy_rlhf.tui.rubric import RubricPanel
from therapy_rlhf.tui.session import RoundSession
from therapy_rlhf.tui.status_bar import RoundStatus
from therapy_rlhf.tui.writer import plain_error

DRAFT_DELAY = 1.0  # at most this many seconds between a change and its draft in the journal


class RateScreen(Screen):
    AUTO_FOCUS = ""  # keys go to the rubric; the comment box takes focus only on "c"
    BINDINGS = RATE_KEYS

    def __init__(self, namespace: str, run: str, round_no: int | None = None) -> None:
        super().__init__()
        self.target = (namespace, run, round_no)
        self.session: RoundSession | None = None
        self.form: RatingForm | None = None
        self.drafts: Drafts | None = None
        self.history: list[tuple[int, float]] = []
        self.next_batch = False
        self.closed_while_open = False
        self.poll_problem: str | None = None
        self._said_on: str | None = None  # the response the notice line's message is about

    # ------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield LoadingIndicator(id="loading")
        yield Static("", id="problem", markup=False)
        with Vertical(id="work"):
            yield RoundStatus(id="status")
            yield NoticeLine(id="notice")
            yield Static("", id="banner", markup=False)
            yield Static("", id="batch-errors", markup=False)
            yield Dialogue(id="dialogue")
            yield SafetyBadges(id="badges")
            yield RubricPanel(id="rubric")
            yield FlagBar(id="flags")
            yield CommentBox(id="comment-box")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#work").display = False
        self.query_one("#problem").display = False
        self.drafts = Drafts(self.app.journal)
        self.load()
        self.set_interval(DRAFT_DELAY, self._flush_if_changed, name="drafts")
        if self.app.refresh_seconds > 0:
            self.set_interval(self.app.refresh_seconds, self.poll, name="live-refresh")

    def on_resize(self) -> None:
        self.query_one(Dialogue).fit(self.size.width)

    def say(self, text: str, severity: str = "information") -> None:
        self.query_one(NoticeLine).say(text, severity)
        # A message is about the response on screen: moving to another one clears it.
        self._said_on = self.session.current.id if self.session is not None and self.session.current else None

    # ----------------------------------------------------------- loading
    @work(thread=True, exclusive=True, group="load-round")
    def load(self) -> None:
        namespace, run, round_no = self.target
        try:
            session = open_round(self.app.store, namespace, run, self.app.rater, round_no, self.app.order)
            history = score_history(self.app.store, session.paths, session.round, session.gate)
        except WorkError as err:
            self.app.call_from_thread(self._show_problem, str(err))
            return
        except Exception as err:  # noqa: BLE001 - a garbage object must not crash the app
            self.app.call_from_thread(self._show_problem, f"unexpected problem reading the batch: {plain_error(err)}")
            return
        self.app.call_from_thread(self._opened, session, history)

    def _show_problem(self, text: str) -> None:
        self.query_one("#loading").display = False
        self.query_one("#work").display = False
        problem = self.query_one("#problem", Static)
        problem.update(f"{text}\n\nEsc: back to the list    q: quit")
        problem.display = True

    def _opened(self, session: RoundSession, history: list[tuple[int, float]]) -> None:
        self.session = session
        self.history = history
        for rating in self.app.carried_over.get((session.title, session.round), []):
            session.queued.setdefault(rating.response_id, rating)  # saved by the journal replay
        restored = self.drafts.restore(session) if not session.closed else 0
        if restored:
            session.index = session.position(sorted(self.drafts.restored, key=session.position)[0]) - 1
        self.query_one("#loading").display = False
        self.query_one("#work").display = True
        self.query_one(Dialogue).fit(self.size.width)
        errors = session.state.batch_errors
        bar = self.query_one("#batch-errors", Static)
        bar.display = bool(errors)
        if errors:
            first = errors[0].rsplit("/", 1)[-1]  # drop the store path, keep "batch.jsonl line N: ..."
            more = f" (+{len(errors) - 1} more: t)" if len(errors) > 1 else ""
            bar.update(f"[! BATCH ERROR] {first}{more}; the other {len(session.responses)} can be scored")
        if not session.responses:
            self._show_problem(f"batch {session.round} of {session.title} has no readable responses")
            return
        if restored:
            self.say(f"Your unsent scores for {restored} response(s) came back from last time.")
        self.show_current()
        if self.app.refresh_seconds > 0:
            self.poll()  # whether a next batch is waiting, without holding up the first response

    # ----------------------------------------------------- live refresh
    @work(thread=True, exclusive=True, group="poll")
    def poll(self) -> None:
        s = self.session
        if s is None:
            return
        try:
            with s.store_lock:  # not while the writer is between storing a rating and noting it
                update = poll_round(s.store, s.paths, s.state)
        except Exception as err:  # noqa: BLE001 - shown; the screen keeps its view
            self.app.call_from_thread(self._poll_failed, plain_error(err))
            return
        self.app.call_from_thread(self._polled, update)

    def _polled(self, update: RoundUpdate) -> None:
        s = self.session
        was_closed = s.closed
        s.refreshed(update.state, update.gate)
        self.next_batch = update.next_batch
        self.poll_problem = None
        if s.closed and not was_closed:
            self.closed_while_open = True
            self.query_one(CommentBox).close()
            self.set_focus(None)
            # The header's history gains this batch's mean (it said "no closed batch yet" until now).
            if update.gate is not None and update.gate.mean_reward is not None:
                self.history = [*(p for p in self.history if p[0] != s.round), (s.round, update.gate.mean_reward)]
        self.refresh_status()

    def _poll_failed(self, text: str) -> None:
        self.poll_problem = f"Cannot reach the store to refresh ({text}); your scores are kept and saved later."
        self.refresh_status()

    def action_reload(self) -> None:
        self.poll()

    # ----------------------------------------------------------- drawing
    def show_current(self) -> None:
        s = self.session
        if s is None or s.current is None:
            return
        if self._said_on not in (None, s.current.id):
            self.query_one(NoticeLine).clear()
            self._said_on = None
        self.form = self.drafts.form_for(s, s.current.id)
        s.start_clock()
        self.query_one(Dialogue).show(s.current)
        self.query_one(SafetyBadges).show(s.current)
        self.refresh_form()

    def refresh_form(self) -> None:
        if self.form is None:
            return
        titles = {row: self.form.title(row) for row in self.form.rows}
        self.query_one(RubricPanel).show(self.form)
        self.query_one(FlagBar).show(self.form.flags, list(self.session.feedback.penalized_flags))
        self.query_one(CommentBox).show(self.form.comment, self.form.notes, titles)
        self.refresh_status()

    def refresh_status(self) -> None:
        """Redraw the status line; a no-op once the screen is being taken down (the app closing while a
        poll's or a save's answer is on its way: its labels are already gone)."""
        if not self.is_attached:
            return
        try:
            self._draw_status()
        except NoMatches:
            pass

    def _draw_status(self) -> None:
        s = self.session
        if s is None or s.current is None:
            return
        queue, problem = self.app.queue_summary()
        history = [(f"#{r}", v) for r, v in self.history]
        mine = [s.own(r.id) for r in s.responses]
        own = [effective_reward(r, s.feedback)[0] for r in mine if r is not None]
        if own and not s.closed:
            history.append(("yours", sum(own) / len(own)))
        self.query_one(RoundStatus).show(
            where=f"{s.title} · batch {s.round} · {s.rater}",
            progress=f"you scored {s.rated_count()} of {len(s.responses)}",
            position=f"Response {s.index + 1} of {len(s.responses)}: {rate_words.state_words(s, self.drafts)}",
            history=history,
            queue=queue,
            queue_problem=problem,
        )
        self.query_one(NoticeLine).hold(self.app.save_problem() or self.drafts.problem or self.poll_problem)
        self._draw_banner()

    def _draw_banner(self) -> None:
        s = self.session
        banner = self.query_one("#banner", Static)
        text = rate_words.banner_text(s, self.drafts, self.next_batch, self.closed_while_open)
        set_text(banner, text)
        if banner.display != bool(text):
            banner.display = bool(text)
        banner.set_class(s.closed, "closed")

    def unsaved(self) -> list[str]:
        """Responses with typed input that was not submitted (kept as drafts)."""
        if self.session is None or self.drafts is None:
            return []
        return self.drafts.unsaved(self.session)

    # ------------------------------------------------------------ drafts
    def _changed(self) -> None:
        # Journaled by the draft interval (at most DRAFT_DELAY later), not on
        # every key: a key press never waits for an fsync.
        self.drafts.changed(self.session.current.id)

    def _flush_if_changed(self) -> None:
        if self.drafts is not None and self.drafts.dirty:
            self.flush_drafts()

    def flush_drafts(self) -> None:
        if self.session is not None and self.drafts is not None:
            self.drafts.flush(self.session)

    # ----------------------------------------------------------- scoring
    def _ready(self) -> bool:
        return self.session is not None and self.form is not None and self.session.current is not None

    def _editable(self) -> bool:
        if not self._ready():
            return False
        if self.session.closed:
            self.app.bell()
            self.say("This batch is closed: scores can no longer be added or changed.", "warning")
            return False
        return True

    def _edit(self, change) -> None:
        try:
            change()
        except RatingError as err:
            self.app.bell()
            self.say(str(err), "warning")
            return
        self._changed()
        self.refresh_form()

    def action_score(self, level: int) -> None:
        if not self._editable():
            return
        if level > self.form.top_level:
            self.app.bell()
            self.say(f"The levels of this rubric are 0 to {self.form.top_level}.", "warning")
            return
        self._edit(lambda: self.form.score(level))

    def action_score_at(self, row: str, level: int) -> None:
        if self._editable():
            self._edit(lambda: self.form.score(level, row))

    def action_not_applicable(self) -> None:
        if self._editable():
            self._edit(self.form.mark_not_applicable)

    def action_not_applicable_at(self, row: str) -> None:
        if self._editable():
            self._edit(lambda: self.form.mark_not_applicable(row))

    def action_select_row(self, row: str) -> None:
        if self._ready():
            self.form.select(row)
            self.refresh_form()

    def action_row(self, step: int) -> None:
        if self._ready():
            self.form.move(step)
            self.refresh_form()

    def action_adjust(self, step: int) -> None:
        if self._editable():
            self._edit(lambda: self.form.adjust(step))

    def action_flag(self, flag: str) -> None:
        if self._editable():
            self._edit(lambda: self.form.toggle_flag(flag))

    def action_comment(self) -> None:
        if self._editable():
            self._open_editor(COMMENT, self.form.comment, "Comment:")

    def action_note(self) -> None:
        if self._editable():
            row = self.form.current
            if row == REWARD_ROW:
                self.say("Notes go on criteria: move to one with the arrow keys, or write a comment (c).")
                return
            self._open_editor(row, self.form.notes.get(row, ""), f"Note, {self.form.title(row)[:12]}:")

    def _open_editor(self, target: str, text: str, label: str) -> None:
        # Focus now, not on the next loop turn (Widget.focus is deferred): keys
        # already queued behind "c" (fast typing, a paste) must reach the box.
        self.set_focus(self.query_one(CommentBox).edit(target, text, label))

    @on(CommentBox.Edited)
    def _text_edited(self, event: CommentBox.Edited) -> None:
        if self.form is None:
            return
        if event.target == COMMENT:
            self.form.comment = event.text
        else:
            self.form.notes[event.target] = event.text
        self._changed()

    def _close_editor(self) -> None:
        box = self.query_one(CommentBox)
        if box.editing:
            box.close()
            self.set_focus(None)
            self.refresh_form()

    def action_submit(self) -> None:
        if not self._editable():
            return
        s, item = self.session, self.session.current
        own = s.own(item.id)
        if own is not None and self.form.same_as(own):
            self._advance()  # nothing changed: Enter just moves on
            return
        try:
            rating = self.form.to_rating(item.id, s.rater, s.time_on_current(), self.app.client_name)
        except RatingError as err:
            missing = self.form.missing()
            self.form.cursor = self.form.rows.index(missing[0]) if missing else 0
            self.refresh_form()
            self.say(str(err), "warning")
            return
        self.drafts.submitted(item.id)
        s.record(rating)
        self.app.submit(s, rating)
        self._close_editor()
        self._advance()

    def _advance(self) -> None:
        target = self.session.next_unrated()
        if target is not None:
            self.session.go(target)
        self.show_current()

    # -------------------------------------------------------- navigation
    def action_move(self, step: int) -> None:
        if self._ready():
            self.session.step(step)
            self.show_current()

    def action_skip(self) -> None:
        if self._ready():
            self.session.skip()
            self.show_current()

    def action_unrated(self) -> None:
        if not self._ready():
            return
        target = self.session.next_unrated()
        if target is None:
            self.say("You have scored every response in this batch.")
            return
        self.session.go(target)
        self.show_current()

    def action_undo(self) -> None:
        if not self._editable():
            return
        s = self.session
        rid = s.last_rated()
        if rid is None:
            self.say("Nothing to undo: you have no score in this batch.")
            return
        withdrawal = s.withdrawal(rid, self.app.client_name)
        s.record(withdrawal)
        self.app.submit(s, withdrawal)
        self.drafts.submitted(rid)
        s.go(s.position(rid) - 1)
        self.show_current()
        self.say(f"Took back your score of response {s.position(rid)} (kept in the history; nothing is deleted).")

    def action_scroll_response(self, pages: int) -> None:
        if self._ready():
            self.query_one(Dialogue).scroll_response(pages)

    def action_guidelines(self) -> None:
        if self.session is None:
            return
        from therapy_rlhf.tui.guidelines_screen import GuidelinesScreen

        self.app.push_screen(GuidelinesScreen(self.session.feedback, self.app.guidelines_text))

    def action_summary(self) -> None:
        if self.session is None:
            return
        from therapy_rlhf.tui.summary_screen import SummaryScreen

        self.app.push_screen(SummaryScreen(self.session.paths, self.session.manifest, self.session.state.batch_errors))

    def action_review(self) -> None:
        if self.session is None:
            return
        if not self.session.closed:
            self.say("Disagreements can be reviewed once this batch is closed (you score blind until then).")
            return
        from therapy_rlhf.tui.review_screen import ReviewScreen

        self.app.push_screen(ReviewScreen(self.session.paths, self.session.manifest, self.session.round))

    def action_back(self) -> None:
        if self.query_one(CommentBox).editing:
            self._close_editor()
            return
        # Typed scores are kept as drafts: leaving loses nothing.
        self.flush_drafts()
        if self.session is not None:
            self.session.stop_clock()
        self.app.leave_round(self)
