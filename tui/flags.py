"""Flag toggles: one key each; a set flag reads ``h [X] harmful`` (bold, reversed), an unset one ``h harmful``."""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Static

from therapy_rlhf.contracts.spec import RATING_FLAGS


def escape(text: str) -> str:
    """Make text literal inside Textual markup (textual.markup.escape leaves "[X]" alone)."""
    return text.replace("[", "\\[")


# One key per flag; a flag added to RATING_FLAGS later gets the next free key.
PREFERRED_KEYS = {
    "harmful": "h",
    "missed_crisis": "m",
    "medical_advice": "a",
    "dismissive": "d",
    "off_topic": "o",
}
SPARE_KEYS = "fgijklvwy"  # not x: "not applicable"


def flag_keys() -> dict[str, str]:
    keys: dict[str, str] = {}
    spare = iter(k for k in SPARE_KEYS if k not in PREFERRED_KEYS.values())
    for flag in RATING_FLAGS:
        keys[flag] = PREFERRED_KEYS.get(flag) or next(spare)
    return keys


FLAG_KEYS = flag_keys()


class FlagBar(Static):
    def __init__(self, **kwargs) -> None:
        super().__init__("", **kwargs)

    def show(self, flags: set[str], penalized: list[str]) -> None:
        parts = []
        for flag, key in FLAG_KEYS.items():
            word = flag.replace("_", " ")
            label = f"{key} {escape('[X]')} {word}" if flag in flags else f"{key} {word}"
            style = "b reverse" if flag in flags else ""
            part = f"[@click=screen.flag('{flag}')]{label}[/]"
            parts.append(f"[{style}]{part}[/]" if style else part)
        self.update(Content.from_markup("  ".join(parts)))
