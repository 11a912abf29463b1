"""Two lines above the dialogue: where you are and your progress; this response and the saving state.

The position ("Response 3 of 24: not scored yet") and the saving state are
sized to their text and never cut; the place name and the score history give
way first on a narrow terminal.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label

from therapy_rlhf.tui.history import ScoreHistory
from therapy_rlhf.tui.notice import set_text


class RoundStatus(Vertical):
    def compose(self) -> ComposeResult:
        with Horizontal(classes="status-line"):
            yield Label("", id="where")
            yield Label("", id="progress-count")
            yield ScoreHistory(id="history")
        with Horizontal(classes="status-line"):
            yield Label("", id="position")
            yield Label("", id="status-gap")
            yield Label("", id="queue")

    def on_resize(self) -> None:
        # The history is sized to its text, so it never sees the line grow (first
        # layout, a wider terminal): fit it again from here.
        self.query_one(ScoreHistory).redraw()

    def show(
        self,
        where: str,
        progress: str,
        position: str,
        history: list[tuple[str, float]],
        queue: str,
        queue_problem: bool,
    ) -> None:
        set_text(self.query_one("#where", Label), where)
        set_text(self.query_one("#progress-count", Label), progress)
        set_text(self.query_one("#position", Label), position)
        self.query_one(ScoreHistory).show(history)
        label = self.query_one("#queue", Label)
        set_text(label, queue)
        label.set_class(queue_problem, "problem")
