"""Shown instead of everything else while the terminal is smaller than the layout needs."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Static


class TooSmallScreen(Screen):
    def __init__(self, width: int, height: int) -> None:
        super().__init__()
        self.need = (width, height)

    def compose(self) -> ComposeResult:
        yield Static("", id="too-small", markup=False)

    def on_mount(self) -> None:
        self._say()

    def on_resize(self) -> None:
        self._say()

    def _say(self) -> None:
        width, height = self.app.size
        self.query_one("#too-small", Static).update(
            f"The terminal is {width}x{height}. The scoring app needs at least "
            f"{self.need[0]}x{self.need[1]} (columns x rows): please enlarge the window. "
            "Nothing is lost; q quits."
        )
