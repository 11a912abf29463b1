"""The run at a glance: each batch's progress, mean score and agreement; each rater's share and time.

Blind by default: while a batch is open, its mean score and the agreement
between raters are hidden (they would show other raters' scores); counts and
time are shown. ``--unblind`` shows everything. Two narrow tables instead of
one wide one, so nothing is cut at 80 columns. Enter (or r) on a closed batch
opens its disagreement review.
"""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widgets import DataTable, LoadingIndicator, Static

from therapy_rlhf.contracts.layout import RunPaths
from therapy_rlhf.feedback.gate import AGREEMENT_MIN_OVERLAP
from therapy_rlhf.contracts.spec import RunManifest
from therapy_rlhf.tui.catalog import RoundReport, run_report
from therapy_rlhf.tui.scroll_hint import HintedScroll
from therapy_rlhf.tui.writer import plain_error

HIDDEN = "hidden"


def minutes(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s"


def agreement_text(rep: RoundReport) -> str:
    s = rep.summary
    if s.agreement is not None:
        return f"{s.agreement:.2f}"
    if len(rep.by_rater) < 2:
        return "one rater"
    return f"too few shared ({rep.shared} of {AGREEMENT_MIN_OVERLAP})"


def report_rows(reports: list[RoundReport], rater: str, unblind: bool) -> list[tuple[str, ...]]:
    """Batch | Fully scored | Status | Mean score (0-1) | Agreement."""
    rows = []
    for rep in reports:
        s = rep.summary
        show = unblind or s.gate_closed
        mean = (f"{s.mean_reward:.2f}" if s.mean_reward is not None else "-") if show else HIDDEN
        alpha = agreement_text(rep) if show else HIDDEN
        status = "closed" if s.gate_closed else "open"
        rows.append((str(s.round), f"{s.rated} of {s.responses}", status, mean, alpha))
    return rows


def rater_rows(reports: list[RoundReport]) -> list[tuple[str, ...]]:
    """Rater | Scores given (whole run) | Time spent, simulated raters marked."""
    counts: dict[str, int] = {}
    seconds: dict[str, float] = {}
    simulated: set[str] = set()
    for rep in reports:
        for who, n in rep.by_rater.items():
            counts[who] = counts.get(who, 0) + n
        for who, sec in rep.seconds_by_rater.items():
            seconds[who] = seconds.get(who, 0.0) + sec
        simulated.update(rep.simulated)
    return [
        (f"{who} (simulated)" if who in simulated else who, str(counts.get(who, 0)), minutes(seconds.get(who, 0.0)))
        for who in sorted(set(counts) | set(seconds))
    ]


class SummaryScreen(ModalScreen):
    AUTO_FOCUS = "#summary-table"  # up/down choose a batch, Enter reviews it
    BINDINGS = [
        Binding("escape,q,t", "dismiss", "Close"),
        Binding("r", "review", "Review the chosen closed batch"),
    ]

    def __init__(self, paths: RunPaths, manifest: RunManifest, batch_errors: list[str] | None = None) -> None:
        super().__init__()
        self.paths, self.manifest = paths, manifest
        self.batch_errors = batch_errors or []
        self.reports: list[RoundReport] = []

    def compose(self) -> ComposeResult:
        with HintedScroll(id="summary-box") as box:
            box.border_title = f"Summary of {self.paths.namespace}/{self.paths.run} (Esc closes)"
            yield LoadingIndicator(id="summary-loading")
            batches = DataTable(id="summary-table", cursor_type="row")
            batches.add_columns("Batch", "Fully scored", "Status", "Mean score", "Agreement")
            yield batches
            raters = DataTable(id="rater-table", cursor_type="none")
            raters.add_columns("Rater", "Scores", "Time spent")
            yield raters
            yield Static("", id="summary-notes", markup=False)

    def on_mount(self) -> None:
        self._load()

    @work(thread=True, exclusive=True, group="summary")
    def _load(self) -> None:
        try:
            reports = run_report(self.app.store, self.paths, self.manifest)
        except Exception as err:  # noqa: BLE001 - shown, the rating screen is unaffected
            self.app.call_from_thread(self._show_notes, f"[!] cannot read the summary: {plain_error(err)}")
            return
        self.app.call_from_thread(self._show, reports)

    def _show(self, reports: list[RoundReport]) -> None:
        self.reports = reports
        self.query_one("#summary-loading").display = False
        table = self.query_one("#summary-table", DataTable)
        for row in report_rows(reports, self.app.rater, self.app.unblind):
            table.add_row(*row)
        raters = self.query_one("#rater-table", DataTable)
        for row in rater_rows(reports):
            raters.add_row(*row)
        notes = [
            f"Mean score: 0 (worst) to 1 (best), after safety flags. Agreement between raters: 1 = full, "
            f"0 = no better than chance; needs {AGREEMENT_MIN_OVERLAP}+ responses scored by two or more raters.",
        ]
        if not self.app.unblind:
            notes.append("You score blind: a batch's mean and agreement appear once it is closed.")
        if any(r.summary.gate_closed for r in reports):
            notes.append("Enter or r on a closed batch: review where raters disagreed.")
        notes += [f"[!] {e.rsplit('/', 1)[-1]}" for e in self.batch_errors]
        self._show_notes("\n".join(notes))

    def _show_notes(self, text: str) -> None:
        self.query_one("#summary-loading").display = False
        self.query_one("#summary-notes", Static).update(text)

    @on(DataTable.RowSelected, "#summary-table")
    def _chosen(self) -> None:
        self.action_review()

    def action_review(self) -> None:
        table = self.query_one("#summary-table", DataTable)
        if not self.reports or table.cursor_row is None or table.cursor_row >= len(self.reports):
            return
        rep = self.reports[table.cursor_row]
        if not rep.summary.gate_closed:
            self.query_one("#summary-notes", Static).update(
                f"Batch {rep.summary.round} is still open: its disagreements are shown once it is closed."
            )
            return
        from therapy_rlhf.tui.review_screen import ReviewScreen

        self.app.push_screen(ReviewScreen(self.paths, self.manifest, rep.summary.round))

    def action_dismiss(self) -> None:
        self.dismiss()
