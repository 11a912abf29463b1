"""A scrolling panel that says when there is more to read (in its bottom border).

On a small terminal (80x24 over SSH) a long panel cannot fit; a scrollbar
alone is easy to miss, so the border says "more below: PgDn / arrows" until
the end is reached.
"""

from __future__ import annotations

from textual.containers import VerticalScroll


class HintedScroll(VerticalScroll):
    BINDINGS = [("j", "scroll_down", "Down"), ("k", "scroll_up", "Up")]

    def on_mount(self) -> None:
        self.call_after_refresh(self.update_hint)

    def on_resize(self) -> None:
        self.call_after_refresh(self.update_hint)

    def watch_virtual_size(self) -> None:
        # Content that arrives after mount (a worker's rows) changes what is scrollable without a
        # resize of the panel itself; read the new extent once it is laid out.
        self.call_after_refresh(self.update_hint)

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        self.update_hint()

    def update_hint(self) -> None:
        below = self.max_scroll_y - self.scroll_y > 0.5
        above = self.scroll_y > 0.5
        if below:
            self.border_subtitle = "more below: PgDn or arrows"
        elif above:
            self.border_subtitle = "end (PgUp for the top)"
        else:
            self.border_subtitle = None
