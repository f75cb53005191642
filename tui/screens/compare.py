"""2 to 6 runs side by side: one metric of each overlaid on one plot (aligned by step, tokens seen or
running time), their final and best figures, and the settings that differ between their frozen
presets. Opened from Runs (mark runs with space, then C).

Everything is read by jobs/compare.py (the functions `tunebench compare` prints) in a thread
worker: one query per run for the metric drawn, downsampled there, so a switch of metric or axis
redraws at once on runs of any length.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.content import Content
from textual.message import Message
from textual.screen import Screen

from jobs import compare as cmp
from tui import format as fmt
from tui.format import user_message
from tui.widgets.plot import Line, MetricPlot
from tui.widgets.status import KeyFooter, StatusLine
from tui.widgets.table import Col, Table
from tui.widgets.text_line import TextLine

# One colour per run, in the order the runs were marked (theme variables: they follow the theme).
COLOURS = ("primary", "warning", "success", "accent", "error", "secondary")
FIGURE_COLUMNS = (
    Col("run", "run"),
    Col("final", "final"),
    Col("best", "best"),
    Col("at", "best at", give_way=2),
    Col("eval", "best eval", give_way=1),
    Col("state", "state", give_way=4),
    Col("labels", "tags · note", give_way=3),
)


@dataclass
class Loaded:
    runs: list  # jobs.store.Run
    metric: str
    align: str
    lines: list[cmp.RunLine]
    figures: list[cmp.RunFigures]  # of `metric`


class CompareScreen(Screen):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("m", "next_metric", "Metric"),
        Binding("M", "previous_metric", "Previous metric", show=False),
        Binding("a", "next_align", "Align"),
        Binding("g", "toggle_log_scale", "Log scale"),
        Binding("z", "zoom", "Zoom plot"),
    ]

    class Ready(Message):
        def __init__(self, loaded: Loaded):
            super().__init__()
            self.loaded = loaded

    class Compared(Message):
        def __init__(self, comparison: cmp.Comparison):
            super().__init__()
            self.comparison = comparison

    def __init__(self, run_ids: list[str] | None = None, run_id: str | None = None):
        super().__init__()
        self.run_ids = list(run_ids or ([run_id] if run_id else []))
        self.comparison: cmp.Comparison | None = None
        self.metric = "loss"
        self.align = "step"
        self.log_scale = False
        self.loaded: Loaded | None = None
        self.loads = 0  # loads applied: tests and the bench wait on it

    def compose(self) -> ComposeResult:
        yield StatusLine("Compare")
        yield TextLine("reading the runs…", id="compare-head")
        yield MetricPlot("loss", empty="reading the runs…", id="compare-plot")
        with Horizontal(id="compare-tables"):
            yield Table(cursor_type="row", id="compare-figures")
            yield Table(cursor_type="row", id="compare-diff")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.query_one("#compare-figures", Table).set_columns(FIGURE_COLUMNS)
        self.query_one("#compare-figures", Table).border_title = "figures"
        self.query_one("#compare-diff", Table).border_title = "settings that differ"
        self.query_one("#compare-plot", MetricPlot).focus()
        self.load()

    # ----------------------------------------------------------------- reading

    def load(self) -> None:
        # A range's lowest and highest point per character column: finer could hardly be seen.
        width = self.query_one("#compare-plot", MetricPlot).size.width or self.app.size.width
        self._read(self.metric, self.align, self.loaded is None, max(100, 2 * width))

    @work(thread=True, exclusive=True, group="compare", exit_on_error=False)
    def _read(self, metric: str, align: str, first: bool, points: int) -> None:
        try:
            store = self.app.backend.store
            runs = [run for run in (store.get_run(run_id) for run_id in self.run_ids) if run is not None]
            if len(runs) < cmp.MIN_RUNS:
                raise cmp.CompareError("fewer than 2 of the marked runs are left (deleted meanwhile?)",
                                       "mark 2 to 6 runs on the Runs screen again")
            lines = cmp.load_lines(store, runs, metric, align=align, max_points=points)
            # The drawn metric's figures come with its lines (read from every row).
            figures = [cmp.run_figures(store, run, ["eval_loss"] if metric != "eval_loss" else []) for run in runs]
            for line, run_figures in zip(lines, figures):
                if line.figure is not None:
                    run_figures.figures[metric] = line.figure
            self.post_message(self.Ready(Loaded(runs, metric, align, lines, figures)))
            if first:  # the plot first; the settings and the metrics to step through a moment later
                self.post_message(self.Compared(cmp.compare(store, runs, figures=False)))
        except Exception as exc:
            self.app.call_from_thread(self._failed, exc)

    def _failed(self, exc: Exception) -> None:
        self.query_one("#compare-head", TextLine).show(Content.from_markup("[$error]$error[/]", error=user_message(exc)))
        self.notify(user_message(exc), title="cannot compare", severity="error")

    @on(Compared)
    def _compared(self, message: Compared) -> None:
        self.comparison = message.comparison
        self._show_differences()
        metrics = self.comparison.metrics
        if self.metric not in metrics and metrics:
            self.metric = metrics[0]  # no run has a loss (an eval run, say): the first metric they have
            self.load()

    @on(Ready)
    def _apply(self, message: Ready) -> None:
        loaded = message.loaded
        self.metric, self.align, self.loaded = loaded.metric, loaded.align, loaded
        self._draw()
        self._show_figures()
        self._show_head()
        self.loads += 1

    # ----------------------------------------------------------------- drawing

    def _colour(self, index: int) -> str:
        return COLOURS[index % len(COLOURS)]

    def _draw(self) -> None:
        loaded = self.loaded
        plot = self.query_one("#compare-plot", MetricPlot)
        plot.title_text = loaded.metric
        drawn = [Line(line.label, line.xs, line.ys, self._colour(i)) for i, line in enumerate(loaded.lines)]
        values = {}
        for line, figures in zip(loaded.lines, loaded.figures):
            figure = figures.figures.get(loaded.metric)
            if figure is not None and line.xs:
                values[line.label] = fmt.number(figure.final)
        notes = [f"by {cmp.ALIGN_LABELS[loaded.align]}"] + (["log"] if self.log_scale else [])
        plot.set_empty(f"no run has {loaded.metric} on this axis")
        plot.set_lines(drawn, log_y=self.log_scale, note=" ".join(notes), values=values)

    def _show_head(self) -> None:
        loaded = self.loaded
        runs = loaded.runs
        parts = [Content.from_markup("[b]$metric[/] by $axis", metric=loaded.metric,
                                     axis=cmp.ALIGN_LABELS[loaded.align])]
        parts += [Content.from_markup(f"[{_theme(self, self._colour(i))}]━[/] $name", name=run.name)
                  for i, run in enumerate(runs)]
        head = Content("  ").join(parts)
        missing = [f"{line.label}: {line.note}" for line in loaded.lines if line.note]
        if missing:
            head += Content.from_markup("\n[$text-muted]$text[/]", text="; ".join(missing))
        self.query_one("#compare-head", TextLine).show(head)
        self.query_one(StatusLine).set_title(f"Compare {len(runs)} runs")

    def _show_figures(self) -> None:
        loaded = self.loaded
        table = self.query_one("#compare-figures", Table)
        table.border_title = f"{loaded.metric}: final and best"
        table.clear()
        higher = cmp.higher_is_better(loaded.metric)
        for i, figures in enumerate(loaded.figures):
            figure = figures.figures.get(loaded.metric)
            best_eval = figures.figures.get("eval_loss")
            name = Text.assemble(("━ ", _theme(self, self._colour(i))), figures.name)
            labels = " ".join([*(f"#{tag}" for tag in figures.tags), *([figures.note] if figures.note else [])])
            table.add_row(
                name,
                fmt.number(figure.final) if figure else "—",
                fmt.number(figure.best) if figure else "—",
                f"step {figure.best_step}" if figure and figure.best_step is not None else "",
                f"{fmt.number(best_eval.best)} @{best_eval.best_step}" if best_eval else "—",
                figures.state,
                labels,
                key=figures.run_id,
            )
        table.border_subtitle = "best = highest" if higher else "best = lowest"

    def _show_differences(self) -> None:
        comparison = self.comparison
        table = self.query_one("#compare-diff", Table)
        if not comparison.differences:
            table.set_columns([Col("setting", "setting")])
            table.add_row(Text("none: the frozen presets agree", style="italic"))
        else:
            table.set_columns([Col("setting", "setting")]
                              + [Col(f"run{i}", run.name) for i, run in enumerate(comparison.runs)])
        for key, values in comparison.differences:
            table.add_row(key, *(cmp.setting_text(value) for value in values), key=key)
        count = len(comparison.differences)
        table.border_title = f"settings that differ ({count})" if count else "settings that differ"

    # ----------------------------------------------------------------- actions

    def action_back(self) -> None:
        self.app.pop_screen()

    def _step_metric(self, by: int) -> None:
        metrics = self.comparison.metrics if self.comparison else []
        if not metrics:
            return
        index = metrics.index(self.metric) + by if self.metric in metrics else 0
        self.metric = metrics[index % len(metrics)]
        self.load()

    def action_next_metric(self) -> None:
        self._step_metric(1)

    def action_previous_metric(self) -> None:
        self._step_metric(-1)

    def action_next_align(self) -> None:
        self.align = cmp.ALIGNMENTS[(cmp.ALIGNMENTS.index(self.align) + 1) % len(cmp.ALIGNMENTS)]
        self.load()

    def action_toggle_log_scale(self) -> None:
        self.log_scale = not self.log_scale
        if self.loaded is not None:
            self._draw()

    def action_zoom(self) -> None:
        if self.maximized is not None:
            self.minimize()
        else:
            self.maximize(self.query_one("#compare-plot", MetricPlot))


def _theme(widget, name: str) -> str:
    variables = widget.app.theme_variables
    return variables.get(name) or variables.get("foreground", "white")
