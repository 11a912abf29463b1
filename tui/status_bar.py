"""Two lines above the dialogue: where you are, round progress, reward sparkline, saving state."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, ProgressBar, Sparkline


class RoundStatus(Vertical):
    def compose(self) -> ComposeResult:
        with Horizontal(classes="status-line"):
            yield Label("", id="where")
            yield ProgressBar(total=1, show_eta=False, show_percentage=False, id="round-progress")
            yield Label("", id="progress-count")
        with Horizontal(classes="status-line"):
            yield Label("", id="position")
            yield Label("reward/round", id="spark-label")
            yield Sparkline([], id="reward-spark")
            yield Label("", id="queue")

    def show(
        self,
        where: str,
        rated: int,
        total: int,
        position: str,
        rewards: list[float],
        queue: str,
        queue_problem: bool,
    ) -> None:
        self.query_one("#where", Label).update(where)
        self.query_one("#round-progress", ProgressBar).update(total=max(total, 1), progress=rated)
        self.query_one("#progress-count", Label).update(f"{rated}/{total} rated")
        self.query_one("#position", Label).update(position)
        spark = self.query_one("#reward-spark", Sparkline)
        spark.data = rewards
        spark.display = bool(rewards)
        self.query_one("#spark-label", Label).update("reward/round" if rewards else "no rewards yet")
        spark.tooltip = "Mean reward per round: " + ", ".join(f"{r:.2f}" for r in rewards)
        label = self.query_one("#queue", Label)
        label.update(queue)
        label.set_class(queue_problem, "problem")
