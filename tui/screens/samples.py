"""A run's per-sample losses (jobs.samples): the samples the model finds hardest at a step, and
those whose loss rose most from the base model (step 0) — label noise and forgetting.

[ and ] step through the evaluations measured; enter reads a sample in full. While the run trains,
each poll picks up a new evaluation's losses."""

from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.content import Content
from textual.widgets import DataTable, Static

from jobs.samples import SamplesError, SamplesView
from tui.format import user_message
from tui.screens.polled import PolledScreen
from tui.widgets.status import KeyFooter, StatusLine
from tui.widgets.table import Col, Table

SHOWN = 50  # rows per table
WORST_COLUMNS = (Col("sample", "sample"), Col("loss", "loss"), Col("base", "base", give_way=2),
                 Col("tokens", "tokens", give_way=1), Col("text", "text", wrap=True))
ROSE_COLUMNS = (Col("sample", "sample"), Col("rise", "rise"), Col("base", "base"), Col("now", "now", give_way=1),
                Col("text", "text", wrap=True))


def _clip(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class SamplesScreen(PolledScreen):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("enter", "read_sample", "Read in full"),
        Binding("left_square_bracket", "step(-1)", "Earlier step"),
        Binding("right_square_bracket", "step(1)", "Later step"),
        Binding("tab", "focus_next", "Switch table", show=False),
    ]
    DEFAULT_CSS = """
    SamplesScreen #samples-head { height: auto; padding: 0 1; background: $boost; }
    SamplesScreen .samples-title { height: 1; padding: 0 1; text-style: bold; }
    SamplesScreen #samples-worst { height: 1fr; }
    SamplesScreen #samples-rose { height: 1fr; }
    """

    def __init__(self, run_id: str):
        super().__init__()
        self.run_id = run_id
        self.step: int | None = None  # None: the last step measured, following new ones
        self.view: SamplesView | None = None
        self._loader = None

    def compose(self) -> ComposeResult:
        yield StatusLine("Samples")
        yield Static("", id="samples-head")
        yield Static("hardest samples (highest loss)", classes="samples-title", id="samples-worst-title")
        yield Table(cursor_type="row", zebra_stripes=True, id="samples-worst")
        yield Static("loss rose most since the base model", classes="samples-title", id="samples-rose-title")
        yield Table(cursor_type="row", zebra_stripes=True, id="samples-rose")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.query_one("#samples-worst", Table).set_columns(WORST_COLUMNS)
        self.query_one("#samples-rose", Table).set_columns(ROSE_COLUMNS)
        self.query_one("#samples-worst", Table).focus()
        self.subscribe_to_polls(self.reload)
        self.reload()

    # ----------------------------------------------------------------- reading

    def reload(self) -> None:
        if self._loader is not None and self._loader.is_running:
            return
        self._loader = self._load(self.step)

    @work(thread=True, group="samples-load", exclusive=True, exit_on_error=False)
    def _load(self, step: int | None) -> None:
        from jobs.samples import sample_steps, samples_view

        backend = self.app.backend
        try:
            run = backend.store.get_run(self.run_id)
            if run is None:
                self.app.call_from_thread(self._show_problem, "This run no longer exists.", None)
                return
            run_dir = backend.workspace.run_dir(run.id)
            shown = self.view
            # Polls come several times a second: the files are read again only when a new step is on disk.
            if shown is not None and step in (None, shown.step) and sample_steps(run_dir) == shown.steps:
                return
            view = samples_view(run_dir, run.id, step=step, worst=SHOWN, rose=SHOWN)
        except SamplesError as exc:
            self.app.call_from_thread(self._show_problem, exc.message, exc.advice)
            return
        except Exception as exc:
            self.app.call_from_thread(self.notify, user_message(exc), title="cannot read the sample losses", severity="error")
            return
        self.app.call_from_thread(self._show, run.name, view)

    def _show_problem(self, message: str, advice: str | None) -> None:
        self.view = None
        text = Text(message, style="bold")
        if advice:
            text.append(f"\n→ {advice}", style="dim")
        self.query_one("#samples-head", Static).update(text)
        for table in self.query(Table):
            table.clear()
        self.refresh_bindings()

    def _show(self, name: str, view: SamplesView) -> None:
        if self.view is not None and (self.view.step, self.view.steps) == (view.step, view.steps):
            return  # nothing new since the last poll
        self.view = view
        self.query_one(StatusLine).set_title(f"Samples · {name}")
        steps = " ".join(f"[{s}]" if s == view.step else str(s) for s in view.steps)
        self.query_one("#samples-head", Static).update(Content.from_markup(
            "[b]$name[/] step [b]$step[/]: $n samples, mean loss $mean  [$text-muted]steps $steps · 0 = base model[/]",
            name=name, step=str(view.step), n=str(view.samples), mean=f"{view.mean_loss:.4f}", steps=steps))
        worst = self.query_one("#samples-worst", Table)
        worst.clear()
        for row in view.worst:
            worst.add_row(f"{row.split} {row.index}", f"{row.loss:.4f}", "—" if row.base_loss is None else f"{row.base_loss:.4f}",
                          str(row.tokens), _clip(row.preview))
        rose = self.query_one("#samples-rose", Table)
        rose.clear()
        self.query_one("#samples-rose-title", Static).update(
            "loss rose most since the base model" + ("" if view.has_base else ": no base-model losses (step 0) in this run")
            + ("" if view.rose or not view.has_base else ": none rose"))
        for row in view.rose:
            rose.add_row(f"{row.split} {row.index}", Text(f"{row.rise:+.4f}", style="red" if row.rise > 0 else "green"),
                         f"{row.base_loss:.4f}", f"{row.loss:.4f}", _clip(row.preview))
        self.refresh_bindings()

    # ----------------------------------------------------------------- actions

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "read_sample":
            return self._selected() is not None
        if action == "step":
            return self.view is not None and len(self.view.steps) > 1
        return True

    def _selected(self):
        if self.view is None:
            return None
        table = self.focused if isinstance(self.focused, Table) else self.query_one("#samples-worst", Table)
        rows = self.view.rose if table.id == "samples-rose" else self.view.worst
        return rows[table.cursor_row] if 0 <= table.cursor_row < len(rows) else None

    @on(DataTable.RowSelected)
    def _row_selected(self) -> None:
        self.action_read_sample()

    def action_read_sample(self) -> None:
        from tui.screens.detail import DetailScreen

        row = self._selected()
        if row is None:
            return
        base = "—" if row.base_loss is None else f"{row.base_loss:.4f}"
        self.app.push_screen(DetailScreen(
            f"{row.split} sample {row.index} · loss {row.loss:.4f} (base {base}) · {row.tokens} supervised tokens",
            [("the sample (start)", row.preview), ("its answer (supervised tokens, start)", row.answer)]))

    def action_step(self, delta: int) -> None:
        if self.view is None:
            return
        steps = self.view.steps
        index = max(0, min(len(steps) - 1, steps.index(self.view.step) + delta))
        # The last step again: follow new evaluations as they come.
        self.step = None if index == len(steps) - 1 else steps[index]
        self._loader = self._load(steps[index])

    def action_back(self) -> None:
        self.app.pop_screen()
