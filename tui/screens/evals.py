"""A run's evaluations: one row per eval job; for the highlighted one a bar per metric, base
against fine-tuned, and every generated sample side by side."""

from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.content import Content
from textual.widgets import DataTable, Static

from tui import format as fmt
from tui.format import user_message
from tui.screens.polled import PolledScreen
from tui.widgets.status import KeyFooter, StatusLine
from tui.widgets.table import Col, Table

# Mirrors engine.metrics_text (not imported: the TUI never loads the engine to draw).
GENERATION_METRICS = (("exact_match", "exact match", 1.0), ("token_f1", "token F1", 1.0), ("rouge_l", "ROUGE-L", 1.0),
                      ("bleu", "BLEU", 100.0))
SIDE_NAMES = {"base": "base", "finetuned": "fine-tuned"}
BAR_WIDTH = 24


def metric_rows(results: dict) -> list[tuple[str, dict[str, float | None], float, bool]]:
    """(label, value per side, full-scale value, lower is better) for each metric the results hold."""
    sides = results.get("sides", [])
    loss = results.get("loss", {})
    generation = results.get("generation", {})
    rows = []
    losses = {s: loss.get(s, {}).get("eval_loss") for s in sides}
    if any(v is not None for v in losses.values()):
        rows.append(("eval loss", losses, max((v for v in losses.values() if v is not None), default=1.0) or 1.0, True))
    preference = results.get("preference", {})  # a preference run's evaluation: how each side ranks the pairs
    for key, label in (("accuracy", "preference accuracy"), ("margin", "mean margin (log-prob)")):
        values = {s: preference.get(s, {}).get(key) for s in sides}
        if any(v is not None for v in values.values()):
            scale = 1.0 if key == "accuracy" else max((abs(v) for v in values.values() if v is not None), default=1.0) or 1.0
            rows.append((label, values, scale, False))
    for key, label, scale in GENERATION_METRICS:
        values = {s: generation.get(s, {}).get(key) for s in sides}
        if any(v is not None for v in values.values()):
            rows.append((label + (" (0–100)" if scale == 100.0 else ""), values, scale, False))
    return rows


def bars_text(results: dict, colours: dict[str, str], width: int | None = None) -> Text:
    """A bar per metric and side; the better side of each metric in bold. Within `width` cells, one
    line per metric: narrower bars, and "lower is better" shortened to ↓, rather than a line that
    wraps in the middle of a bar."""
    sides = results.get("sides", [])
    rows = metric_rows(results)
    text = Text()
    style = {"base": "dim", "finetuned": colours.get("accent", "")}
    label_width, bar_width, better = 18, BAR_WIDTH, "  lower is better"
    per_side = 1 + 10 + 1 + 1 + 9  # " fine-tuned " + bar + " 12.3456"
    if width is not None and label_width + len(sides) * (per_side + bar_width) + len(better) > width:
        label_width = max((len(label) for label, *_ in rows), default=0) + 2  # room for " ↓"
        bar_width = max(4, min(BAR_WIDTH, (width - label_width) // max(1, len(sides)) - per_side))
        better = ""
    for label, values, scale, lower_better in rows:
        present = {s: v for s, v in values.items() if v is not None}
        best = (min if lower_better else max)(present, key=present.get) if len(present) > 1 else None
        shown = label + (" ↓" if lower_better and not better else "")
        text.append(f"{shown:<{label_width}}", style="bold")
        for side in sides:
            value = values.get(side)
            fraction = None if value is None else value / scale if scale else 0.0
            text.append(f" {SIDE_NAMES.get(side, side):>10} ", style=style.get(side, ""))
            text.append(fmt.bar(fraction, bar_width), style=style.get(side, ""))
            text.append(f" {fmt.number(value):>9}", style="bold" if side == best else "")
        if lower_better and better:
            text.append(better, style="dim")
        text.append("\n")
    if not better and any(lower for *_, lower in rows):
        text.append("↓ lower is better\n", style="dim")
    return text


# At 80 columns the row count and the age give way first.
LIST_COLUMNS = (Col("when", "age", give_way=2), Col("what", "evaluated"), Col("rows", "rows", give_way=3),
                Col("loss", "eval loss base → ft"), Col("em", "exact match base → ft", give_way=1), Col("status", "status"))


class EvalsScreen(PolledScreen):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("enter", "read_sample", "Read in full"),
        Binding("tab", "focus_next", "Switch table", show=False),
        Binding("k", "checkpoints", "Checkpoints"),
    ]
    DEFAULT_CSS = """
    EvalsScreen #evals-head { height: auto; padding: 0 1; background: $boost; }
    EvalsScreen #evals-list { height: auto; max-height: 8; }
    EvalsScreen #evals-bars { height: auto; padding: 0 1; margin: 1 0 0 0; }
    EvalsScreen #evals-samples { height: 1fr; }
    """

    def __init__(self, run_id: str):
        super().__init__()
        self.run_id = run_id
        self.run = None
        self.records: list = []
        self._loader = None
        self._shown_index: int | None = None

    def compose(self) -> ComposeResult:
        yield StatusLine("Evals")
        yield Static("", id="evals-head")
        yield Table(cursor_type="row", zebra_stripes=True, id="evals-list")
        yield Static("", id="evals-bars")
        yield Table(cursor_type="row", zebra_stripes=True, id="evals-samples")
        yield KeyFooter()

    def on_mount(self) -> None:
        listing = self.query_one("#evals-list", Table)
        listing.set_columns(LIST_COLUMNS)
        listing.focus()
        self.subscribe_to_polls(self.reload)
        self.reload()

    # ----------------------------------------------------------------- reading

    def reload(self) -> None:
        if self._loader is not None and self._loader.is_running:
            return
        self._loader = self._load()

    @work(thread=True, group="evals-load", exit_on_error=False)
    def _load(self) -> None:
        from jobs.targets import eval_history

        backend = self.app.backend
        try:
            run = backend.store.get_run(self.run_id)
            records = eval_history(backend.store, backend.workspace, self.run_id) if run is not None else []
        except Exception as exc:
            self.app.call_from_thread(self.notify, user_message(exc), title="cannot read the evaluations", severity="error")
            return
        self.app.call_from_thread(self._show, run, records)

    def _show(self, run, records: list) -> None:
        changed = len(records) != len(self.records) or self.run is None
        self.run, self.records = run, records
        head = self.query_one("#evals-head", Static)
        if run is None:
            head.update(Content.from_markup("[$error]This run no longer exists.[/]"))
            return
        self.query_one(StatusLine).set_title(f"Evals · {run.name}")
        if not records:
            head.update(Content.from_markup(
                "[b]$name[/] has no evaluations yet: press [b]k[/] for its checkpoints, then [b]e[/] to evaluate one "
                "(or `tunebench eval $id`).", name=run.name, id=run.id))
        else:
            head.update(Content.from_markup("[b]$name[/] [$text-muted]$id · $n evaluation(s)[/]", name=run.name, id=run.id,
                                            n=str(len(records))))
        if changed:
            self._fill_list()

    def _fill_list(self) -> None:
        listing = self.query_one("#evals-list", DataTable)
        listing.clear()
        self._shown_index = None
        now = self.app.backend.clock()
        for index, record in enumerate(self.records):
            results = record.results
            target = results.get("target", {})
            what = f"checkpoint {target['checkpoint']}" if target.get("checkpoint") is not None else "final"
            losses = results.get("loss", {})
            generation = results.get("generation", {})
            sides = results.get("sides", [])

            def pair(section: dict, key: str) -> str:
                return " → ".join(fmt.number(section.get(s, {}).get(key)) for s in sides) if sides else "—"

            listing.add_row(fmt.duration(now - record.created_at), what, str(results.get("dataset", {}).get("rows", "—")),
                            pair(losses, "eval_loss"), pair(generation, "exact_match"), results.get("status", "?"), key=str(index))
        if self.records:
            listing.move_cursor(row=len(self.records) - 1, animate=False)  # the newest
            self._show_record(len(self.records) - 1)

    def on_resize(self) -> None:
        if self._shown_index is not None:  # the bars follow the width
            index, self._shown_index = self._shown_index, None
            self._show_record(index)

    @on(DataTable.RowHighlighted, "#evals-list")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_record(event.cursor_row)

    def _show_record(self, index: int) -> None:
        if index < 0 or index >= len(self.records) or index == self._shown_index:
            return
        self._shown_index = index
        results = self.records[index].results
        colours = self.app.theme_variables
        bars = self.query_one("#evals-bars", Static)
        samples = self.query_one("#evals-samples", Table)
        samples.clear(columns=True)
        if results.get("status") != "completed":
            bars.update(f"This evaluation did not complete ({results.get('status', '?')}: {results.get('reason', '')}).")
            return
        text = bars_text(results, {"accent": colours.get("accent", "")}, width=self.app.size.width - 2)
        dataset = results.get("dataset", {})
        text.append(f"{dataset.get('rows', '?')} rows ({dataset.get('split', '?')}), {dataset.get('generation_samples', 0)} generated answers "
                    "(tab, then enter, reads one in full); "
                    f"{self.records[index].out_dir or ''}", style="dim")
        bars.update(text)
        sides = results.get("sides", [])
        # The answers wrap in the width left over; Enter shows a cut one in full.
        samples.set_columns([Col("index", "#"), Col("prompt", "prompt", wrap=True), Col("reference", "reference", wrap=True),
                             *(col for side in sides for col in (Col(side, SIDE_NAMES.get(side, side), wrap=True),
                                                                 Col(f"{side}-score", "EM / F1")))])
        for sample in results.get("samples", []):
            cells: list = [str(sample["index"]), _clip(sample["prompt"]), _clip(sample["reference"])]
            for side in sides:
                answer = sample.get(side, {})
                right = answer.get("exact_match") == 1.0
                cells.append(Text(_clip(answer.get("output", "")), style=colours.get("success", "") if right else ""))
                cells.append(f"{answer.get('exact_match', 0):.0f} / {answer.get('token_f1', 0):.2f}")
            samples.add_row(*cells)

    @on(DataTable.RowSelected, "#evals-samples")
    def _sample_selected(self) -> None:
        self.action_read_sample()

    # ----------------------------------------------------------------- actions

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "read_sample":
            return self._sample() is not None
        return True

    def _sample(self) -> dict | None:
        if self._shown_index is None:
            return None
        samples = self.records[self._shown_index].results.get("samples", [])
        row = self.query_one("#evals-samples", Table).cursor_row
        return samples[row] if 0 <= row < len(samples) else None

    def action_read_sample(self) -> None:
        from tui.screens.detail import DetailScreen

        sample = self._sample()
        if sample is None:
            return
        results = self.records[self._shown_index].results
        sections = [("prompt", str(sample.get("prompt", ""))), ("reference", str(sample.get("reference", "")))]
        for side in results.get("sides", []):
            answer = sample.get(side, {})
            scores = f"exact match {answer.get('exact_match', 0):.0f} · token F1 {answer.get('token_f1', 0):.2f}"
            sections.append((f"{SIDE_NAMES.get(side, side)} ({scores})", str(answer.get("output", ""))))
        self.app.push_screen(DetailScreen(f"Sample {sample.get('index', '?')}", sections))

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_checkpoints(self) -> None:
        self.app.action_open_screen("checkpoints", self.run_id)


def _clip(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
