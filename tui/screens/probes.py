"""A run's probes timeline (jobs.probes): each probe's answer at every checkpoint, the words that
changed since the checkpoint before highlighted (new ones bold, gone ones struck out), and what to
do with the highlighted checkpoint: chat with it, evaluate it, keep it — the Checkpoints screen's
actions, through the same jobs functions. While the run trains, each poll picks up new answers.
"""

from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.content import Content
from textual.widgets import DataTable, Static

from jobs.probes import ADDED, REMOVED, ProbeCheckpoint, ProbeTimeline, printable
from tui.format import user_message
from tui.screens.polled import PolledScreen
from tui.widgets.status import KeyFooter, StatusLine
from tui.widgets.table import Col, Table

COLUMNS = (Col("probe", "probe", wrap=True), Col("step", "step"), Col("changed", "Δ"), Col("answer", "answer", wrap=True),
           Col("seconds", "s", give_way=2), Col("marks", "", give_way=1))


class ProbesScreen(PolledScreen):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("a", "chat", "Chat"),  # the Checkpoints screen's keys for the same actions
        Binding("e", "evaluate", "Evaluate"),
        Binding("k", "toggle_keep", "Keep"),
    ]

    def __init__(self, run_id: str):
        super().__init__()
        self.run_id = run_id
        self.timeline: ProbeTimeline | None = None
        self.rows: list[ProbeCheckpoint | None] = []  # the table's rows: the checkpoint each one answers at
        self._loader = None

    def compose(self) -> ComposeResult:
        yield StatusLine("Probes")
        yield Static("", id="probes-head")
        yield Table(cursor_type="row", id="probes-table")
        yield Static("", id="probes-detail")
        yield KeyFooter()

    def on_mount(self) -> None:
        table = self.query_one(Table)
        table.set_columns(COLUMNS)
        table.focus()
        self.subscribe_to_polls(self.reload)
        self.reload()

    # ----------------------------------------------------------------- reading

    def reload(self) -> None:
        if self._loader is not None and self._loader.is_running:
            return
        self._loader = self._load()

    @work(thread=True, group="probes-load", exit_on_error=False)
    def _load(self) -> None:
        from jobs.probes import probe_timeline

        backend = self.app.backend
        try:
            timeline = probe_timeline(backend.store, backend.workspace, self.run_id)
        except Exception as exc:
            self.app.call_from_thread(self.notify, user_message(exc), title="cannot read the probes", severity="error")
            return
        self.app.call_from_thread(self._show, timeline)

    def _show(self, timeline: ProbeTimeline) -> None:
        if self.timeline is not None and self.timeline.to_json() == timeline.to_json():
            return  # nothing new since the last poll
        self.timeline = timeline
        self.query_one(StatusLine).set_title(f"Probes · {timeline.name}")
        parts = [Content.from_markup("[b]$name[/] [$text-muted]$id · $state[/]", name=timeline.name, id=timeline.run_id,
                                     state=timeline.state)]
        if timeline.note:
            parts.append(Content(timeline.note))
        else:
            parts.append(Content(f"{len(timeline.prompts)} probe(s) × {len(timeline.checkpoints)} checkpoint(s)"))
            if timeline.max_new_tokens:
                parts.append(Content(f"{timeline.max_new_tokens} new tokens at most"))
            cost = timeline.cost_per_save()
            if cost is not None:
                parts.append(Content.from_markup("probing adds [b]$cost s[/] per save (median)", cost=f"{cost:.2f}"))
        self.query_one("#probes-head", Static).update(Content(" · ").join(parts))
        self._fill_table()
        self._show_detail()
        self.refresh_bindings()

    def _fill_table(self) -> None:
        table = self.query_one(Table)
        key = self._row_key(table.cursor_row)
        table.clear()
        self.rows = []
        timeline = self.timeline
        variables = self.app.theme_variables
        styles = {ADDED: f"bold {variables.get('success', 'green')}", REMOVED: f"strike {variables.get('error', 'red')}"}
        keys = []
        for index, prompt in enumerate(timeline.prompts):
            first = True
            for checkpoint in timeline.checkpoints:
                answer = checkpoint.answers[index]
                if answer is None:
                    continue
                probe = Text(f"#{index + 1} {printable(prompt, one_line=True)}") if first else Text("")
                first = False
                shown = Text()
                for kind, piece in answer.diff:
                    shown.append(printable(piece, one_line=True), style=styles.get(kind, ""))
                marks = Text()
                if checkpoint.best:
                    marks.append("★ best ", style=f"bold {variables.get('success', '')}")
                if checkpoint.keep:
                    marks.append("keep ", style=variables.get("accent", ""))
                if not checkpoint.on_disk:
                    marks.append("removed", style="dim")
                changed = Text("≠", style=f"bold {variables.get('warning', '')}") if answer.changed else Text("")
                seconds = "—" if answer.seconds is None else f"{answer.seconds:.2f}"
                row_key = f"{index}:{checkpoint.step}"
                table.add_row(probe, str(checkpoint.step), changed, shown, seconds, marks, key=row_key)
                keys.append(row_key)
                self.rows.append(checkpoint)
        if key in keys:
            table.move_cursor(row=keys.index(key), animate=False)

    def _row_key(self, row: int) -> str | None:
        table = self.query_one(Table)
        if row < 0 or row >= table.row_count:
            return None
        return str(table.coordinate_to_cell_key((row, 0)).row_key.value)

    @property
    def selected(self) -> ProbeCheckpoint | None:
        """The checkpoint of the highlighted answer."""
        row = self.query_one(Table).cursor_row
        return self.rows[row] if 0 <= row < len(self.rows) else None

    @on(DataTable.RowHighlighted)
    def _highlighted(self, _event) -> None:
        self._show_detail()
        self.refresh_bindings()

    def _show_detail(self) -> None:
        checkpoint = self.selected
        detail = self.query_one("#probes-detail", Static)
        if checkpoint is None:
            detail.update("")
            return
        answered = sum(1 for a in checkpoint.answers if a is not None)
        where = (f"{checkpoint.path.parent.name}/{checkpoint.path.name}" if checkpoint.on_disk and checkpoint.path
                 else "removed from disk (keep policy): answers only")
        detail.update(Content.from_markup(
            "step [b]$step[/]: $changed of $n answer(s) changed since the checkpoint before · probing took $s s · [$text-muted]$where[/]",
            step=str(checkpoint.step), changed=str(checkpoint.changed), n=str(answered), s=f"{checkpoint.seconds:.2f}", where=where))

    def check_action(self, action: str, parameters) -> bool | None:
        if action in ("chat", "evaluate", "toggle_keep"):
            checkpoint = self.selected
            return checkpoint is not None and checkpoint.on_disk
        return True

    # ----------------------------------------------------------------- actions

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_chat(self) -> None:
        from tui.app import load_screen_class, nav_entry

        chat_class = load_screen_class(nav_entry("chat"))
        if chat_class is None:
            self.notify("The chat screen is not part of this build yet.", severity="warning")
            return
        screen = chat_class(run_id=self.run_id, checkpoint=self.selected.step)
        screen.nav_name = "chat"
        self.app.push_screen(screen)

    def action_evaluate(self) -> None:
        step = self.selected.step
        self.app.call_blocking(f"queue an evaluation of checkpoint {step}", self._queue_eval, step,
                               then=lambda run: self.notify(f"Queued eval run {run.id}; results on the Evals screen (4).", timeout=5))

    def _queue_eval(self, step: int):
        from jobs import control
        from jobs.targets import eval_preset_for_run

        backend = self.app.backend
        preset = eval_preset_for_run(backend.store, backend.workspace, self.run_id, checkpoint=step)
        return control.submit(backend.workspace, preset, start=backend.autostart_engine)

    def action_toggle_keep(self) -> None:
        from jobs.checkpoints import set_keep

        checkpoint = self.selected
        backend = self.app.backend
        self.app.call_blocking(f"mark checkpoint {checkpoint.step}", set_keep, backend.store, backend.workspace, self.run_id,
                               checkpoint.step, not checkpoint.keep, then=lambda _: self.reload())
