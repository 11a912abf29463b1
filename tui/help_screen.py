"""Every key of the screen underneath and of the app, read from their BINDINGS tables
(so the help can never drift from what the keys do)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

KEY_NAMES = {"question_mark": "?", "escape": "Esc", "enter": "Enter", "pagedown": "PgDn", "pageup": "PgUp"}
# Longer words for the help screen than the footer has room for.
LONG = {
    "Submit": "Submit the rating (stored at once, then the next unrated response)",
    "Comment": "Write a comment (Enter submits, Esc leaves the field)",
    "Undo": "Undo your last rating (stored as a withdrawal; nothing is deleted)",
    "Skip": "Skip this response (it comes back after the others)",
    "Guide": "Guidelines and rubric",
    "Keys": "This list of keys",
    "Quit": "Quit (asks first if anything is unsaved)",
    "Rate": "Rate the chosen round",
    "Reload": "Look in the store again",
}
EXTRA = [
    ("mouse", "Click a level to score it, a flag to toggle it, a criterion to select it; wheel scrolls"),
]


def _key(name: str) -> str:
    return KEY_NAMES.get(name, name)


def describe(bindings: list) -> list[tuple[str, str]]:
    """(keys, description) rows; bindings sharing a description share a row."""
    rows: dict[str, list[str]] = {}
    for b in bindings:
        if not isinstance(b, Binding) or not b.description:
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
        with VerticalScroll(id="help-box") as box:
            box.border_title = "Keys (Esc closes)"
            yield Static(text, markup=False, id="help-text")

    def action_dismiss(self) -> None:
        self.dismiss()
