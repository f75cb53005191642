"""The Data screen: a preset's or a run's data as the model sees it.

Left, the `tunebench data` report: counts, what was dropped and why, lengths and their histogram.
Right, one training row at a time, rendered with the chat template and masked: the supervised
tokens (those that carry a label) highlighted. → / ← (or n / p) step through the rows, g jumps to
a source line, / searches the rows' text (enter again finds the next match).

With a run, the run's frozen preset; without, a picker over the workspace's presets. The engine
(engine.data.browse) is imported in a worker thread, the first time data is opened.
"""

from __future__ import annotations

import logging

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.screen import Screen
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from tui.format import user_message
from tui.widgets.status import KeyFooter, StatusLine

SUPERVISED = "bold black on green"
NOT_SUPERVISED = "dim"
HISTOGRAM_WIDTH = 16
SHOWN_TOKENS = 4000  # a very long row is cut here: the screen stays quick


def _name(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def report_text(report) -> Text:
    """The data report, compact: what `tunebench data` prints, for a side panel."""
    text = Text()
    text.append("format ", style="bold")
    text.append(f"{report.format}\n")
    text.append("files ", style="bold")
    text.append(", ".join(_name(f) for f in report.files) + "\n")
    text.append("template ", style="bold")
    text.append(f"{report.chat_template}" + ("" if report.assistant_only_loss else " (loss on every token)") + "\n")
    if report.sampled:
        text.append(f"streamed: a report of the first {report.sampled} rows\n", style="yellow")
    for warning in report.warnings:
        text.append(f"⚠ {warning}\n", style="yellow")
    text.append("\n")
    rows = [("rows read", f"{report.rows_read}" + (f" (+{report.val_rows_read} val)" if report.val_rows_read else "")),
            ("training", str(report.train_samples)), ("validation", str(report.eval_samples))]
    if report.limited:
        rows.append(("past max_samples", str(report.limited)))
    rows += [("truncated", f"{report.truncated} ({report.truncated_share:.1%}) at {report.max_length}"),
             ("tokens", f"{report.total_tokens:,}"),
             ("supervised", f"{report.supervised_tokens:,} ({report.supervised_share:.1%})"),
             ("duplicates", str(report.duplicates)), ("val in train", str(report.train_val_overlap))]
    for label, value in rows:
        text.append(f"{label:<13}", style="bold")
        text.append(f"{value}\n")
    dropped = sorted(report.dropped.items(), key=lambda kv: -kv[1]) + [
        (f"validation: {reason}", n) for reason, n in sorted(report.val_dropped.items(), key=lambda kv: -kv[1])]
    text.append("\ndropped", style="bold")
    if not dropped:
        text.append(" none\n")
    else:
        text.append("\n")
        for reason, n in dropped:
            text.append(f"{n:>6} ", style="red")
            text.append(f"{reason}\n")
    stats = report.length
    text.append("\ntokens per sample", style="bold")
    text.append(f" min {stats.min} · median {stats.median} · p95 {stats.p95} · max {stats.max}\n")
    top = max((b.count for b in report.histogram), default=0)
    for b in report.histogram:
        bar = "█" * (round(b.count / top * HISTOGRAM_WIDTH) if top else 0)
        text.append(f"{b.lo:>5}–{b.hi - 1:<5} ")
        text.append(bar, style="red" if b.lo >= report.max_length else "cyan")
        text.append(f" {b.count}\n")
    return text


def sample_text(sample) -> Text:
    """A row rendered: supervised tokens highlighted, or the reason it was dropped and its content."""
    if sample.dropped:
        text = Text(f"dropped: {sample.dropped}\n\n", style="bold red")
        text.append(sample.text)
        return text
    text = Text()
    shown = 0
    for segment, supervised in sample.segments:
        text.append(segment, style=SUPERVISED if supervised else NOT_SUPERVISED)
        shown += len(segment)
        if shown > SHOWN_TOKENS * 4:  # characters, roughly SHOWN_TOKENS tokens
            text.append(" … (cut here on screen)", style="italic")
            return text
    if sample.truncated:
        text.append(f" ✂ cut at data.max_length: {sample.raw_tokens - sample.tokens} more tokens not trained on", style="italic yellow")
    return text


def sample_heading(sample, count: int) -> Content:
    facts = (f"{sample.tokens} tokens, {sample.supervised} supervised" + (f", truncated from {sample.raw_tokens}" if sample.truncated else "")
             if not sample.dropped else "not trained on")
    return Content.from_markup("[b]row $n[/] of $count · $where · $split · $facts", n=str(sample.position + 1), count=str(count),
                               where=_name(sample.where), split=sample.split, facts=facts)


class DataScreen(Screen):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("right,n", "move(1)", "Next"),
        Binding("left,p", "move(-1)", "Previous"),
        Binding("g", "ask('line')", "Go to line"),
        Binding("slash", "ask('find')", "Search"),
        Binding("r", "reload", "Reload", show=False),
    ]
    DEFAULT_CSS = """
    DataScreen #data-head { height: auto; padding: 0 1; background: $boost; }
    DataScreen #data-body { height: 1fr; }
    DataScreen #data-presets { width: 24; height: 1fr; border: round $primary 40%; }
    DataScreen #data-presets:focus { border: round $accent; }
    DataScreen #data-report-scroll { width: 2fr; max-width: 52; height: 1fr; border: round $primary 40%; padding: 0 1; }
    DataScreen #data-browser { width: 3fr; height: 1fr; }
    DataScreen #data-sample-head { height: auto; padding: 0 1; }
    DataScreen #data-sample-scroll { height: 1fr; border: round $primary 40%; padding: 0 1; }
    DataScreen #data-sample-scroll:focus { border: round $accent; }
    DataScreen #data-ask { display: none; }
    DataScreen #data-ask.asking { display: block; }
    """

    def __init__(self, run_id: str | None = None):
        super().__init__()
        self.run_id = run_id
        self.source: str | None = None  # the preset name or run shown
        self.browser = None  # engine.data.browse.DataBrowser, once loaded
        self.position = 0
        self.sample = None  # the BrowsedSample shown
        self.asking: str | None = None  # "line" | "find" while the input is open
        self.last_search = ""

    def compose(self) -> ComposeResult:
        yield StatusLine("Data")
        yield Static("", id="data-head")
        with Horizontal(id="data-body"):
            if self.run_id is None:
                yield OptionList(id="data-presets")
            with VerticalScroll(id="data-report-scroll"):
                yield Static("", id="data-report")
            with Vertical(id="data-browser"):
                yield Static("", id="data-sample-head")
                with VerticalScroll(id="data-sample-scroll"):
                    yield Static("", id="data-sample")
        yield Input(id="data-ask", compact=True)
        yield KeyFooter()

    def on_mount(self) -> None:
        self.query_one("#data-report-scroll").border_title = "report"
        self.query_one("#data-sample-scroll").border_title = "rendered · supervised tokens highlighted"
        if self.run_id is not None:
            self._set_head("loading the run's data…")
            self._load()
            return
        presets = self.query_one("#data-presets", OptionList)
        presets.border_title = "preset"
        self._set_head("pick a preset (enter) to see its data")
        self._list_presets()
        presets.focus()

    def _set_head(self, message: str, style: str = "") -> None:
        self.query_one("#data-head", Static).update(Text(message, style=style))

    # ----------------------------------------------------------------- loading

    @work(thread=True, group="data-presets", exit_on_error=False)
    def _list_presets(self) -> None:
        try:
            entries = self.app.backend.preset_entries()
        except Exception as exc:
            self.app.call_from_thread(self._set_head, user_message(exc), "red")
            return
        self.app.call_from_thread(self._fill_presets, entries)

    def _fill_presets(self, entries) -> None:
        presets = self.query_one("#data-presets", OptionList)
        presets.clear_options()
        presets.add_options([Option(name, id=name) for name, _origin, _path in entries])

    @on(OptionList.OptionSelected, "#data-presets")
    def _preset_picked(self, event: OptionList.OptionSelected) -> None:
        self.source = event.option.id
        self._set_head(f"loading the data of preset {self.source}…")
        self._load()

    @work(thread=True, group="data-load", exclusive=True, exit_on_error=False)
    def _load(self) -> None:
        backend = self.app.backend
        try:
            preset, title = self._preset(backend)
            tunebench_data = logging.getLogger("tunebench.data")
            if not tunebench_data.handlers:  # its warnings are in the report; never on the terminal under the app
                tunebench_data.addHandler(logging.NullHandler())
            from engine.data.browse import open_browser

            browser = open_browser(preset, cache_dir=backend.workspace.cache_dir)
            first = browser.sample(0) if len(browser) else None
        except Exception as exc:
            self.app.call_from_thread(self._set_head, user_message(exc), "red")
            return
        self.app.call_from_thread(self._loaded, title, browser, first)

    def _preset(self, backend):
        from presets import PresetError, load_preset, load_preset_text, resolve_paths
        from presets.errors import TunebenchError

        if self.run_id is not None:
            run = backend.store.get_run(self.run_id)
            if run is None:
                raise TunebenchError(f"run {self.run_id} no longer exists")
            try:
                preset = load_preset_text(run.preset_yaml, str(backend.workspace.run_dir(run.id) / "preset.yaml"))
            except PresetError as exc:
                raise TunebenchError(f"run {run.id}: its frozen preset no longer validates ({exc.problems[0]})") from None
            title = f"run {run.name} ({run.id})"
        else:
            preset = resolve_paths(load_preset(self.source, backend.workspace.root), backend.workspace.root)
            title = f"preset {preset.name}"
        if preset.kind != "train":
            raise TunebenchError(f"{title} is a {preset.kind} preset: the Data screen shows the data of training presets and runs")
        return preset, title

    def _loaded(self, title: str, browser, first) -> None:
        self.browser, self.position = browser, 0
        self.query_one(StatusLine).set_title(f"Data · {title}")
        report = browser.report
        self._set_head(f"{title}: {report.train_samples} training / {report.eval_samples} validation samples"
                   + (f"; browsing the first {len(browser)} rows" if browser.limited else ""))
        self.query_one("#data-report", Static).update(report_text(report))
        self._show_row(first)
        if self.run_id is not None:
            self.query_one("#data-sample-scroll").focus()

    def _show_row(self, sample) -> None:
        self.sample = sample
        if sample is None:
            self.query_one("#data-sample-head", Static).update("no rows to show")
            self.query_one("#data-sample", Static).update("")
            return
        self.position = sample.position
        self.query_one("#data-sample-head", Static).update(sample_heading(sample, len(self.browser)))
        self.query_one("#data-sample", Static).update(sample_text(sample))
        self.query_one("#data-sample-scroll", VerticalScroll).scroll_home(animate=False)
        self.refresh_bindings()

    @work(thread=True, group="data-sample", exclusive=True, exit_on_error=False)
    def _render_row(self, position: int) -> None:
        try:
            sample = self.browser.sample(position)
        except Exception as exc:
            self.app.call_from_thread(self.notify, user_message(exc), title="cannot render this row", severity="error")
            return
        self.app.call_from_thread(self._show_row, sample)

    @work(thread=True, group="data-sample", exclusive=True, exit_on_error=False)
    def _find_row(self, needle: str, start: int) -> None:
        found = self.browser.find(needle, start)
        if found is None:
            self.app.call_from_thread(self.notify, f"no row holds {needle!r}", severity="warning")
            return
        self.app.call_from_thread(self._show_row, self.browser.sample(found))

    # ----------------------------------------------------------------- actions

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("move", "ask"):
            return self.browser is not None and len(self.browser) > 0
        return True

    def action_move(self, delta: int) -> None:
        if self.browser is None or not len(self.browser):
            return
        target = max(0, min(len(self.browser) - 1, self.position + delta))
        if target != self.position:
            self.position = target  # a key held down moves on before the render lands
            self._render_row(target)

    def action_ask(self, what: str) -> None:
        ask = self.query_one("#data-ask", Input)
        self.asking = what
        ask.placeholder = "source line number, enter to go" if what == "line" else "text to find in the rows, enter for the next match"
        ask.value = self.last_search if what == "find" else ""
        ask.add_class("asking")
        ask.focus()

    @on(Input.Submitted, "#data-ask")
    def _asked(self, event: Input.Submitted) -> None:
        value = event.value.strip()
        if self.asking == "line":
            self._close_ask()
            if not value.isdigit():
                self.notify(f"{value!r} is not a line number", severity="warning")
                return
            found = self.browser.at_line(int(value))
            if found is None:
                self.notify(f"no row was read from line {value} (dropped rows are not browsable)", severity="warning")
                return
            self.position = found
            self._render_row(found)
        elif value:
            # The input stays open: enter again finds the next match.
            self.last_search = value
            self._find_row(value, self.position)

    def _close_ask(self) -> None:
        ask = self.query_one("#data-ask", Input)
        ask.remove_class("asking")
        self.asking = None
        self.query_one("#data-sample-scroll").focus()

    def action_back(self) -> None:
        if self.asking:
            self._close_ask()
            return
        self.app.pop_screen()

    def action_reload(self) -> None:
        if self.run_id is not None or self.source is not None:
            self._load()
