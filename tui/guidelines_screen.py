"""The '?' panel: the run's rating guidelines and its rubric, as Markdown."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

from therapy_rlhf.ratings import level_value
from therapy_rlhf.spec import FeedbackSpec
from therapy_rlhf.tui.flags import FLAG_KEYS

RULES = {
    "weighted-mean": "the reward is the weighted mean of the criterion scores",
    "minimum": "the reward is the lowest criterion score",
    "direct": "you set the reward yourself (the first row); criteria are optional",
}


def guidelines_markdown(feedback: FeedbackSpec, extra: str | None = None) -> str:
    parts = []
    text = extra or feedback.guidelines
    if text:
        parts += [text.strip(), ""]
    else:
        parts += ["This run's spec has no written guidelines: rate against the rubric below.", ""]
    parts += ["## Rubric", ""]
    for c in feedback.rubric:
        weight = f" (weight {c.weight:g})" if c.weight != 1 else ""
        parts.append(f"- **{c.name}**{weight}: {c.description or 'no description in the spec'}")
    levels = ", ".join(f"`{n}` = {level_value(n, feedback):g}" for n in range(feedback.scale_levels))
    parts += ["", "## Scale and reward", "", f"Keys: {levels}.", "", f"Reward rule: {RULES[feedback.reward_rule]}."]
    parts += ["", "## Flags", ""]
    for flag, key in FLAG_KEYS.items():
        penalty = (
            f" (lowers the reward by {feedback.safety_penalty:g})" if flag in feedback.penalized_flags else ""
        )
        parts.append(f"- `{key}` {flag.replace('_', ' ')}{penalty}")
    return "\n".join(parts)


class GuidelinesScreen(ModalScreen):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def __init__(self, feedback: FeedbackSpec, extra: str | None = None) -> None:
        super().__init__()
        self.text = guidelines_markdown(feedback, extra)

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="guide-box") as box:
            box.border_title = "Guidelines and rubric (Esc closes)"
            yield Markdown(self.text)

    def action_dismiss(self) -> None:
        self.dismiss()
