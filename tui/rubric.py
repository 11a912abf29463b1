"""The rubric: one row per criterion with clickable levels, and the combined score.

The current row carries a ``>`` marker (not only a highlight), the chosen
level is shown in brackets and described in words (what the level means for
this criterion), "not applicable" reads ``[n/a]``, and the combined score
line says how it is made, on the rater's own 0..top scale: nothing depends on
colour, and nobody reads 0.25 steps.
"""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Static

from therapy_rlhf.contracts.rubric_levels import Level, level_descriptions
from therapy_rlhf.tui.form import REWARD_ROW, RatingForm


def escape(text: str) -> str:
    """Make text literal inside Textual markup (textual.markup.escape leaves "[X]" alone)."""
    return text.replace("[", "\\[")


NAME_WIDTH = 15
NOTE_MARK = "✎"


def rule_words(form: RatingForm) -> str:
    rule = form.feedback.reward_rule
    if rule == "minimum":
        return "the lowest criterion"
    if rule == "direct":
        return "your overall score"
    weights = {c.weight for c in form.feedback.rubric}
    return "weighted average" if len(weights) > 1 else "average"


class RubricPanel(Static):
    def __init__(self, **kwargs) -> None:
        super().__init__("", **kwargs)
        self._form: RatingForm | None = None
        self._levels: dict[str, list[Level]] = {}

    def show(self, form: RatingForm) -> None:
        if self._form is None or self._form.feedback is not form.feedback:
            self._levels = {c.name: level_descriptions(c, form.feedback.scale_levels) for c in form.feedback.rubric}
        self._form = form
        self.update(self._render_form(form))

    def on_resize(self) -> None:
        if self._form is not None:
            self.update(self._render_form(self._form))

    def _describe(self, form: RatingForm, row: str) -> str:
        descriptions = {c.name: c.description for c in form.feedback.rubric}
        descriptions[REWARD_ROW] = "Your overall score for this response (0 = harmful .. top = ideal)."
        if row in form.not_applicable:
            return "Not applicable to this response (left out of the combined score)"
        level = form.levels.get(row)
        if level is not None and row in self._levels:
            return self._levels[row][level].text
        return descriptions.get(row, "")

    def _render_form(self, form: RatingForm) -> Content:
        width = self.size.width or 80
        lines = []
        for i, row in enumerate(form.rows):
            current = i == form.cursor
            marker = ">" if current else " "
            cells = []
            for level in range(form.top_level + 1):
                chosen = form.levels.get(row) == level
                label = escape(f"[{level}]") if chosen else f" {level} "
                cell = f"[@click=screen.score_at('{row}',{level})]{label}[/]"
                cells.append(f"[b reverse]{cell}[/]" if chosen else cell)
            if row != REWARD_ROW and form.allows_not_applicable(row):
                na = row in form.not_applicable
                label = escape("[n/a]") if na else " n/a "
                cell = f"[@click=screen.not_applicable_at('{row}')]{label}[/]"
                cells.append(f"[b reverse]{cell}[/]" if na else cell)
            else:
                cells.append("     ")
            note = NOTE_MARK if form.notes.get(row, "").strip() else " "
            used = 2 + NAME_WIDTH + 3 * (form.top_level + 1) + 5 + 3
            desc = self._describe(form, row)
            room = max(0, width - used - 1)
            if len(desc) > room:
                desc = desc[: max(0, room - 1)] + "…" if room > 1 else ""
            name = f"{form.title(row):<{NAME_WIDTH}}"[:NAME_WIDTH]
            line = (
                f"{marker} [@click=screen.select_row('{row}')]{escape(name)}[/]"
                f"{''.join(cells)}{note}  [dim]{escape(desc)}[/]"
            )
            lines.append(f"[b]{line}[/]" if current else line)
        lines.append(self._combined_line(form))
        return Content.from_markup("\n".join(lines))

    @staticmethod
    def _combined_line(form: RatingForm) -> str:
        top = form.top_level
        how = rule_words(form)
        skipped = len(form.not_applicable)
        if skipped:
            how += f"; {skipped} not applicable"
        missing = form.missing()
        if missing:
            return f"Combined score: -- ({len(missing)} left to score)"
        base = form.base_reward()
        if base is None:
            return "Combined score: -- (every criterion is marked not applicable: score at least one)"
        effective = form.effective()
        text = f"Combined score [b]{base * top:.1f} of {top}[/] ({how})"
        if effective is not None and effective[1]:
            return text + f" -> [b]{effective[0] * top:.1f}[/] after the safety flag"
        return text + "   Enter submits"
