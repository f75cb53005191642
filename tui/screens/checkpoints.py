"""A run's checkpoints: step, losses, size, age, best / keep markers — and what to do with one.

Keys act on the highlighted checkpoint: chat with it, evaluate it, resume training from it, merge
its adapter into the base, export it, mark it keep, delete it (asked once; twice when it is kept or
the best). Everything that touches the store or the disk runs in a thread worker.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import DataTable, Input, Label, Static

from tui import format as fmt
from tui.format import user_message
from tui.screens.polled import PolledScreen
from tui.screens.modals import ConfirmScreen
from tui.widgets.status import KeyFooter, StatusLine
from tui.widgets.table import Table

COLUMNS = (("step", "step"), ("train", "train loss"), ("eval", "eval loss"), ("size", "size"), ("age", "age"), ("marks", ""))
RESUMABLE = ("interrupted", "cancelled", "failed")


class PathScreen(ModalScreen[str | None]):
    """Ask for a folder (export destination)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, prompt: str, initial: str = ""):
        super().__init__()
        self.prompt, self.initial = prompt, initial

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.prompt, classes="dialog-text")
            yield Input(self.initial, id="path", placeholder="folder (new or empty)")
            yield Static("", id="path-error", classes="error-text")

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        value = event.value.strip()
        if not value:
            self.query_one("#path-error", Static).update("type a folder")
            return
        self.dismiss(value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class CheckpointsScreen(PolledScreen):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("a", "chat", "Chat"),  # not `c`: that cancels a run on Runs and Dashboard
        Binding("e", "evaluate", "Evaluate"),
        Binding("v", "evals", "Eval results"),
        Binding("r", "resume", "Resume from"),
        Binding("m", "merge", "Merge"),
        Binding("k", "toggle_keep", "Keep"),
        Binding("d,delete", "delete", "Delete"),
        Binding("x", "export", "Export"),
        Binding("o", "chat_merged", "Chat merged"),
    ]
    DEFAULT_CSS = """
    CheckpointsScreen #ckpt-head { height: auto; padding: 0 1; background: $boost; }
    CheckpointsScreen #ckpt-table { height: 1fr; }
    CheckpointsScreen #ckpt-detail { height: auto; max-height: 4; padding: 0 1; }
    """

    def __init__(self, run_id: str):
        super().__init__()
        self.run_id = run_id
        self.run = None
        self.infos: list = []
        self.merged: list[Path] = []
        self._repaired = False
        self._loader = None

    def compose(self) -> ComposeResult:
        yield StatusLine("Checkpoints")
        yield Static("", id="ckpt-head")
        yield Table(cursor_type="row", zebra_stripes=True, id="ckpt-table")
        yield Static("", id="ckpt-detail")
        yield KeyFooter()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for key, label in COLUMNS:
            table.add_column(label, key=key)
        table.focus()
        self.subscribe_to_polls(self.reload)
        self.reload()

    # ----------------------------------------------------------------- reading

    def reload(self) -> None:
        if self._loader is not None and self._loader.is_running:
            return
        self._loader = self._load()

    @work(thread=True, group="ckpt-load", exit_on_error=False)
    def _load(self) -> None:
        from jobs import checkpoints as ckpt
        from jobs.targets import merged_models_for

        backend = self.app.backend
        try:
            run = backend.store.get_run(self.run_id)
            infos, merged = [], []
            if run is not None and run.kind == "train":
                if not self._repaired:
                    # The same repair the engine does at start: a crash mid-delete is finished here too.
                    ckpt.repair_checkpoints(backend.store, backend.workspace, [run.id])
                    self._repaired = True
                infos = ckpt.list_checkpoints(backend.store, backend.workspace, run.id)
                merged = merged_models_for(backend.workspace, run.id)
        except Exception as exc:
            self.app.call_from_thread(self.notify, user_message(exc), title="cannot read the checkpoints", severity="error")
            return
        self.app.call_from_thread(self._show, run, infos, merged)

    def _show(self, run, infos: list, merged: list[Path]) -> None:
        self.run, self.infos, self.merged = run, infos, merged
        head = self.query_one("#ckpt-head", Static)
        if run is None:
            head.update(Content.from_markup("[$error]This run no longer exists.[/]"))
            self.query_one(DataTable).clear()
            return
        self.query_one(StatusLine).set_title(f"Checkpoints · {run.name}")
        parts = [Content.from_markup("[b]$name[/] [$text-muted]$id · $state[/]", name=run.name, id=run.id, state=run.state)]
        if run.kind != "train":
            parts.append(Content(f"a {run.kind} job has no checkpoints; open its training run"))
        elif not infos:
            parts.append(Content("no checkpoints yet" if run.active else "no checkpoints"))
        else:
            best = next((i for i in infos if i.best), None)
            if best is not None:
                parts.append(Content.from_markup("best eval loss [b]$loss[/] at step $step", loss=fmt.number(best.eval_loss), step=str(best.step)))
            parts.append(Content(f"{len(infos)} checkpoint(s), {fmt.size(sum(i.size_bytes or 0 for i in infos))}"))
        if merged:
            parts.append(Content(f"merged models: {len(merged)}"))
        head.update(Content(" · ").join(parts))
        self._fill_table()
        self._show_detail()
        self.refresh_bindings()

    def _fill_table(self) -> None:
        table = self.query_one(DataTable)
        selected = self.selected.step if self.selected else None
        table.clear()
        variables = self.app.theme_variables
        for info in self.infos:
            marks = Text()
            if info.best:
                marks.append("★ best ", style=f"bold {variables.get('success', '')}")
            if info.keep:
                marks.append("keep ", style=variables.get("accent", ""))
            if info.latest:
                marks.append("latest ", style="dim")
            if not info.on_disk:
                marks.append("missing on disk", style=variables.get("error", ""))
            table.add_row(str(info.step), fmt.number(info.train_loss), fmt.number(info.eval_loss), fmt.size(info.size_bytes),
                          fmt.duration(info.age_s), marks, key=str(info.step))
        steps = [i.step for i in self.infos]
        if selected in steps:
            table.move_cursor(row=steps.index(selected), animate=False)

    @property
    def selected(self):
        table = self.query_one(DataTable)
        if not self.infos or table.cursor_row < 0 or table.cursor_row >= len(self.infos):
            return None
        return self.infos[table.cursor_row]

    @on(DataTable.RowHighlighted)
    def _highlighted(self, _event) -> None:
        self._show_detail()
        self.refresh_bindings()

    def _show_detail(self) -> None:
        info = self.selected
        detail = self.query_one("#ckpt-detail", Static)
        if info is None:
            detail.update("")
            return
        detail.update(Content.from_markup("[$text-muted]$path[/]", path=str(info.path)))

    def check_action(self, action: str, parameters) -> bool | None:
        if action == "chat_merged":
            return bool(self.merged)
        if action in ("chat", "evaluate", "merge", "export", "toggle_keep", "delete", "resume"):
            info = self.selected
            if info is None or not info.on_disk:
                return False
            if action == "resume":
                return self.run is not None and self.run.state in RESUMABLE
        return True

    # ----------------------------------------------------------------- actions

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_evals(self) -> None:
        self.app.action_open_screen("evals", self.run_id)

    def action_chat(self) -> None:
        from tui.app import load_screen_class, nav_entry

        info = self.selected
        chat_class = load_screen_class(nav_entry("chat"))
        if chat_class is None:
            self.notify("The chat screen is not part of this build yet.", severity="warning")
            return
        screen = chat_class(run_id=self.run_id, checkpoint=info.step)
        screen.nav_name = "chat"
        self.app.push_screen(screen)

    def action_chat_merged(self) -> None:
        """The newest merged model against its base, in the chat screen."""
        import json

        from tui.app import load_screen_class, nav_entry
        from tui.screens.chat import ChatRequest

        merged = self.merged[-1]
        try:
            base = json.loads((merged / "merge_report.json").read_text(encoding="utf-8")).get("base_model")
        except (OSError, ValueError) as exc:
            self.notify(user_message(exc), title="cannot read the merge report", severity="error")
            return
        chat_class = load_screen_class(nav_entry("chat"))
        screen = chat_class()
        screen.request = ChatRequest(run=None, base=base, adapter=str(merged))  # loaded when the screen mounts
        screen.nav_name = "chat"
        self.app.push_screen(screen)

    def action_evaluate(self) -> None:
        info = self.selected
        self.app.call_blocking(f"queue an evaluation of checkpoint {info.step}", self._queue_eval, info.step,
                               then=lambda run: self.notify(f"Queued eval run {run.id}; results appear under v.", timeout=5))

    def _queue_eval(self, step: int):
        from jobs import control
        from jobs.targets import eval_preset_for_run

        backend = self.app.backend
        preset = eval_preset_for_run(backend.store, backend.workspace, self.run_id, checkpoint=step)
        return control.submit(backend.workspace, preset, start=backend.autostart_engine)

    def action_merge(self) -> None:
        info = self.selected
        self.app.call_blocking(f"queue a merge of checkpoint {info.step}", self._queue_merge, info.step,
                               then=lambda run: self.notify(f"Queued merge run {run.id}.", timeout=5))

    def _queue_merge(self, step: int):
        from jobs import control
        from jobs.targets import merge_preset_for_run

        backend = self.app.backend
        preset = merge_preset_for_run(backend.store, backend.workspace, self.run_id, checkpoint=step)
        return control.submit(backend.workspace, preset, start=backend.autostart_engine)

    def action_resume(self) -> None:
        info = self.selected
        later = [i.step for i in self.infos if i.step > info.step]
        question = f"Resume {self.run.name} from step {info.step}?"
        if later:
            question += f" The later checkpoints ({', '.join(map(str, later))}) and metrics after step {info.step} are discarded."

        def answered(yes: bool | None) -> None:
            if yes:
                from jobs import control

                backend = self.app.backend
                self.app.call_blocking(f"resume from step {info.step}", control.resume, backend.workspace, self.run_id,
                                       from_step=info.step, start=backend.autostart_engine)

        self.app.push_screen(ConfirmScreen(question, "Resume"), answered)

    def action_export(self) -> None:
        info = self.selected
        default = str(Path.cwd() / f"{self.run.name}-step{info.step}") if self.run else ""

        def chosen(destination: str | None) -> None:
            if destination:
                self.app.call_blocking(f"export checkpoint {info.step}", self._export, info.step, destination,
                                       then=lambda copied: self.notify(f"Exported to {destination}: {', '.join(copied)}", timeout=6))

        self.app.push_screen(PathScreen(f"Export checkpoint {info.step} (adapter/model + tokenizer) to:", default), chosen)

    def _export(self, step: int, destination: str) -> list[str]:
        from jobs.checkpoints import export_weights
        from jobs.targets import run_target

        backend = self.app.backend
        target = run_target(backend.store, backend.workspace, self.run_id, step)
        return export_weights(target.weights_dir, Path(destination), base_model=target.base_model.path)

    def action_toggle_keep(self) -> None:
        from jobs.checkpoints import set_keep

        info = self.selected
        backend = self.app.backend
        self.app.call_blocking(f"mark checkpoint {info.step}", set_keep, backend.store, backend.workspace, self.run_id,
                               info.step, not info.keep, then=lambda _: self.reload())

    def action_delete(self) -> None:
        info = self.selected
        first = f"Delete checkpoint {info.step} ({fmt.size(info.size_bytes)})? Its folder and its record go."

        def second(yes: bool | None) -> None:
            if not yes:
                return
            if info.protected:
                what = " and ".join(w for w, on_ in (("the best checkpoint", info.best), ("marked keep", info.keep)) if on_)
                self.app.push_screen(ConfirmScreen(f"Checkpoint {info.step} is {what}. Really delete it?", "Delete"), self._delete_now(info.step))
            else:
                self._delete_now(info.step)(True)

        self.app.push_screen(ConfirmScreen(first, "Delete"), second)

    def _delete_now(self, step: int):
        def go(yes: bool | None) -> None:
            if not yes:
                return
            from jobs.checkpoints import delete_checkpoint

            backend = self.app.backend
            self.app.call_blocking(f"delete checkpoint {step}", delete_checkpoint, backend.store, backend.workspace,
                                   self.run_id, step, then=lambda _: (self.notify(f"Deleted checkpoint {step}.", timeout=3), self.reload()))

        return go
