"""The patient's words (with earlier turns) and the model's response.

Stacked on narrow terminals, side by side when there is room; each pane
scrolls on its own (mouse wheel, or PageUp/PageDown for the response).
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Container, VerticalScroll
from textual.widgets import Static

from therapy_rlhf.contracts.records import PendingResponse

# Terminal width from which the two panes sit side by side.
SIDE_BY_SIDE_WIDTH = 110


class TextPane(VerticalScroll, can_focus=False):
    def compose(self) -> ComposeResult:
        yield Static("", markup=False, classes="pane-text")

    def show(self, text: str) -> None:
        self.query_one(".pane-text", Static).update(text)
        self.scroll_home(animate=False)


class Dialogue(Container):
    def compose(self) -> ComposeResult:
        patient = TextPane(id="patient")
        patient.border_title = "Patient"
        response = TextPane(id="response")
        response.border_title = "Model response"
        yield patient
        yield response

    def show(self, item: PendingResponse) -> None:
        turns = []
        for turn in item.context:
            who = "Patient" if turn.get("role") == "user" else "Therapist"
            turns.append(f"{who}: {turn.get('content', '')}")
        if turns:
            turns.append("")
            turns.append(f"Patient (now): {item.prompt}")
        self.query_one("#patient", TextPane).show("\n".join(turns) if turns else item.prompt)
        self.query_one("#response", TextPane).show(item.response)

    def fit(self, width: int) -> None:
        self.set_class(width >= SIDE_BY_SIDE_WIDTH, "wide")

    def scroll_response(self, pages: int) -> None:
        pane = self.query_one("#response", TextPane)
        if pages > 0:
            pane.scroll_page_down(animate=False)
        else:
            pane.scroll_page_up(animate=False)
