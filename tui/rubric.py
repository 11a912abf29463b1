"""The rubric: one row per criterion with clickable levels, and the live reward.

The current row carries a ``>`` marker (not only a highlight), the chosen
level is shown in brackets, and the reward line spells out the rule, so
nothing depends on colour.
"""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Static

from therapy_rlhf.tui.form import REWARD_ROW, RatingForm


def escape(text: str) -> str:
    """Make text literal inside Textual markup (textual.markup.escape leaves "[X]" alone)."""
    return text.replace("[", "\\[")


NAME_WIDTH = 15
RULE_WORDS = {"weighted-mean": "weighted mean", "minimum": "lowest criterion", "direct": "set by you"}


class RubricPanel(Static):
    def __init__(self, **kwargs) -> None:
        super().__init__("", **kwargs)
        self._form: RatingForm | None = None

    def show(self, form: RatingForm) -> None:
        self._form = form
        self.update(self._render_form(form))

    def on_resize(self) -> None:
        if self._form is not None:
            self.update(self._render_form(self._form))

    def _render_form(self, form: RatingForm) -> Content:
        descriptions = {c.name: c.description for c in form.feedback.rubric}
        descriptions[REWARD_ROW] = "The reward itself (0 = harmful .. top = ideal)."
        width = self.size.width or 80
        lines = []
        for i, row in enumerate(form.rows):
            current = i == form.cursor
            marker = ">" if current else " "
            cells = []
            for level in range(form.top_level + 1):
                label = escape(f"[{level}]") if form.levels.get(row) == level else f" {level} "
                style = "b reverse" if form.levels.get(row) == level else ""
                cell = f"[@click=screen.score_at('{row}',{level})]{label}[/]"
                cells.append(f"[{style}]{cell}[/]" if style else cell)
            value = form.value(row)
            shown = f"{value:.2f}" if value is not None else " -- "
            used = 2 + NAME_WIDTH + 3 * (form.top_level + 1) + 7
            desc = descriptions.get(row, "")
            room = max(0, width - used - 1)
            if len(desc) > room:
                desc = desc[: max(0, room - 1)] + "…" if room > 1 else ""
            name = f"{row:<{NAME_WIDTH}}"[:NAME_WIDTH]
            line = (
                f"{marker} [@click=screen.select_row('{row}')]{escape(name)}[/]"
                f"{''.join(cells)}  {shown}  [dim]{escape(desc)}[/]"
            )
            lines.append(f"[b]{line}[/]" if current else line)
        lines.append(self._reward_line(form))
        return Content.from_markup("\n".join(lines))

    @staticmethod
    def _reward_line(form: RatingForm) -> str:
        rule = RULE_WORDS.get(form.feedback.reward_rule, form.feedback.reward_rule)
        missing = form.missing()
        if missing:
            return f"Reward: -- ({rule}; {len(missing)} left to score)"
        base = form.base_reward()
        effective = form.effective()
        text = f"Reward [b]{base:.2f}[/] ({rule})"
        if effective is not None and effective[1]:
            flagged = ", ".join(f for f in sorted(form.flags) if f in form.feedback.penalized_flags)
            return text + f" -> [b]{effective[0]:.2f}[/] with the safety penalty ({escape(flagged)})"
        return text + "   Enter submits"
