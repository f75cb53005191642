"""The home screen: every run, live, and the keys that act on them."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.content import Content
from textual.widgets import DataTable

from tui import format as fmt
from tui.screens.modals import ConfirmScreen, SubmitRequest, SubmitScreen, confirm_cancel
from tui.screens.polled import PolledScreen
from tui.widgets.text_line import TextLine
from tui.widgets.runs_table import RunsTable
from tui.widgets.status import KeyFooter, StatusLine

# Which actions make sense in which state (the footer dims the others; control has the last word).
ACTION_STATES = {
    "cancel_run": ("queued", "running"),
    "resume_run": ("interrupted", "cancelled", "failed"),
    "retry_run": ("failed", "cancelled", "interrupted", "completed"),
    "raise_priority": ("queued",),
    "delete_run": ("completed", "failed", "cancelled", "interrupted", "queued"),
}


class RunsScreen(PolledScreen):
    BINDINGS = [
        Binding("enter", "open_run", "Open"),
        Binding("s", "submit", "Submit"),
        Binding("c", "cancel_run", "Cancel"),
        Binding("r", "resume_run", "Resume"),
        Binding("t", "retry_run", "Retry"),
        Binding("p,plus", "raise_priority", "Priority ↑"),
        Binding("d,delete", "delete_run", "Delete"),
    ]

    def compose(self) -> ComposeResult:
        yield StatusLine("Runs")
        yield RunsTable(id="runs-table")
        yield TextLine("", id="run-detail")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.subscribe_to_polls(self._redraw)
        self._redraw()
        self.query_one(RunsTable).focus()

    # ----------------------------------------------------------------- drawing

    def _redraw(self) -> None:
        overview = self.app.overview
        if overview is None:
            return
        table = self.query_one(RunsTable)
        table.show(overview.runs, overview.now)
        if self.app.selected_run_id and table.selected_id != self.app.selected_run_id:
            table.select(self.app.selected_run_id)
        self._show_detail()
        self.refresh_bindings()

    def _show_detail(self) -> None:
        detail = self.query_one("#run-detail", TextLine)
        overview = self.app.overview
        if overview is not None and not overview.runs:
            detail.show(Content.from_markup(
                "No runs yet. Press [b]s[/] to submit a preset (try [b]demo[/]), [b]2[/] to edit presets, [b]?[/] for every key."))
            return
        run = self.selected_run
        if run is None:
            detail.show("")
            return
        parts = [Content.from_markup("[b]$name[/] [$text-muted]$id · $kind · priority $priority[/]",
                                     name=run.name, id=run.id, kind=run.kind, priority=str(run.priority))]
        if run.error:
            parts.append(Content.from_markup("[$error]$error[/]", error=run.error.splitlines()[0]))
        if run.advice:
            parts.append(Content.from_markup("→ $advice", advice=run.advice.splitlines()[0]))
        if run.findings:
            parts.append(Content.from_markup("[$warning]⚑ $n finding(s): open the run to read them[/]", n=str(run.findings)))
        detail.show(Content("  ").join(parts))

    @property
    def selected_run(self):
        overview = self.app.overview
        run_id = self.query_one(RunsTable).selected_id
        return overview.run(run_id) if overview and run_id else None

    @on(DataTable.RowHighlighted)
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        # Highlight events arrive after the fact: one posted by a table rebuild may land after the
        # app chose another run (a submit), and must not drag the selection back to the old row.
        row_id = event.row_key.value if event.row_key is not None else None
        if row_id and row_id == self.query_one(RunsTable).selected_id:
            self.app.selected_run_id = row_id
        self._show_detail()
        self.refresh_bindings()

    @on(DataTable.RowSelected)
    def _selected(self, event: DataTable.RowSelected) -> None:
        self.action_open_run()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        states = ACTION_STATES.get(action)
        if states is None:
            return True
        run = self.selected_run
        return run is not None and run.state in states or None  # None: shown dimmed

    # ----------------------------------------------------------------- actions

    def action_open_run(self) -> None:
        run = self.selected_run
        if run is None:
            self.notify("No run selected.", severity="warning")
            return
        self.app.open_run(run.id)

    def action_submit(self) -> None:
        self.app.push_screen(SubmitScreen(), self._submit)

    def _submit(self, request: SubmitRequest | None) -> None:
        if request is None:
            return

        backend = self.app.backend
        self.app.call_blocking(f"submit {request.preset}", backend.submit, request.preset,
                               name=request.name, overrides=request.overrides, then=self._submitted)

    def _submitted(self, run) -> None:
        self.app.selected_run_id = run.id
        self.query_one(RunsTable).select(run.id)  # at once if a poll already brought the row
        self.notify(f"{run.name} queued ({run.id}).", timeout=4)

    def _act(self, verb: str, method, done: str) -> None:
        run = self.selected_run
        if run is None:
            self.notify("No run selected.", severity="warning")
            return
        self.app.call_blocking(f"{verb} {run.name}", method, run.id,
                               then=lambda _: self.notify(done.format(name=run.name), timeout=4))

    def action_cancel_run(self) -> None:
        run = self.selected_run
        if run is None:
            self.notify("No run selected.", severity="warning")
            return
        confirm_cancel(self.app, run)

    def action_resume_run(self) -> None:
        self._act("resume", self.app.backend.resume, "{name} queued to resume from its last checkpoint")

    def action_retry_run(self) -> None:
        self._act("retry", self.app.backend.retry, "{name} queued again from the start")

    def action_raise_priority(self) -> None:
        self._act("raise the priority of", self.app.backend.raise_priority, "{name} moved to the front of the queue")

    def action_delete_run(self) -> None:
        run = self.selected_run
        if run is None:
            self.notify("No run selected.", severity="warning")
            return
        elapsed = run.running_time(self.app.overview.now) if self.app.overview else None
        question = Content.from_markup(
            "Delete [b]$name[/] ($state, $elapsed) with its folder, checkpoints and metrics?\nThis cannot be undone.",
            name=run.name, state=run.state, elapsed=fmt.duration(elapsed))

        def answered(yes: bool | None) -> None:
            if yes:
                self.app.call_blocking(f"delete {run.name}", self.app.backend.remove, run.id,
                                       then=lambda _: self.notify(f"{run.name} deleted.", timeout=4))

        self.app.push_screen(ConfirmScreen(question, "Delete"), answered)
