"""Every key of the screen underneath and of the app, read from their BINDINGS tables
(so the help can never drift from what the keys do). Laid out to fit 80x24; it
scrolls, and says so, where it cannot."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widgets import Static

from therapy_rlhf.tui.scroll_hint import HintedScroll

KEY_NAMES = {
    "question_mark": "?", "escape": "Esc", "enter": "Enter", "pagedown": "PgDn", "pageup": "PgUp",
    "up": "↑", "down": "↓", "left": "←", "right": "→",
}
# Longer words for the help screen than the footer has room for.
LONG = {
    "Submit": "Submit your scores (saved at once; then the next response)",
    "N/A": "Not applicable: leave this criterion out for this response",
    "Comment": "Write a comment (Enter: new line, Esc: done)",
    "Undo": "Take back your last score (kept in the history)",
    "Skip": "Skip this response (it comes back after the others)",
    "Guide": "Guidelines: what each level of each criterion means",
    "Keys": "This list of keys",
    "Quit": "Quit (tells you first if anything is not saved yet)",
    "Rate": "Score the chosen batch",
    "Look again": "Look in the store again now",
}
EXTRA = [
    ("mouse", "Click a level, n/a, a flag or a criterion; the wheel scrolls"),
]
# Flags share one row: "h m a d o  Flag harmful, missed crisis, ...".
FLAG_PREFIX = "Flag "


def _key(name: str) -> str:
    return KEY_NAMES.get(name, name)


def describe(bindings: list) -> list[tuple[str, str]]:
    """(keys, description) rows; bindings sharing a description share a row, flags share one row."""
    rows: dict[str, list[str]] = {}
    flags: list[tuple[str, str]] = []
    for b in bindings:
        if not isinstance(b, Binding) or not b.description:
            continue
        if b.description.startswith(FLAG_PREFIX):
            flags.append((_key(b.key), b.description.removeprefix(FLAG_PREFIX)))
            continue
        keys = rows.setdefault(b.description, [])
        for k in b.key.split(","):
            if _key(k) not in keys:
                keys.append(_key(k))
    out = []
    for desc, keys in rows.items():
        if desc == "Score":
            out.append(("0-9", "Score the current criterion, then move to the next"))
        else:
            out.append((" ".join(keys), LONG.get(desc, desc)))
    if flags:
        out.append((" ".join(k for k, _ in flags), "Flag: " + ", ".join(f for _, f in flags)))
    return out


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,q,f1,H", "dismiss", "Close")]

    def __init__(self, under: object) -> None:
        super().__init__()
        self.under = under

    def compose(self) -> ComposeResult:
        under = self.under
        rows = describe(list(getattr(under, "BINDINGS", []))) + describe(list(self.app.BINDINGS)) + EXTRA
        width = max(len(k) for k, _ in rows) + 2
        text = "\n".join(f"{k:<{width}}{d}" for k, d in rows)
        with HintedScroll(id="help-box") as box:
            box.border_title = "Keys (Esc closes)"
            yield Static(text, markup=False, id="help-text")

    def action_dismiss(self) -> None:
        self.dismiss()
