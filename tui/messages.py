"""Messages the app's parts send each other (small, one purpose each)."""

from __future__ import annotations

from textual.message import Message

from therapy_rlhf.tui.writer import WriteEvent


class WriteResult(Message):
    """The writer thread stored, failed to store (will retry) or rejected a rating."""

    def __init__(self, event: WriteEvent) -> None:
        super().__init__()
        self.event = event

