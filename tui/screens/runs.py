"""The home screen: every run, live, and the keys that act on them.

Runs are found with a filter (`/`: words, FIELD:text, #tag; jobs.compare.filter_runs) and sorted
by any column (`o` cycles the column, `O` flips the order, a click on a header sorts by it); space
marks 2 to 6 runs and `C` compares them. `#` edits a run's tags, `n` its note."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import DataTable, Input, Label

from jobs.compare import MAX_RUNS, MIN_RUNS, SORT_KEYS, FilterError, filter_runs
from tui import format as fmt
from tui.format import user_message
from tui.screens.modals import ConfirmScreen, SubmitRequest, SubmitScreen, confirm_cancel
from tui.screens.polled import PolledScreen
from tui.widgets.text_line import TextLine
from tui.widgets.runs_table import COLUMNS, RunsTable
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
        Binding("C", "compare", "Compare"),
        Binding("space", "mark", "Mark", show=False),
        Binding("slash", "filter", "Filter", show=False),
        Binding("o", "sort", "Sort", show=False),
        Binding("O", "reverse_sort", "Reverse sort", show=False),
        Binding("number_sign", "edit_tags", "Tags", show=False),
        Binding("n", "edit_note", "Note", show=False),
    ]
    # The columns `o` steps through, in the table's order; then back to the default order.
    SORT_COLUMNS = tuple(c.key for c in COLUMNS if c.key in SORT_KEYS)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.marked: list[str] = []  # run ids, in the order they were marked (Compare's order)
        self.filter_text = ""
        self.filter_error: str | None = None
        self.sort: tuple[str, bool] | None = None  # (column key, descending); None: the queue's order

    def compose(self) -> ComposeResult:
        yield StatusLine("Runs")
        yield Input(placeholder="filter: words, state:running, method:lora, preset:demo, #tag  (enter: done, esc: clear)",
                    id="runs-filter", classes="hidden")
        yield RunsTable(id="runs-table")
        yield TextLine("", id="run-detail")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.query_one("#runs-filter", Input).cursor_blink = self.app.config.cursor_blink
        self.subscribe_to_polls(self._redraw)
        self._redraw()
        self.query_one(RunsTable).focus()

    # ----------------------------------------------------------------- drawing

    def _redraw(self) -> None:
        overview = self.app.overview
        if overview is None:
            return
        table = self.query_one(RunsTable)
        known = {run.id for run in overview.runs}
        self.marked = [run_id for run_id in self.marked if run_id in known]  # a deleted run is unmarked
        table.show(self.shown_runs(), overview.now, frozenset(self.marked), self.sort)
        if self.app.selected_run_id and table.selected_id != self.app.selected_run_id:
            table.select(self.app.selected_run_id)
        self._show_detail()
        self.refresh_bindings()

    def shown_runs(self) -> list:
        """The runs the filter keeps (all of them while the filter cannot be read)."""
        runs = self.app.overview.runs if self.app.overview else []
        try:
            kept = filter_runs(runs, self.filter_text)
        except FilterError as exc:
            self.filter_error = user_message(exc)
            return runs
        self.filter_error = None
        return kept

    def _show_detail(self) -> None:
        detail = self.query_one("#run-detail", TextLine)
        overview = self.app.overview
        if self.filter_error:
            detail.show(Content.from_markup("[$error]$error[/]", error=self.filter_error))
            return
        if self.filter_text and overview is not None and overview.runs and not self.shown_runs():
            detail.show(Content.from_markup("No run matches [b]$query[/]. Press [b]/[/] to change the filter.",
                                            query=self.filter_text))
            return
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
        if run.tags:
            parts.append(Content.from_markup("[$accent]$tags[/]", tags=" ".join(f"#{tag}" for tag in run.tags)))
        if run.note:
            parts.append(Content.from_markup("[$text-muted]$note[/]", note=run.note))
        if self.marked:
            parts.append(Content.from_markup("[$accent]◆ $n marked: C compares them[/]", n=str(len(self.marked))))
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
        if action == "compare":
            # In the footer once a run is marked: until then its room goes to the app's keys (E, say).
            return bool(self.marked)
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

    # ----------------------------------------------------------------- marking and comparing

    def action_mark(self) -> None:
        run = self.selected_run
        if run is None:
            self.notify("No run selected.", severity="warning")
            return
        if run.id in self.marked:
            self.marked.remove(run.id)
        elif len(self.marked) >= MAX_RUNS:
            self.notify(f"Compare takes at most {MAX_RUNS} runs: unmark one first (space).", severity="warning")
            return
        else:
            self.marked.append(run.id)
        self._redraw()
        table = self.query_one(RunsTable)
        if table.cursor_row < table.row_count - 1:
            table.action_cursor_down()  # mark the next one with the next space, as file managers do

    def action_compare(self) -> None:
        if not MIN_RUNS <= len(self.marked) <= MAX_RUNS:
            self.notify(f"Mark {MIN_RUNS} to {MAX_RUNS} runs with space, then press C to compare them.",
                        severity="warning")
            return
        from tui.screens.compare import CompareScreen

        self.app.push_screen(CompareScreen(run_ids=list(self.marked)))

    # ----------------------------------------------------------------- filter and sort

    def action_filter(self) -> None:
        field = self.query_one("#runs-filter", Input)
        field.remove_class("hidden")
        field.focus()

    @on(Input.Changed, "#runs-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value.strip()
        self._redraw()

    @on(Input.Submitted, "#runs-filter")
    def _filter_done(self) -> None:
        field = self.query_one("#runs-filter", Input)
        if not field.value.strip():
            field.add_class("hidden")
        self.query_one(RunsTable).focus()

    def key_escape(self) -> None:
        field = self.query_one("#runs-filter", Input)
        if field.has_focus or self.filter_text:
            field.value = ""  # Changed clears the filter
            field.add_class("hidden")
            self.query_one(RunsTable).focus()

    def action_sort(self) -> None:
        """The next column (lowest first); after the last, the queue's own order again."""
        columns = self.SORT_COLUMNS
        if self.sort is None:
            self.sort = (columns[0], False)
        else:
            index = columns.index(self.sort[0]) + 1 if self.sort[0] in columns else 0
            self.sort = (columns[index], False) if index < len(columns) else None
        self._after_sort()

    def action_reverse_sort(self) -> None:
        self.sort = (self.sort[0], not self.sort[1]) if self.sort else (self.SORT_COLUMNS[0], True)
        self._after_sort()

    @on(DataTable.HeaderSelected)
    def _header_clicked(self, event: DataTable.HeaderSelected) -> None:
        key = str(event.column_key.value)
        if key not in SORT_KEYS:
            return
        self.sort = (key, not self.sort[1]) if self.sort and self.sort[0] == key else (key, False)
        self._after_sort()

    def _after_sort(self) -> None:
        self._redraw()
        label = "the queue's order" if self.sort is None else \
            f"{self.sort[0]}, {'highest' if self.sort[1] else 'lowest'} first"
        self.notify(f"Sorted by {label}.", timeout=2)

    # ----------------------------------------------------------------- tags and note

    def action_edit_tags(self) -> None:
        run = self.selected_run
        if run is None:
            self.notify("No run selected.", severity="warning")
            return

        def answered(text: str | None) -> None:
            if text is None:
                return
            wanted = text.replace(",", " ").replace("#", " ").split()
            self.app.call_blocking(f"tag {run.name}", self.app.backend.store.set_labels, run.id,
                                   add=wanted, remove=[t for t in run.tags if t not in wanted], quiet=True)

        self.app.push_screen(LabelScreen(f"Tags of {run.name} (words, e.g. baseline lr-sweep):", " ".join(run.tags)),
                             answered)

    def action_edit_note(self) -> None:
        run = self.selected_run
        if run is None:
            self.notify("No run selected.", severity="warning")
            return

        def answered(text: str | None) -> None:
            if text is not None:
                self.app.call_blocking(f"note {run.name}", self.app.backend.store.set_labels, run.id, note=text,
                                       quiet=True)

        self.app.push_screen(LabelScreen(f"Note on {run.name} (empty clears it):", run.note), answered)


class LabelScreen(ModalScreen[str | None]):
    """One line of text (a run's tags or note): enter keeps it, escape leaves it as it was."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, prompt: str, initial: str = ""):
        super().__init__()
        self.prompt = prompt
        self.initial = initial

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.prompt, classes="dialog-text")
            yield Input(self.initial, id="label-input")

    def on_mount(self) -> None:
        self.query_one(Input).cursor_blink = self.app.config.cursor_blink

    @on(Input.Submitted, "#label-input")
    def _submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)
