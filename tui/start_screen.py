"""The start screen: batches waiting in the store, with this rater's progress; refreshed while shown."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, LoadingIndicator, Static

from therapy_rlhf.tui.catalog import WorkError, WorkItem, WorkList, age, find_work, parse_time
from therapy_rlhf.tui.writer import plain_error


class StartScreen(Screen):
    AUTO_FOCUS = "#runs"
    BINDINGS = [
        Binding("enter", "open", "Rate"),
        Binding("r", "reload", "Look again"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.items: list[WorkItem] = []

    def compose(self) -> ComposeResult:
        yield Static("", id="start-title", markup=False)
        yield LoadingIndicator(id="start-loading")
        yield Static("", id="start-message", markup=False)
        table = DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        table.add_columns("Run", "Batch", "Yours", "Fully scored", "Waiting", "Note")
        yield table
        yield Static("", id="start-problems", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#start-title", Static).update(
            f"Batches waiting for {self.app.rater} in {self.app.store.uri}"
        )
        self.reload()
        if self.app.refresh_seconds > 0:
            # The list is read whole (every open batch): look again less often than the rating screen polls.
            self.set_interval(self.app.refresh_seconds * 3, self._refresh_quietly, name="start-refresh")

    def _refresh_quietly(self) -> None:
        if self.app.screen is self:
            self._load()

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
            self.app.call_from_thread(self._failed, f"unexpected problem reading {self.app.store.uri}: {plain_error(err)}")
            return
        self.app.call_from_thread(self._show, found)

    def _failed(self, text: str) -> None:
        self.query_one("#start-loading").display = False
        self.query_one("#runs").display = False
        message = self.query_one("#start-message", Static)
        message.update(f"[!] {text}\n\nCheck the store address and your access, then press r to look again (q quits).")
        message.add_class("problem")
        message.display = True

    def _show(self, found: WorkList) -> None:
        self.items = found.items
        self.query_one("#start-loading").display = False
        table = self.query_one("#runs", DataTable)
        table.display = True
        row = table.cursor_row
        table.clear()
        now = self.app.clock()
        for item in found.items:
            if item.problem:
                note = "not open to you"
            elif not item.todo:
                note = "all scored by you"
            elif item.needs_you:
                note = f"{item.needs_you} need a score"
            else:
                note = "covered by others"
            table.add_row(
                item.run,
                str(item.round),
                f"{item.yours}/{item.responses}",
                f"{item.fully_scored}/{item.responses}",
                age(parse_time(item.waiting_since), now),
                note,
            )
        if row is not None and 0 <= row < table.row_count:
            table.move_cursor(row=row)
        message = self.query_one("#start-message", Static)
        message.remove_class("problem")
        waiting = [i for i in found.items if not i.problem and i.needs_you]
        if not found.items:
            message.update("No batch is waiting in this store. The list refreshes by itself; r looks now.")
        elif not waiting:
            message.update("Nothing needs your scores right now. The list refreshes by itself; r looks now.")
        else:
            message.update(f"{len(waiting)} batch(es) need your scores. Choose one and press Enter.")
        message.display = True
        problems = self.query_one("#start-problems", Static)
        problems.display = bool(found.problems)
        problems.update("\n".join(f"[!] cannot read {p}" for p in found.problems))
        if self.app.screen is self:
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
