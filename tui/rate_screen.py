"""The rating screen: one response at a time, scored with a handful of keys.

A complete rating is five digits and Enter with the default rubric: the
first criterion is pre-selected and each digit scores the current criterion
and moves on. Submitting queues the rating with the writer thread and shows
the next unrated response at once (the whole batch is read up front, so
moving on never waits for the network).
"""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Input, Label, LoadingIndicator, Static

from therapy_rlhf.ratings import RatingError
from therapy_rlhf.tui.badges import SafetyBadges
from therapy_rlhf.tui.catalog import WorkError, closed_round_means, open_round
from therapy_rlhf.tui.dialogue import Dialogue
from therapy_rlhf.tui.flags import FLAG_KEYS, FlagBar
from therapy_rlhf.tui.form import RatingForm
from therapy_rlhf.tui.rubric import RubricPanel
from therapy_rlhf.tui.session import RoundSession
from therapy_rlhf.tui.status_bar import RoundStatus

MAX_LEVELS = 10


def _digit_bindings() -> list[Binding]:
    return [
        Binding(str(d), f"score({d})", "Score", key_display="0-9", show=d == 0)
        for d in range(MAX_LEVELS)
    ]


def _flag_bindings() -> list[Binding]:
    return [
        Binding(key, f"flag('{flag}')", f"Flag {flag.replace('_', ' ')}", show=False)
        for flag, key in FLAG_KEYS.items()
    ]


class RateScreen(Screen):
    AUTO_FOCUS = ""  # keys go to the rubric; the comment field takes focus only on "c"
    BINDINGS = [
        *_digit_bindings(),
        Binding("enter", "submit", "Submit"),
        Binding("up,k", "row(-1)", "Previous criterion", show=False),
        Binding("down,j", "row(1)", "Next criterion", show=False),
        Binding("left", "adjust(-1)", "Lower the score", show=False),
        Binding("right", "adjust(1)", "Raise the score", show=False),
        *_flag_bindings(),
        Binding("c", "comment", "Comment"),
        Binding("z", "undo", "Undo"),
        Binding("s", "skip", "Skip"),
        Binding("n", "move(1)", "Next response", show=False),
        Binding("p", "move(-1)", "Previous response", show=False),
        Binding("u", "unrated", "Jump to the next unrated response", show=False),
        Binding("pagedown", "scroll_response(1)", "Scroll the response down", show=False),
        Binding("pageup", "scroll_response(-1)", "Scroll the response up", show=False),
        Binding("question_mark", "guidelines", "Guide", key_display="?"),
        Binding("t", "summary", "Summary", show=False),
        Binding("ctrl+r", "reload", "Reload others' progress from the store", show=False),
        Binding("escape", "back", "Leave the comment field / back to runs", show=False),
    ]

    def __init__(self, namespace: str, run: str, round_no: int | None = None) -> None:
        super().__init__()
        self.target = (namespace, run, round_no)
        self.session: RoundSession | None = None
        self.form: RatingForm | None = None
        self.drafts: dict[str, RatingForm] = {}
        self.closed_means: list[float] = []

    # ------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield LoadingIndicator(id="loading")
        yield Static("", id="problem", markup=False)
        with Vertical(id="work"):
            yield RoundStatus(id="status")
            yield Static("", id="batch-errors", markup=False)
            yield Static("", id="done-banner", markup=False)
            yield Dialogue(id="dialogue")
            yield SafetyBadges(id="badges")
            yield RubricPanel(id="rubric")
            yield FlagBar(id="flags")
            with Horizontal(id="comment-row"):
                yield Label("Comment (c):", id="comment-label")
                yield Input(placeholder="optional; Enter submits, Esc leaves the field", id="comment")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#work").display = False
        self.query_one("#problem").display = False
        self.load()

    def on_resize(self) -> None:
        self.query_one(Dialogue).fit(self.size.width)

    # ----------------------------------------------------------- loading
    @work(thread=True, exclusive=True, group="load-round")
    def load(self) -> None:
        namespace, run, round_no = self.target
        try:
            session = open_round(self.app.store, namespace, run, self.app.rater, round_no)
            means = closed_round_means(self.app.store, session.paths, session.round)
        except WorkError as err:
            self.app.call_from_thread(self._show_problem, str(err))
            return
        except Exception as err:  # noqa: BLE001 - a garbage object must not crash the app
            self.app.call_from_thread(self._show_problem, f"unexpected problem reading the round: {err}")
            return
        self.app.call_from_thread(self._opened, session, means)

    def _show_problem(self, text: str) -> None:
        self.query_one("#loading").display = False
        self.query_one("#work").display = False
        problem = self.query_one("#problem", Static)
        problem.update(f"{text}\n\nEsc: back to the list of runs    q: quit")
        problem.display = True

    def _opened(self, session: RoundSession, means: list[float]) -> None:
        self.session = session
        self.closed_means = means
        self.query_one("#loading").display = False
        self.query_one("#work").display = True
        self.query_one(Dialogue).fit(self.size.width)
        errors = session.state.batch_errors
        bar = self.query_one("#batch-errors", Static)
        bar.display = bool(errors)
        if errors:
            first = errors[0].rsplit("/", 1)[-1]  # drop the store path, keep "batch.jsonl line N: ..."
            more = f" (+{len(errors) - 1} more: t)" if len(errors) > 1 else ""
            bar.update(f"[! BATCH ERROR] {first}{more}; the other {len(session.responses)} can be rated")
        if not session.responses:
            self._show_problem(f"round {session.round} of {session.title} has no readable responses")
            return
        self.show_current()

    # ----------------------------------------------------------- drawing
    def show_current(self) -> None:
        s = self.session
        if s is None or s.current is None:
            return
        item = s.current
        form = self.drafts.get(item.id)
        if form is None:
            previous = s.own(item.id) or s.undone.get(item.id)
            form = RatingForm.from_rating(previous, s.feedback) if previous else RatingForm(s.feedback)
            self.drafts[item.id] = form
        self.form = form
        s.start_clock()
        self.query_one(Dialogue).show(item)
        self.query_one(SafetyBadges).show(item.safety)
        comment = self.query_one("#comment", Input)
        with comment.prevent(Input.Changed):
            comment.value = form.comment
        self.refresh_form()

    def refresh_form(self) -> None:
        if self.form is None:
            return
        self.query_one(RubricPanel).show(self.form)
        self.query_one(FlagBar).show(self.form.flags, list(self.session.feedback.penalized_flags))
        self.refresh_status()

    def refresh_status(self) -> None:
        s = self.session
        if s is None or s.current is None:
            return
        own = s.own(s.current.id)
        if own is not None:
            state = "queued, saving" if s.current.id in s.queued else f"rated by you (v{own.version})"
            state += f", reward {own.reward:.2f}" if own.reward is not None else ""
        elif s.current.id in s.undone:
            state = "withdrawn, rate again"
        else:
            state = "skipped earlier, unrated" if s.current.id in s.skipped else "unrated"
        cov = s.round_coverage()
        own_rewards = s.own_rewards()
        rewards = self.closed_means + ([sum(own_rewards) / len(own_rewards)] if own_rewards else [])
        queue, problem = self.app.queue_summary()
        self.query_one(RoundStatus).show(
            where=f"{s.title} | round {s.round} | rater {s.rater}",
            rated=s.rated_count(),
            total=len(s.responses),
            position=f"Response {s.index + 1}/{len(s.responses)}: {state}",
            rewards=rewards,
            queue=queue,
            queue_problem=problem,
        )
        banner = self.query_one("#done-banner", Static)
        banner.display = s.done
        if s.done:
            banner.update(
                f"All {len(s.responses)} responses rated by you. Round coverage: {cov.describe()}. "
                "t: summary  Esc: other runs  q: quit"
            )

    def unsaved(self) -> list[str]:
        """Responses with typed input that was not submitted."""
        if self.session is None:
            return []
        out = []
        for rid, form in self.drafts.items():
            # Compared with what is stored (or was just withdrawn by an undo,
            # which pre-fills the form): only real typing counts as unsaved.
            reference = self.session.own(rid) or self.session.undone.get(rid)
            if form.touched and (reference is None or not self._same(form, reference)):
                out.append(rid)
        return out

    def _same(self, form: RatingForm, rating) -> bool:
        try:
            fresh = form.to_rating(rating.response_id, rating.rater, 0.0, "x")
        except RatingError:
            return False
        return (fresh.criteria, fresh.reward, fresh.flags, fresh.comment) == (
            rating.criteria,
            rating.reward,
            rating.flags,
            rating.comment,
        )

    # ----------------------------------------------------------- scoring
    def _ready(self) -> bool:
        return self.session is not None and self.form is not None and self.session.current is not None

    def action_score(self, level: int) -> None:
        if not self._ready():
            return
        if level > self.form.top_level:
            self.app.bell()
            self.notify(f"This rubric's scale is 0..{self.form.top_level}", severity="warning")
            return
        self.form.score(level)
        self.refresh_form()

    def action_score_at(self, row: str, level: int) -> None:
        if self._ready():
            self.form.score(level, row)
            self.refresh_form()

    def action_select_row(self, row: str) -> None:
        if self._ready():
            self.form.select(row)
            self.refresh_form()

    def action_row(self, step: int) -> None:
        if self._ready():
            self.form.move(step)
            self.refresh_form()

    def action_adjust(self, step: int) -> None:
        if self._ready():
            self.form.adjust(step)
            self.refresh_form()

    def action_flag(self, flag: str) -> None:
        if self._ready():
            self.form.toggle_flag(flag)
            self.refresh_form()

    def action_comment(self) -> None:
        if self._ready():
            # Focus now, not on the next loop turn (Widget.focus is deferred): keys
            # already queued behind "c" (fast typing, a paste) must reach the field.
            self.set_focus(self.query_one("#comment", Input))

    @on(Input.Changed, "#comment")
    def _comment_changed(self, event: Input.Changed) -> None:
        if self.form is not None:
            self.form.comment = event.value

    @on(Input.Submitted, "#comment")
    def _comment_submitted(self) -> None:
        self.action_submit()

    def action_submit(self) -> None:
        if not self._ready():
            return
        s, item = self.session, self.session.current
        own = s.own(item.id)
        if own is not None and self._same(self.form, own):
            self._advance()  # nothing changed: Enter just moves on
            return
        try:
            rating = self.form.to_rating(item.id, s.rater, s.time_on_current(), self.app.client_name)
        except RatingError as err:
            self.form.cursor = self.form.rows.index(self.form.missing()[0]) if self.form.missing() else 0
            self.refresh_form()
            self.notify(str(err), severity="warning")
            return
        self.drafts.pop(item.id, None)
        s.record(rating)
        self.app.writer.submit(s, rating)
        self.set_focus(None)
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
            self.notify("Every response in this round is rated by you.")
            return
        self.session.go(target)
        self.show_current()

    def action_undo(self) -> None:
        if not self._ready():
            return
        s = self.session
        rid = s.last_rated()
        if rid is None:
            self.notify("Nothing to undo: you have no rating in this round.")
            return
        withdrawal = s.withdrawal(rid, self.app.client_name)
        s.record(withdrawal)
        self.app.writer.submit(s, withdrawal)
        self.drafts.pop(rid, None)
        s.go(s.responses.index(next(r for r in s.responses if r.id == rid)))
        self.show_current()
        self.notify(f"Withdrew your rating of {rid} (stored as a new version; nothing is deleted).")

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

    @work(thread=True, exclusive=True, group="reload")
    def action_reload(self) -> None:
        from therapy_rlhf.ratings import load_round

        s = self.session
        if s is None:
            return
        try:
            fresh = load_round(s.store, s.paths, s.round, previous=s.state)  # reads only new ratings
        except Exception as err:  # noqa: BLE001 - shown to the rater, the old view stays
            self.app.call_from_thread(self.notify, f"reload failed: {err}", severity="error")
            return
        known = {r.id for r in fresh.ratings}
        fresh.ratings.extend(r for r in list(s.state.ratings) if r.id not in known)
        s.state.ratings, s.state.by_key = fresh.ratings, fresh.by_key
        self.app.call_from_thread(self.refresh_status)

    def action_back(self) -> None:
        comment = self.query_one("#comment", Input)
        if comment.has_focus:
            self.set_focus(None)
            return
        pending = self.unsaved()
        if not pending:
            self._leave()
            return
        from therapy_rlhf.tui.confirm_screen import ConfirmScreen

        def done(leave: bool | None) -> None:
            if leave:
                self._leave()

        self.app.push_screen(
            ConfirmScreen(
                f"You typed scores for {len(pending)} response(s) without submitting them "
                f"({', '.join(pending[:3])}). Leave this round and discard them?",
                yes="Discard and leave",
                no="Stay",
            ),
            done,
        )

    def _leave(self) -> None:
        if self.session is not None:
            self.session.stop_clock()
        self.app.leave_round(self)
