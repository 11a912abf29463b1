"""The rating screen's keys: a digit scores the current criterion, Enter submits (see ``rate_screen``)."""

from __future__ import annotations

from textual.binding import Binding

from therapy_rlhf.tui.flags import FLAG_KEYS

MAX_LEVELS = 10


def _digit_bindings() -> list[Binding]:
    return [Binding(str(d), f"score({d})", "Score", key_display="0-9", show=d == 0) for d in range(MAX_LEVELS)]


def _flag_bindings() -> list[Binding]:
    return [
        Binding(key, f"flag('{flag}')", f"Flag {flag.replace('_', ' ')}", show=False) for flag, key in FLAG_KEYS.items()
    ]


RATE_KEYS = [
    *_digit_bindings(),
    Binding("enter", "submit", "Submit"),
    Binding("x", "not_applicable", "N/A"),
    Binding("up,k", "row(-1)", "Previous / next criterion", show=False),
    Binding("down,j", "row(1)", "Previous / next criterion", show=False),
    Binding("left", "adjust(-1)", "Lower / raise the score", show=False),
    Binding("right", "adjust(1)", "Lower / raise the score", show=False),
    *_flag_bindings(),
    Binding("c", "comment", "Comment"),
    Binding("C", "note", "Note on this criterion", show=False),
    Binding("z", "undo", "Undo"),
    Binding("s", "skip", "Skip"),
    Binding("n", "move(1)", "Next / previous response", show=False),
    Binding("p", "move(-1)", "Next / previous response", show=False),
    Binding("u", "unrated", "Next response that needs your score", show=False),
    Binding("pagedown", "scroll_response(1)", "Scroll the response", show=False),
    Binding("pageup", "scroll_response(-1)", "Scroll the response", show=False),
    Binding("question_mark", "guidelines", "Guide", key_display="?"),
    Binding("t", "summary", "Summary", show=False),
    Binding("r", "review", "Review disagreements (closed batches)", show=False),
    Binding("ctrl+r", "reload", "Refresh from the store now", show=False),
    Binding("escape", "back", "Close the comment box / back to the list", show=False),
]
