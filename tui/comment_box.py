"""The comment and the per-criterion notes: a one-line preview, and a multi-line box to write in.

``c`` opens the box on the rating's comment, ``C`` on a note about the
criterion under the cursor. The box opens with the cursor after what is
already written (nothing is selected, so typing adds to it); Enter starts a
new line; Esc (or Tab) closes the box, and Enter then submits.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Label, Static, TextArea

from therapy_rlhf.tui.notice import set_text

COMMENT = ""  # the target of the whole rating's comment; a criterion name targets its note


class CommentEditor(TextArea):
    """The multi-line box; its bindings are what the footer shows while writing."""

    BINDINGS = [
        Binding("enter", "newline", "New line", key_display="⏎"),
        Binding("escape", "screen.back", "Done"),
    ]

    def action_newline(self) -> None:
        # Enter is typed by TextArea itself; this binding only labels it in the footer.
        self.insert("\n")


def first_line(text: str, more: str = "line") -> str:
    lines = text.strip().splitlines()
    if not lines:
        return ""
    extra = f"  (+{len(lines) - 1} more {more}{'s' if len(lines) > 2 else ''})" if len(lines) > 1 else ""
    return lines[0] + extra


class CommentBox(Vertical):
    class Edited(Message):
        """The text being written changed."""

        def __init__(self, target: str, text: str) -> None:
            super().__init__()
            self.target, self.text = target, text

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.target: str | None = None  # what the open box edits; None when closed

    def compose(self) -> ComposeResult:
        with Horizontal(id="comment-row"):
            yield Label("Comment (c):", id="comment-label")
            yield Static("", id="comment-preview", markup=False)
        yield CommentEditor("", id="editor", soft_wrap=True, tab_behavior="focus", show_line_numbers=False)

    def on_mount(self) -> None:
        self.query_one("#editor", TextArea).display = False

    @property
    def editing(self) -> bool:
        return self.target is not None

    def show(self, comment: str, notes: dict[str, str], titles: dict[str, str]) -> None:
        """The preview line: the comment's first line, and which criteria carry a note."""
        if self.editing:
            return
        text = first_line(comment) or "optional: press c to write (as many lines as you like)"
        noted = [titles.get(k, k) for k, v in notes.items() if v.strip()]
        if noted:
            text += f"   Notes on: {', '.join(noted)}"
        set_text(self.query_one("#comment-label", Label), "Comment (c):")
        set_text(self.query_one("#comment-preview", Static), text)
        self.set_class(not comment.strip(), "empty")

    def edit(self, target: str, text: str, label: str) -> TextArea:
        """Open the box on ``text``, cursor at its end; returns the editor to focus."""
        self.target = target
        set_text(self.query_one("#comment-label", Label), label)
        set_text(self.query_one("#comment-preview", Static), "Enter: new line   Esc: done")
        editor = self.query_one("#editor", TextArea)
        with editor.prevent(TextArea.Changed):
            editor.load_text(text)
        editor.move_cursor(editor.document.end)
        editor.display = True
        return editor

    def close(self) -> None:
        self.target = None
        self.query_one("#editor", TextArea).display = False

    def on_text_area_changed(self, event: TextArea.Changed) -> None:
        event.stop()
        if self.target is not None:
            self.post_message(self.Edited(self.target, event.text_area.text))
