"""One line for messages on the rating screen, in the layout (never over the form).

Short messages clear themselves after a few seconds or at the next one; a
held message (a saving problem) stays until it is resolved.
"""

from __future__ import annotations

from textual.timer import Timer
from textual.widgets import Static


class NoticeLine(Static):
    def __init__(self, **kwargs) -> None:
        super().__init__("", markup=False, **kwargs)
        self._timer: Timer | None = None
        self._held: str | None = None
        self._said: str | None = None
        self.display = False

    def say(self, text: str, severity: str = "information", seconds: float = 6.0) -> None:
        """Show a message for a few seconds."""
        if self._timer is not None:
            self._timer.stop()
        self._said = text
        self._draw(severity)
        self._timer = self.set_timer(seconds, self._expire)

    def clear(self) -> None:
        """Drop the short message now (it was about a response no longer on screen); a held one stays."""
        if self._said is not None:
            if self._timer is not None:
                self._timer.stop()
            self._expire()

    def hold(self, text: str | None) -> None:
        """Show (or with None, drop) a message that stays until it is resolved (below any short one)."""
        if text == self._held:
            return
        self._held = text
        self._draw("error" if text else "information")

    @property
    def text(self) -> str:
        return "\n".join(t for t in (self._said, self._held) if t)

    def _expire(self) -> None:
        self._said = None
        self._timer = None
        self._draw("error" if self._held else "information")

    def _draw(self, severity: str) -> None:
        text = self.text
        set_text(self, text)
        if self.display != bool(text):
            self.display = bool(text)
        for name in ("information", "warning", "error"):
            self.set_class(name == severity and bool(text), f"-{name}")


def set_text(widget: Static, text: str) -> None:
    """Update a Static only when its text changes (an update of an auto-sized widget relayouts the screen)."""
    if getattr(widget, "_shown_text", None) != text:
        widget._shown_text = text  # type: ignore[attr-defined]
        widget.update(text)
