"""One run, live: plots, progress, key figures, the log and the doctor's findings.

A thread worker reads only the rows newer than the last it saw (DashboardFeed) and posts a
DashboardUpdate; the screen draws it. A finished run is read once more after it ends, then the
screen stops polling and shows the same, frozen. If the run starts again (resume), polling resumes.
"""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal
from textual.content import Content
from textual.message import Message
from textual.widgets import ProgressBar

from tui import format as fmt
from tui.format import user_message
from tui.feed import PLOT_TITLES, PLOTS, PREFERENCE_PLOTS, DashboardFeed, DashboardUpdate, PlotLine
from tui.fixes import change_text, fix_copy, fixable
from tui.screens.modals import FixScreen, confirm_cancel
from tui.screens.polled import PolledScreen
from tui.widgets.panels import FindingsPanel, KeyFigures, WrappedLog
from tui.widgets.plot import Line, MetricPlot
from tui.widgets.status import KeyFooter, StatusLine
from tui.widgets.text_line import TextLine

SMOOTHABLE = {"loss", "grad_norm", "tokens", "preference", "rewards"}
VALUE_FORMATS = {
    "lr": lambda v: f"{v:.2e}",
    "memory": lambda v: f"{v:.1f}",
    "tokens": lambda v: f"{v:,.0f}",
}


class DashboardScreen(PolledScreen):
    # The footer's order: what acts on the run first, the view toggles after.
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("c", "cancel_run", "Cancel run"),
        Binding("r", "resume_run", "Resume"),
        Binding("v", "toggle_log_view", "Log/events"),
        Binding("z", "zoom", "Zoom plot"),
        Binding("m", "toggle_smoothing", "Smooth"),
        Binding("g", "toggle_log_scale", "Log scale"),
        # Shown only while a finding suggests a change (check_action).
        Binding("f", "fix_preset", "Fix preset"),
        Binding("x", "export", "Export plots + CSV", show=False),
    ]

    class Updated(Message):
        def __init__(self, update: DashboardUpdate):
            super().__init__()
            self.update = update

    def __init__(self, run_id: str):
        super().__init__()
        self.run_id = run_id
        self.smoothing = False
        self.log_scale = False
        self.show_events = False
        self.run = None
        self.frozen = False
        self._worker = None
        self._plots: dict[str, list[PlotLine]] = {}
        self._event_lines: list[str] = []
        self._log_lines: list[str] = []
        self._findings: list[dict] = []

    def compose(self) -> ComposeResult:
        yield StatusLine("Run")
        yield TextLine("", id="dash-head")
        with Horizontal(id="dash-progress"):
            yield ProgressBar(total=None, show_eta=False, id="dash-bar")
            yield TextLine("", id="dash-eta")
        with Grid(id="plots"):
            for plot_id in PLOTS:
                yield MetricPlot(PLOT_TITLES[plot_id], id=f"plot-{plot_id}")
            for plot_id in PREFERENCE_PLOTS:  # shown for preference runs only (the grid's class)
                yield MetricPlot(PLOT_TITLES[plot_id], id=f"plot-{plot_id}", classes="preference-plot")
            yield KeyFigures(id="figures")
        with Horizontal(id="dash-bottom"):
            yield WrappedLog(max_lines=self.app.config.log_tail_lines, id="run-log")
            yield FindingsPanel(id="findings")
        yield KeyFooter()

    def on_mount(self) -> None:
        config = self.app.config
        self.feed = DashboardFeed(self.app.backend, self.run_id, max_points=config.plot_points,
                                  smoothing=config.smoothing)
        self.query_one("#run-log", WrappedLog).border_title = "run.log"
        self.query_one("#plot-memory", MetricPlot).set_empty("no GPU memory reported")
        self.subscribe_to_polls(self._follow_state)
        self._timer = self.set_interval(config.poll_interval, self._poll_if_shown)
        self.poll()

    # ----------------------------------------------------------------- polling

    def _poll_if_shown(self) -> None:
        if not self.skip_while_hidden():
            self.poll()

    def catch_up(self) -> None:
        self._follow_state()
        self.poll()

    def poll(self) -> None:
        if self.frozen or (self._worker is not None and self._worker.is_running):
            return
        self._worker = self._read()

    @work(thread=True, group="dashboard", exit_on_error=False)
    def _read(self) -> None:
        try:
            update = self.feed.read()
        except Exception as exc:
            self.app.call_from_thread(self._failed, exc)
            return
        self.post_message(self.Updated(update))

    def _failed(self, exc: Exception) -> None:
        message = user_message(exc)
        if getattr(self, "_last_error", None) != message:
            self._last_error = message
            self.notify(message, title="cannot read the run", severity="error")

    def _follow_state(self) -> None:
        """A frozen (finished) run that becomes active again (resume) is followed live again."""
        overview = self.app.overview
        run = overview.run(self.run_id) if overview else None
        if self.frozen and run is not None and run.state in fmt.ACTIVE_STATES:
            self.frozen = False
            self.poll()

    @on(Updated)
    def _apply(self, message: Updated) -> None:
        update = message.update
        if update.run is None:
            self.query_one("#dash-head", TextLine).show(Content.from_markup("[$error]This run was deleted.[/]"))
            self.frozen = True
            return
        run = self.run = update.run
        self.app.selected_run_id = run.id
        self.query_one(StatusLine).set_title(f"Run {run.name}")
        self._show_head(run)
        self._show_progress(run, update)
        self.query_one("#plots").set_class(update.preference, "preference")
        if update.plots is not None:
            self._plots = update.plots
            self._draw_plots()
        self.query_one(KeyFigures).show(update.figures)
        if update.log_text:
            lines = update.log_text.rstrip("\n").split("\n")
            if update.log_truncated:
                lines.insert(0, "… (earlier lines are in run.log)")
            self._log_lines = (self._log_lines + lines)[-self.app.config.log_tail_lines:]
            if not self.show_events:
                self.query_one("#run-log", WrappedLog).write_lines(lines)
        if update.events:
            lines = [self._event_line(e) for e in update.events]
            self._event_lines = (self._event_lines + lines)[-self.app.config.log_tail_lines:]
            if self.show_events:
                self.query_one("#run-log", WrappedLog).write_lines(lines)
        if update.findings is not None:
            self._findings = update.findings
            self.query_one(FindingsPanel).show(update.findings)
        # One last read after the run ends has everything: stop polling (the view is frozen).
        if run.state not in fmt.ACTIVE_STATES and update.rows_read == 0 and not update.log_text:
            self.frozen = True
        self.refresh_bindings()

    @staticmethod
    def _event_line(event) -> str:
        mark = {"error": "✗", "warning": "⚠"}.get(event.level, "·")
        step = f" [step {event.step}]" if event.step is not None else ""
        return f"{mark}{step} {event.text}".replace("\n", " ")

    # ----------------------------------------------------------------- drawing

    def _show_head(self, run) -> None:
        style = fmt.STATE_STYLES.get(run.state, "")
        parts = [
            Content.from_markup("[b]$name[/]", name=run.name),
            Content.from_markup(f"[{style}]$icon $state[/]", icon=fmt.STATE_ICONS.get(run.state, ""), state=run.state),
            Content.from_markup("[$text-muted]$kind · $id[/]", kind=run.kind, id=run.id),
        ]
        if run.gpu:
            parts.append(Content(f"GPU {run.gpu}" if run.gpu != "cpu" else "CPU"))
        head = Content("  ").join(parts)
        if run.error:
            head += Content.from_markup("\n[$error]$error[/]", error=run.error.splitlines()[0])
        if run.advice:
            head += Content.from_markup("\n→ $advice", advice=run.advice.splitlines()[0])
        self.query_one("#dash-head", TextLine).show(head)

    def _show_progress(self, run, update: DashboardUpdate) -> None:
        bar = self.query_one("#dash-bar", ProgressBar)
        if run.total_steps:
            bar.update(total=run.total_steps, progress=min(run.step, run.total_steps))
        elif run.state not in fmt.ACTIVE_STATES:
            bar.update(total=1, progress=1 if run.state == "completed" else 0)  # no endless "busy" animation
        now = self.app.backend.clock()
        elapsed = run.running_time(now)
        text = f"step {run.step}/{run.total_steps or '?'}"
        if run.state == "running":
            pace = update.pace
            left = pace.seconds_left if pace and pace.seconds_left is not None else fmt.eta(run.step, run.total_steps, elapsed)
            if left is not None:
                text += f" · ETA {fmt.duration(left)}"
            if pace:
                text += f" · {pace.steps_per_s:.2f} step/s"
        elif run.state == "queued":
            text += " · waiting in the queue"
        else:
            text += f" · {run.state} after {fmt.duration(elapsed)}"
        self.query_one("#dash-eta", TextLine).show(text)

    def _draw_plots(self) -> None:
        shown = [*PLOTS, *PREFERENCE_PLOTS] if self.query_one("#plots").has_class("preference") else PLOTS
        for plot_id in shown:
            plot = self.query_one(f"#plot-{plot_id}", MetricPlot)
            lines = self._plots.get(plot_id, [])
            smooth = self.smoothing and plot_id in SMOOTHABLE
            # Evaluations are few and already averaged over the whole validation set: never smoothed.
            drawn = [Line(l.label, *(l.smoothed if smooth and not l.label.startswith("eval") else l.raw), l.colour)
                     for l in lines]
            notes = []
            if smooth:
                notes.append("smoothed")
            log_y = self.log_scale and plot_id in ("loss", "grad_norm")
            if log_y:
                notes.append("log")
            value = VALUE_FORMATS.get(plot_id, fmt.number)
            values = {l.label: value(l.last) for l in lines if l.last is not None}
            plot.set_lines(drawn, log_y=log_y, note=" ".join(notes), values=values)

    # ----------------------------------------------------------------- actions

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 1:
            self.app.pop_screen()
        else:
            self.app.action_open_screen("runs")

    def action_toggle_smoothing(self) -> None:
        self.smoothing = not self.smoothing
        self._draw_plots()
        self.notify(f"Smoothing {'on' if self.smoothing else 'off'} (EMA {self.app.config.smoothing}).", timeout=2)

    def action_toggle_log_scale(self) -> None:
        self.log_scale = not self.log_scale
        self._draw_plots()
        self.notify(f"Log scale {'on' if self.log_scale else 'off'} (loss and grad norm).", timeout=2)

    def action_toggle_log_view(self) -> None:
        self.show_events = not self.show_events
        log = self.query_one("#run-log", WrappedLog)
        log.border_title = "events" if self.show_events else "run.log"
        log.set_lines(self._event_lines if self.show_events else self._log_lines)

    def action_zoom(self) -> None:
        if self.maximized is not None:
            self.minimize()
            return
        focused = self.focused
        target = focused if isinstance(focused, MetricPlot) else self.query_one("#plot-loss", MetricPlot)
        self.maximize(target)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        run = self.run
        if action == "cancel_run":
            return bool(run and run.state in fmt.ACTIVE_STATES) or None
        if action == "resume_run":
            return bool(run and run.state in ("interrupted", "cancelled", "failed")) or None
        if action == "fix_preset":
            return bool(run and fixable(self._findings))
        return True

    def action_cancel_run(self) -> None:
        if self.run is not None:
            confirm_cancel(self.app, self.run)

    def action_resume_run(self) -> None:
        if self.run is None:
            return
        name = self.run.name
        self.app.call_blocking(f"resume {name}", self.app.backend.resume, self.run_id,
                               then=lambda _: self.notify(f"{name} queued to resume.", timeout=4))

    # ----------------------------------------------------------------- advice to action, export

    def action_fix_preset(self) -> None:
        """A copy of the run's preset with a finding's suggested change, opened in the Presets editor."""
        found = fixable(self._findings)
        if not found:
            self.notify("No finding of this run suggests a change to its preset.", severity="warning")
        elif len(found) == 1:
            self._fix(found[0])
        else:
            self.app.push_screen(FixScreen(found), lambda finding: finding and self._fix(finding))

    def _fix(self, finding: dict) -> None:
        change = dict(finding["change"])

        def made(result) -> None:
            name, _path = result
            self.app.notify(f"{name}: {change_text(change)}. Review it, then ctrl+r submits.",
                            title=f"fix for {finding.get('rule')}", timeout=8)
            self.app.action_open_screen("presets", preset=name)

        self.app.call_blocking("copy the preset with the fix", fix_copy, self.app.backend.workspace,
                               self.run_id, change, then=made)

    def action_export(self) -> None:
        """The plots as shown (SVG) and every metric (CSV) into runs/<id>/exports/."""
        from jobs.export import export_dir, save_metrics_csv

        run = self.run
        if run is None:
            return
        stem = f"{run.name}-step{run.step}"
        svg = self.app.export_screenshot(title=f"{run.name} · step {run.step}")  # the screen's frame: on this thread
        backend = self.app.backend

        def save() -> list:
            folder = export_dir(backend.workspace, run.id)
            (folder / f"{stem}.svg").write_text(svg, encoding="utf-8")
            return [folder / f"{stem}.svg", save_metrics_csv(backend.store, backend.workspace, run.id, stem)]

        self.app.call_blocking("export the plots and metrics", save,
                               then=lambda paths: self.notify(f"Saved {paths[0]} and {paths[1].name}.", timeout=6))
