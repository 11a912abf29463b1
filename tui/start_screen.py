"""The start screen: open rounds in the store, with this rater's progress."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, LoadingIndicator, Static

from therapy_rlhf.tui.catalog import WorkError, WorkItem, WorkList, age, find_work


class StartScreen(Screen):
    AUTO_FOCUS = "#runs"
    BINDINGS = [
        Binding("enter", "open", "Rate"),
        Binding("r", "reload", "Reload"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.items: list[WorkItem] = []

    def compose(self) -> ComposeResult:
        yield Static("", id="start-title", markup=False)
        yield LoadingIndicator(id="start-loading")
        yield Static("", id="start-message", markup=False)
        table = DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        table.add_columns("Run", "Round", "Yours", "Covered", "Waiting", "Note")
        yield table
        yield Static("", id="start-problems", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#start-title", Static).update(
            f"Rounds waiting for rater {self.app.rater} in {self.app.store.uri}"
        )
        self.reload()

    def action_reload(self) -> None:
        self.reload()

    def reload(self) -> None:
        self.query_one("#start-loading").display = True
        self.query_one("#start-message").display = False
        self._load()

    @work(thread=True, exclusive=True, group="find-work")
    def _load(self) -> None:
        try:
            found = find_work(self.app.store, self.app.rater)
        except WorkError as err:
            self.app.call_from_thread(self._failed, str(err))
            return
        except Exception as err:  # noqa: BLE001 - a garbage object must not crash the app
            self.app.call_from_thread(self._failed, f"unexpected problem reading {self.app.store.uri}: {err}")
            return
        self.app.call_from_thread(self._show, found)

    def _failed(self, text: str) -> None:
        self.query_one("#start-loading").display = False
        self.query_one("#runs").display = False
        message = self.query_one("#start-message", Static)
        message.update(f"[!] {text}\n\nCheck the store URI and credentials, then press r to retry (q quits).")
        message.add_class("problem")
        message.display = True

    def _show(self, found: WorkList) -> None:
        self.items = found.items
        self.query_one("#start-loading").display = False
        table = self.query_one("#runs", DataTable)
        table.display = True
        table.clear()
        now = self.app.clock()
        for item in found.items:
            if item.problem:
                note = "not allowed for you"
            elif item.mine >= item.total:
                note = "done by you"
            else:
                note = f"{item.total - item.mine} to rate"
            table.add_row(
                item.run,
                str(item.round),
                f"{item.mine}/{item.total}",
                f"{item.covered}/{item.total}",
                age(item.waiting_since, now),
                note,
            )
        message = self.query_one("#start-message", Static)
        message.remove_class("problem")
        waiting = [i for i in found.items if not i.problem and i.mine < i.total]
        if not found.items:
            message.update("No open rounds in this store. Press r to look again.")
        elif not waiting:
            message.update("Nothing is waiting for you right now. Press r to look again.")
        else:
            message.update(f"{len(waiting)} round(s) need your ratings. Choose one and press Enter.")
        message.display = True
        problems = self.query_one("#start-problems", Static)
        problems.display = bool(found.problems)
        problems.update("\n".join(f"[!] cannot read {p}" for p in found.problems))
        table.focus()

    @on(DataTable.RowSelected, "#runs")
    def _selected(self) -> None:
        self.action_open()

    def action_open(self) -> None:
        table = self.query_one("#runs", DataTable)
        if not self.items or table.cursor_row is None or table.cursor_row >= len(self.items):
            return
        item = self.items[table.cursor_row]
        if item.problem:
            self.notify(item.problem, severity="error", timeout=10)
            return
        self.app.open_round(item.paths.namespace, item.paths.run, item.round)
