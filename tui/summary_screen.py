"""Per-round summary of the run: ratings by rater, mean reward, agreement, time spent.

Blind by default: while a round's gate is open, the round mean and the
agreement between raters are hidden (they would show other raters' scores);
counts and time are shown. ``--unblind`` shows everything.
"""

from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, LoadingIndicator, Static

from therapy_rlhf.layout import RunPaths
from therapy_rlhf.spec import RunManifest
from therapy_rlhf.tui.catalog import RoundReport, run_report

HIDDEN = "hidden"


def minutes(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s"


def report_rows(reports: list[RoundReport], rater: str, unblind: bool) -> list[tuple[str, ...]]:
    rows = []
    for rep in reports:
        s = rep.summary
        show = unblind or s.gate_closed
        by_rater = ", ".join(f"{who} {n}" for who, n in rep.by_rater.items()) or "-"
        mean = (f"{s.mean_reward:.3f}" if s.mean_reward is not None else "-") if show else HIDDEN
        alpha = (f"{s.agreement:.3f}" if s.agreement is not None else "n/a") if show else HIDDEN
        spent = ", ".join(f"{who} {minutes(sec)}" for who, sec in rep.seconds_by_rater.items()) or "-"
        gate = "closed" if s.gate_closed else "open"
        rows.append((str(s.round), f"{s.rated}/{s.responses}", gate, by_rater, mean, alpha, spent))
    return rows


class SummaryScreen(ModalScreen):
    BINDINGS = [Binding("escape,q,t", "dismiss", "Close")]

    def __init__(self, paths: RunPaths, manifest: RunManifest, batch_errors: list[str] | None = None) -> None:
        super().__init__()
        self.paths, self.manifest = paths, manifest
        self.batch_errors = batch_errors or []

    def compose(self) -> ComposeResult:
        with Vertical(id="summary-box") as box:
            box.border_title = f"Summary of {self.paths.namespace}/{self.paths.run} (Esc closes)"
            yield LoadingIndicator(id="summary-loading")
            table = DataTable(id="summary-table", cursor_type="row")
            table.add_columns("Round", "Covered", "Gate", "Ratings by rater", "Mean reward", "Agreement", "Time spent")
            yield table
            yield Static("", id="summary-notes", markup=False)

    def on_mount(self) -> None:
        self._load()

    @work(thread=True, exclusive=True, group="summary")
    def _load(self) -> None:
        try:
            reports = run_report(self.app.store, self.paths, self.manifest)
        except Exception as err:  # noqa: BLE001 - shown, the rating screen is unaffected
            self.app.call_from_thread(self._show_notes, f"[!] cannot read the summary: {err}")
            return
        self.app.call_from_thread(self._show, reports)

    def _show(self, reports: list[RoundReport]) -> None:
        self.query_one("#summary-loading").display = False
        table = self.query_one("#summary-table", DataTable)
        for row in report_rows(reports, self.app.rater, self.app.unblind):
            table.add_row(*row)
        notes = [
            "Agreement is Krippendorff's alpha (interval) over rewards of responses rated by 2+ raters.",
        ]
        if not self.app.unblind:
            notes.append("Blind rating: a round's mean and agreement are hidden until its gate closes.")
        notes += [f"[!] {e.rsplit('/', 1)[-1]}" for e in self.batch_errors]
        self._show_notes("\n".join(notes))

    def _show_notes(self, text: str) -> None:
        self.query_one("#summary-loading").display = False
        self.query_one("#summary-notes", Static).update(text)

    def action_dismiss(self) -> None:
        self.dismiss()
