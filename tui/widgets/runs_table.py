"""The table of runs on the Runs screen: one row per run, cells updated in place as polls arrive.

The screen hands over the runs its filter kept, the runs marked for Compare and a sort order
(a column key of jobs.compare.SORT_KEYS and a direction; none: display_order)."""

from __future__ import annotations

from dataclasses import replace

from rich.text import Text

from jobs.compare import sort_runs
from tui import format as fmt
from tui.widgets.table import Col, Table

# At 80 columns the GPU, kind, elapsed and best-eval columns give way (in that order), then the rest.
COLUMNS = (
    Col("name", "name"),
    Col("state", "state"),
    Col("progress", "progress", give_way=2),
    Col("eta", "ETA", give_way=1),
    Col("step", "step/total", give_way=3),
    Col("loss", "loss"),
    Col("best", "best eval", give_way=4),
    Col("elapsed", "elapsed", give_way=5),
    Col("kind", "kind", give_way=6),
    Col("gpu", "GPU", give_way=7),
    Col("findings", "⚑"),
    Col("tags", "tags · note", give_way=8),
)
# While some run carries tags or a note, their column stays longer than GPU, kind and elapsed;
# while none does, it is the first to go.
LABELLED_GIVE_WAY = 4.5
MARK = "◆ "  # before the name of a run marked for Compare
_STATE_ORDER = {"running": 0, "queued": 1}


def display_order(runs: list) -> list:
    """Running first, then the queue in the order the engine takes it, then the rest newest first."""
    running = [r for r in runs if r.state == "running"]
    queued = sorted((r for r in runs if r.state == "queued"), key=lambda r: (-r.priority, r.created_at))
    rest = sorted((r for r in runs if r.state not in _STATE_ORDER), key=lambda r: -r.created_at)
    return running + queued + rest


class RunsTable(Table):
    DEFAULT_CSS = """
    RunsTable { height: 1fr; }
    """

    def __init__(self, **kwargs):
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self._order: list[str] = []
        self._cells: dict[str, tuple] = {}

    def on_mount(self) -> None:
        self._ensure_columns()

    def _ensure_columns(self) -> None:
        # The screen may hand over the first runs before this widget's own on_mount has run.
        if not self.columns:
            self.set_columns(COLUMNS)

    @property
    def selected_id(self) -> str | None:
        if not self._order or self.cursor_row < 0 or self.cursor_row >= len(self._order):
            return None
        return self._order[self.cursor_row]

    def select(self, run_id: str) -> None:
        if run_id in self._order:
            self.move_cursor(row=self._order.index(run_id))

    def show(self, runs: list, now: float, marked: frozenset[str] | set[str] = frozenset(),
             sort: tuple[str, bool] | None = None) -> None:
        self._ensure_columns()
        self._label_sorted(sort)
        labelled = any(run.tags or run.note for run in runs)
        if labelled != getattr(self, "_labelled", False):
            self._labelled = labelled
            self._specs = tuple(replace(spec, give_way=LABELLED_GIVE_WAY if labelled else 8) if spec.key == "tags"
                                else spec for spec in self._specs)
            self._layout = ()  # fit again
            self._fit()
        colours = self._colours()
        ordered = sort_runs(runs, sort[0], descending=sort[1], now=now) if sort else display_order(runs)
        order = [run.id for run in ordered]
        rows = {run.id: self._cells_for(run, now, colours, run.id in marked) for run in ordered}
        if order != self._order:
            selected = self.selected_id
            self.clear()
            for run_id in order:
                self.add_row(*rows[run_id], key=run_id)
            self._order = order
            if selected in order:
                self.move_cursor(row=order.index(selected), animate=False)
        else:
            for run_id, cells in rows.items():
                old = self._cells.get(run_id)
                for index, key in enumerate(c.key for c in COLUMNS):
                    if old is None or _plain(old[index]) != _plain(cells[index]) or _style(old[index]) != _style(cells[index]):
                        self.update_cell(run_id, key, cells[index], update_width=True)
        self._cells = rows

    def _label_sorted(self, sort: tuple[str, bool] | None) -> None:
        """The sorted column's label carries ▲ (lowest first) or ▼."""
        if sort == getattr(self, "_sorted", None):
            return
        self._sorted = sort
        for spec in COLUMNS:
            column = self.columns.get(spec.key)
            if column is None:
                continue
            arrow = (" ▼" if sort[1] else " ▲") if sort and sort[0] == spec.key else ""
            column.label = Text(spec.label + arrow)
            column.content_width = max(column.content_width, column.label.cell_len)
        self._require_update_dimensions = True
        self._clear_caches()
        self.refresh()

    def _colours(self) -> dict[str, str]:
        variables = self.app.theme_variables
        return {name: variables.get(name, "") for name in ("success", "error", "warning", "accent", "text-muted")}

    def _cells_for(self, run, now: float, colours: dict[str, str], marked: bool = False) -> tuple:
        state_style = {
            "queued": colours["text-muted"],
            "running": f"bold {colours['success']}",
            "completed": colours["success"],
            "failed": f"bold {colours['error']}",
            "cancelled": colours["warning"],
            "interrupted": f"bold {colours['warning']}",
        }.get(run.state, "")
        state = Text(f"{fmt.STATE_ICONS.get(run.state, ' ')} {run.state}", style=state_style)
        total = run.total_steps
        fraction = (run.step / total) if total else (1.0 if run.state == "completed" else None)
        percent = f"{fraction * 100:3.0f}%" if fraction is not None else "  —"
        progress = Text(f"{fmt.bar(fraction, 8)} {percent}", style=colours["accent"] if run.state == "running" else "")
        elapsed = run.running_time(now)
        eta = fmt.eta(run.step, total, elapsed) if run.state == "running" else None
        step = f"{run.step}/{total}" if total else (str(run.step) if run.step else "—")
        findings = Text(f"⚑{run.findings}", style=f"bold {colours['warning']}") if run.findings else Text("")
        name = Text(run.name)
        if marked:
            name = Text.assemble((MARK, f"bold {colours['accent']}"), name)
        if run.priority and run.state == "queued":
            name.append(f" ↑{run.priority}", style=colours["accent"])
        labels = Text(" ".join(f"#{tag}" for tag in run.tags), style=colours["accent"])
        if run.note:
            labels.append((" " if run.tags else "") + run.note, style=colours["text-muted"])
        return (
            name,
            state,
            progress,
            fmt.duration(eta) if eta is not None else "",
            step,
            fmt.number(run.last_loss) if run.last_loss is not None else "",
            fmt.number(run.best_eval_loss) if run.best_eval_loss is not None else "",
            fmt.duration(elapsed) if elapsed is not None else "",
            run.kind,
            run.gpu or "",
            findings,
            labels,
        )


def _plain(cell) -> str:
    return cell.plain if isinstance(cell, Text) else str(cell)


def _style(cell) -> str:
    return str(cell.style) + repr(cell.spans) if isinstance(cell, Text) else ""
