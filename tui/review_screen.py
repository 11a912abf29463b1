"""After a batch is closed: where raters disagreed most, and each rater's offset to the panel.

Opened with ``r`` on a closed batch (rating screen or summary). Each response
scored by two or more raters is listed by the spread of their scores, with
every rater's criterion levels, flags, comment and notes; above them, each
rater's calibration (mean offset to the others). ``extra_columns`` (name ->
function of the response id) adds a value per response, e.g. a reward
model's prediction, shown with the raters' scores.
"""

from __future__ import annotations

from typing import Callable, Mapping

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widgets import DataTable, LoadingIndicator, Static

from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.feedback.rounds import load_round, read_gate
from therapy_rlhf.feedback.review import Disagreement, NotClosed, Review, review_round
from therapy_rlhf.contracts.spec import RunManifest
from therapy_rlhf.tui.scroll_hint import HintedScroll
from therapy_rlhf.tui.writer import plain_error

SHOWN = 20  # disagreements listed (the largest spreads)


def _snippet(text: str, width: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def legend(manifest: RunManifest) -> str:
    titles = ", ".join(c.title for c in manifest.spec.feedback.rubric)
    return f"Levels are listed in rubric order ({titles}); '-' = not applicable, '?' = not scored."


def describe_item(item: Disagreement, manifest: RunManifest, total: int) -> str:
    fb = manifest.spec.feedback
    top = fb.scale_levels - 1
    titles = {c.name: c.title for c in fb.rubric}
    lines = [
        f"Response {item.position} of {total}: scores differ by {item.spread:.2f} (on 0-1)",
        f"  Patient:  {_snippet(item.response.prompt)}",
        f"  Response: {_snippet(item.response.response)}",
    ]
    lines += [f"  {name}: {value}" for name, value in item.extra.items()]
    width = max(len(s.rating.rater) + (12 if s.simulated else 0) for s in item.scores)
    for s in sorted(item.scores, key=lambda s: -s.score):
        r = s.rating
        levels = []
        for c in fb.rubric:
            if c.name in r.not_applicable:
                levels.append("-")
            elif c.name in r.criteria:
                levels.append(str(round(r.criteria[c.name] * top)))
            else:
                levels.append("?")
        who = f"{r.rater} (simulated)" if s.simulated else r.rater
        flags = f"  flags: {', '.join(f.replace('_', ' ') for f in r.flags)}" if r.flags else ""
        lines.append(f"  {who:<{width}}  {s.score:.2f}  levels {' '.join(levels)}{flags}")
        if r.comment:
            lines += [f"      \u201c{line}\u201d" for line in r.comment.splitlines()[:4]]
        for name, note in r.notes.items():
            lines.append(f"      note on {titles.get(name, name)}: {_snippet(note, 56)}")
    return "\n".join(lines)


class ReviewScreen(ModalScreen):
    BINDINGS = [Binding("escape,q,r", "dismiss", "Close")]

    def __init__(
        self,
        paths: RunPaths,
        manifest: RunManifest,
        round_no: int,
        extra_columns: Mapping[str, Callable[[str], str]] | None = None,
    ) -> None:
        super().__init__()
        self.paths, self.manifest, self.round_no = paths, manifest, round_no
        self.extra_columns = dict(extra_columns or {})

    def compose(self) -> ComposeResult:
        with HintedScroll(id="review-box") as box:
            box.border_title = f"Batch {self.round_no} of {self.paths.namespace}/{self.paths.run}: disagreements (Esc closes)"
            yield LoadingIndicator(id="review-loading")
            table = DataTable(id="calibration", cursor_type="none")
            table.add_columns("Rater", "Shared responses", "Offset to the others")
            yield table
            yield Static("", id="review-text", markup=False)

    def on_mount(self) -> None:
        self._load()

    @work(thread=True, exclusive=True, group="review")
    def _load(self) -> None:
        store = self.app.store
        try:
            gate = read_gate(store, self.paths, self.round_no)
            state = load_round(store, self.paths, self.round_no)
            review = review_round(state, gate, self.manifest.spec.feedback, self.extra_columns)
        except NotClosed as err:
            self.app.call_from_thread(self._text, str(err))
            return
        except Exception as err:  # noqa: BLE001 - shown; nothing else is affected
            self.app.call_from_thread(self._text, f"[!] cannot read batch {self.round_no}: {plain_error(err)}")
            return
        self.app.call_from_thread(self._show, review, len(state.responses))

    def _text(self, text: str) -> None:
        self.query_one("#review-loading").display = False
        self.query_one("#calibration").display = False
        self.query_one("#review-text", Static).update(text)

    def _show(self, review: Review, total: int) -> None:
        self.query_one("#review-loading").display = False
        table = self.query_one("#calibration", DataTable)
        for c in review.calibration:
            offset = "-" if c.offset is None else f"{c.offset:+.2f}"
            table.add_row(f"{c.rater} (simulated)" if c.simulated else c.rater, str(c.shared), offset)
        if not review.disagreements:
            self._text_below("No response in this batch was scored by two or more raters.")
            return
        intro = (
            "Offset: how far a rater's scores sit above (+) or below (-) the others' on the same responses, "
            f"on 0-1. Largest disagreements first. {legend(self.manifest)}"
        )
        blocks = [describe_item(d, self.manifest, total) for d in review.disagreements[:SHOWN]]
        more = len(review.disagreements) - SHOWN
        if more > 0:
            blocks.append(f"... and {more} more with smaller differences.")
        self._text_below("\n\n".join([intro, *blocks]))

    def _text_below(self, text: str) -> None:
        self.query_one("#review-text", Static).update(text)

    def action_dismiss(self) -> None:
        self.dismiss()
