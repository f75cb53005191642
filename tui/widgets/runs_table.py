"""The table of runs on the Runs screen: one row per run, cells updated in place as polls arrive."""

from __future__ import annotations

from rich.text import Text

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
)
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

    def show(self, runs: list, now: float) -> None:
        self._ensure_columns()
        colours = self._colours()
        ordered = display_order(runs)
        order = [run.id for run in ordered]
        rows = {run.id: self._cells_for(run, now, colours) for run in ordered}
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

    def _colours(self) -> dict[str, str]:
        variables = self.app.theme_variables
        return {name: variables.get(name, "") for name in ("success", "error", "warning", "accent", "text-muted")}

    def _cells_for(self, run, now: float, colours: dict[str, str]) -> tuple:
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
        if run.priority and run.state == "queued":
            name.append(f" ↑{run.priority}", style=colours["accent"])
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
        )


def _plain(cell) -> str:
    return cell.plain if isinstance(cell, Text) else str(cell)


def _style(cell) -> str:
    return str(cell.style) + repr(cell.spans) if isinstance(cell, Text) else ""
