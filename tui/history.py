"""The score history: each closed batch's mean, and yours for this batch, on a fixed 0..1 scale.

Every value is printed next to its bar, and every bar is drawn on the same
fixed scale (eight heights from 0 to 1), so 0.46 next to 0.50 looks like what it
is, and a single value is not a full bar. Batch means are after safety
penalties, and so is "yours", so the values compare like with like.
"""

from __future__ import annotations

from textual.widgets import Static

from therapy_rlhf.tui.notice import set_text

BARS = "▁▂▃▄▅▆▇█"
TITLE = "Mean 0-1:"


def bar(value: float) -> str:
    """The bar for a 0..1 value on the fixed scale."""
    return BARS[min(len(BARS) - 1, max(0, round(value * (len(BARS) - 1))))]


def entries(points: list[tuple[str, float]]) -> list[str]:
    return [f"{label} {bar(v)}{v:.2f}" for label, v in points]


def fit(points: list[tuple[str, float]], width: int) -> str:
    """The title and as many of the latest points as fit in ``width`` columns."""
    if not points:
        return "no closed batch yet" if width >= 19 else ""
    parts = entries(points)
    shown: list[str] = []
    for part in reversed(parts):
        candidate = " ".join([TITLE, part, *shown])
        if len(candidate) > width and shown:
            break
        shown.insert(0, part)
    text = " ".join([TITLE, *shown])
    return text if len(text) <= width else ""


class ScoreHistory(Static):
    def __init__(self, **kwargs) -> None:
        super().__init__("", markup=False, **kwargs)
        self.points: list[tuple[str, float]] = []
        self._drawn_width = -1

    def _room(self) -> int:
        """Columns the history may take: 40% of its status line (the widget itself is sized to its text)."""
        return int(self.parent.size.width * 0.4) if self.parent else 32

    def show(self, points: list[tuple[str, float]]) -> None:
        if points == self.points and self._drawn_width == self._room():
            return
        self.points = points
        self.tooltip = "Mean score per batch (0 = worst, 1 = best): " + ", ".join(entries(points)) if points else None
        self._draw()

    def redraw(self) -> None:
        """Fit the text again (the status line changed width)."""
        if self._drawn_width != self._room():
            self._draw()

    def _draw(self) -> None:
        self._drawn_width = self._room()
        set_text(self, fit(self.points, self._drawn_width))
