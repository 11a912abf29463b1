"""The '?' panel: the run's guidelines, then what each level of each criterion means.

Level descriptions come from the spec (``feedback.rubric[].levels``) or the
project's defaults (``therapy_rlhf.contracts.rubric_levels``). The panel scrolls, and
says so in its border, where it does not fit.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widgets import Markdown

from therapy_rlhf.contracts.rubric_levels import level_descriptions
from therapy_rlhf.contracts.spec import FeedbackSpec
from therapy_rlhf.tui.flags import FLAG_KEYS
from therapy_rlhf.tui.scroll_hint import HintedScroll


def how_scores_combine(feedback: FeedbackSpec) -> str:
    top = feedback.scale_levels - 1
    if feedback.reward_rule == "direct":
        return f"You give one overall score from 0 to {top} (the first row); the criteria are optional."
    if feedback.reward_rule == "minimum":
        how = "The combined score is your lowest criterion score"
    elif len({c.weight for c in feedback.rubric}) > 1:
        how = "The combined score is the weighted average of your criterion scores (weights below)"
    else:
        how = "The combined score is the average of your criterion scores"
    return how + "; a criterion marked not applicable (`x`) is left out of it."


def guidelines_markdown(feedback: FeedbackSpec, extra: str | None = None) -> str:
    top = feedback.scale_levels - 1
    parts = []
    text = extra or feedback.guidelines
    if text:
        parts += [text.strip(), ""]
    else:
        parts += ["This run has no written guidelines of its own: score against the criteria below.", ""]
    parts += [
        "## Criteria and their levels",
        "",
        f"Each criterion is scored from `0` (worst) to `{top}` (best). {how_scores_combine(feedback)}",
        "",
    ]
    for c in feedback.rubric:
        weight = f" (weight {c.weight:g})" if c.weight != 1 else ""
        na = "" if c.allow_not_applicable else " Always applies."
        parts.append(f"### {c.title}{weight}")
        parts.append("")
        if c.description:
            parts += [f"{c.description}{na}", ""]
        elif na:
            parts += [na.strip(), ""]
        for level in level_descriptions(c, feedback.scale_levels):
            parts.append(f"- `{level.number}` {level.text}")
        parts.append("")
    parts += ["## Flags", ""]
    for flag, key in FLAG_KEYS.items():
        penalty = (
            f": lowers the combined score by {feedback.safety_penalty * top:g} of {top}"
            if flag in feedback.penalized_flags
            else ""
        )
        parts.append(f"- `{key}` {flag.replace('_', ' ')}{penalty}")
    return "\n".join(parts)


class GuidelinesScreen(ModalScreen):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def __init__(self, feedback: FeedbackSpec, extra: str | None = None) -> None:
        super().__init__()
        self.text = guidelines_markdown(feedback, extra)

    def compose(self) -> ComposeResult:
        with HintedScroll(id="guide-box") as box:
            box.border_title = "Guidelines (Esc closes)"
            yield Markdown(self.text)

    def action_dismiss(self) -> None:
        self.dismiss()
