"""Small dialogs: confirm, ask for a name, submit a preset, show a diff."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.content import Content
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.suggester import SuggestFromList
from textual.widgets import Button, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from tui.format import user_message


class ConfirmScreen(ModalScreen[bool]):
    """Yes or no; `y`/enter confirms, `n`/escape declines."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str, confirm_label: str = "Yes", decline_label: str = "Cancel"):
        super().__init__()
        self.question = question
        self.confirm_label = confirm_label
        self.decline_label = decline_label

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.question, classes="dialog-text")
            with Horizontal(classes="dialog-buttons"):
                yield Button(f"{self.confirm_label} (y)", variant="error", id="yes")
                yield Button(f"{self.decline_label} (n)", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()  # the safe answer is the default

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


def confirm_cancel(app, run) -> None:
    """Cancel `run` once the user says yes: the one way every screen cancels, so `c` asks first
    everywhere (a stray key must not cost a run)."""
    if run.state == "running":
        question = Content.from_markup(
            "Cancel [b]$name[/] (running, step $step)?\nIt stops at the next step and saves a checkpoint "
            "there; [b]r[/] resumes it later.", name=run.name, step=str(run.step))
        done = f"{run.name}: cancel requested (it stops at the next step and saves a checkpoint)"
    else:
        question = Content.from_markup("Take [b]$name[/] off the queue?\n[b]t[/] queues it again later.",
                                       name=run.name)
        done = f"{run.name} cancelled"

    def answered(yes: bool | None) -> None:
        if yes:
            app.call_blocking(f"cancel {run.name}", app.backend.cancel, run.id,
                              then=lambda _: app.notify(done, timeout=4))

    app.push_screen(ConfirmScreen(question, "Cancel run", decline_label="Keep it"), answered)


class NameScreen(ModalScreen[str | None]):
    """Ask for a preset name (save as, duplicate)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, prompt: str, initial: str = "", taken: set[str] | None = None):
        super().__init__()
        self.prompt = prompt
        self.initial = initial
        self.taken = taken or set()

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.prompt, classes="dialog-text")
            yield Input(self.initial, id="name", placeholder="name (letters, digits, - and _)")
            yield Static("", id="name-error", classes="error-text")

    def on_mount(self) -> None:
        self.query_one(Input).cursor_blink = self.app.config.cursor_blink

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        name = event.value.strip()
        problem = name_problem(name)
        if problem is None and name in self.taken:
            problem = f"a workspace preset named {name} exists already"
        if problem:
            self.query_one("#name-error", Static).update(problem)
            return
        self.dismiss(name)

    def action_cancel(self) -> None:
        self.dismiss(None)


def name_problem(name: str) -> str | None:
    """What is wrong with a name the user typed, by the rule the CLI and the store apply."""
    from presets.loader import NAME_RULE, PresetError, check_name  # the preset machinery: loaded on first use

    if not name:
        return "type a name"
    try:
        check_name(name)
    except PresetError as exc:
        return f"{exc.problems[0].message} — {NAME_RULE}"
    return None


class DiffScreen(ModalScreen[None]):
    """A unified diff, scrollable; escape or q closes it."""

    BINDINGS = [Binding("escape,q", "close", "Close")]

    def __init__(self, title: str, diff_text: str):
        super().__init__()
        self.title_text = title
        self.diff_text = diff_text

    def compose(self) -> ComposeResult:
        from rich.syntax import Syntax  # pygments: loaded when a diff is first shown, not at start-up

        with Vertical(classes="dialog wide"):
            yield Label(self.title_text, classes="dialog-title")
            with VerticalScroll(id="diff-scroll"):
                if self.diff_text:
                    yield Static(Syntax(self.diff_text, "diff", theme="ansi_dark", background_color="default"))
                else:
                    yield Static("No differences.")
            yield Label("escape closes", classes="dialog-hint")

    def on_mount(self) -> None:
        self.query_one("#diff-scroll").focus()

    def action_close(self) -> None:
        self.dismiss(None)


@dataclass
class SubmitRequest:
    preset: str
    overrides: list[str] = field(default_factory=list)
    name: str | None = None


def parse_overrides(text: str) -> list[str]:
    """`training.lr=1e-4 data.system_prompt="Be brief"` → ["training.lr=1e-4", "data.system_prompt=Be brief"]."""
    try:
        tokens = shlex.split(text)
    except ValueError as exc:
        raise ValueError(f"overrides: {exc} (close the quote)") from None
    bad = [t for t in tokens if "=" not in t]
    if bad:
        raise ValueError(f"overrides: {bad[0]!r} is not key.path=value")
    return tokens


def cost_text(cost, problem: str | None = None) -> Content:
    """The Submit dialog's cost lines (jobs.estimate.SubmitCost)."""
    from tui import format as fmt

    if cost is None:
        return Content.from_markup("[$text-muted]cost: unknown ($problem)[/]", problem=problem or "?")
    if cost.steps is not None:
        steps = f"{cost.steps:,} steps" + (f" ({cost.samples:,} samples)" if cost.samples else "")
    else:
        steps = f"steps unknown: {cost.problem}"
    head = Content.from_markup("[b]cost[/]   $steps", steps=steps)
    if cost.seconds is not None:
        head += Content.from_markup(" · ≈ [b]$time[/] [$text-muted]($basis)[/]", time=fmt.duration(cost.seconds),
                                    basis=cost.basis or "")
    elif cost.basis:
        head += Content.from_markup(" · [$text-muted]time: $basis[/]", basis=cost.basis)
    lines = [head]
    if cost.memory:
        style = "$error" if cost.fits is False else ("$success" if cost.fits else "$text-muted")
        lines.append(Content.from_markup(f"[$text-muted]memory[/] [{style}]$memory[/]", memory=cost.memory))
    return Content("\n").join(lines)


SHORT_HEIGHT = 30


class SubmitScreen(ModalScreen[SubmitRequest | None]):
    """Pick a preset, add --set overrides, optionally name the run. Validated before it closes.
    What the run will cost (steps, memory preflight, duration) is shown as soon as the preset is known."""

    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+r", "submit", "Submit")]
    # The cost reads the data and the model config: estimated once typing pauses, not per key.
    COST_DELAY = 0.5

    def __init__(self, preset: str | None = None, overrides: str = "", text: str | None = None):
        """`text`: submit this YAML (the presets editor's, maybe unsaved) instead of a preset file."""
        super().__init__()
        self.initial_preset = preset
        self.initial_overrides = overrides
        self.text = text
        self.entries: list[tuple[str, str, str]] = []  # (name, origin, description)
        self._cost_timer = None
        self._cost_generation = 0  # a cost applies to the inputs it was computed from only
        self.cost = None  # jobs.estimate.SubmitCost of the current inputs, once computed

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide", id="submit-dialog"):
            yield Label("Submit a run", classes="dialog-title")
            if self.text is not None:
                yield Label(f"preset: {self.initial_preset} (the editor's text, saved or not)")
            else:
                yield Input(self.initial_preset or "", id="preset", placeholder="preset name or YAML path")
                yield OptionList(id="preset-list")
            yield Input(self.initial_overrides, id="overrides",
                        placeholder="overrides: training.max_steps=500 training.lr=1e-4")
            yield Input("", id="run-name", placeholder="run name (optional)")
            yield Static("", id="submit-cost")
            yield Static("", id="submit-error", classes="error-text")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Submit (enter)", variant="primary", id="submit")
                yield Button("Cancel (esc)", id="cancel")

    def on_resize(self) -> None:
        # A short terminal: a shorter preset list keeps the cost lines and the buttons on screen.
        self.set_class(self.size.height < SHORT_HEIGHT, "short")

    def on_mount(self) -> None:
        for widget in self.query(Input):
            widget.cursor_blink = self.app.config.cursor_blink
        if self.text is not None:
            self.query_one("#overrides", Input).focus()
            self._estimate_soon()
            return
        self.query_one("#preset", Input).focus()
        self._load_entries()

    @work(thread=True, exit_on_error=False)
    def _load_entries(self) -> None:
        from presets import load_preset

        entries = []
        backend = self.app.backend
        for name, origin, path in backend.preset_entries():
            try:
                description = load_preset(str(path), backend.workspace.root).description
            except Exception:
                description = "(invalid — open it on the Presets screen)"
            entries.append((name, origin, description))
        self.app.call_from_thread(self._show_entries, entries)

    def _show_entries(self, entries: list[tuple[str, str, str]]) -> None:
        self.entries = entries
        preset_input = self.query_one("#preset", Input)
        preset_input.suggester = SuggestFromList([name for name, _, _ in entries], case_sensitive=False)
        if not preset_input.value and entries:
            preset_input.value = entries[0][0]
        self._filter(preset_input.value)

    @on(Input.Changed, "#preset")
    def _preset_typed(self, event: Input.Changed) -> None:
        self._filter(event.value)
        self._estimate_soon()

    # ----------------------------------------------------------------- cost

    @on(Input.Changed, "#overrides")
    def _estimate_soon(self) -> None:
        if self._cost_timer is not None:
            self._cost_timer.stop()
        self._cost_generation += 1
        self.cost = None
        self._cost_timer = self.set_timer(self.COST_DELAY, self._estimate)

    def _estimate(self) -> None:
        preset = self.initial_preset if self.text is not None else self.query_one("#preset", Input).value.strip()
        try:
            overrides = parse_overrides(self.query_one("#overrides", Input).value)
        except ValueError:
            return  # said when submitting; no cost for inputs that do not parse
        if not preset:
            self.query_one("#submit-cost", Static).update("")
            return
        self.query_one("#submit-cost", Static).update(
            Content.from_markup("[$text-muted]cost: reading the data and the model to estimate steps, memory, time…[/]"))
        self._compute_cost(self._cost_generation, preset, overrides)

    @work(thread=True, group="submit-cost", exit_on_error=False)
    def _compute_cost(self, generation: int, preset_ref: str, overrides: list[str]) -> None:
        from jobs.estimate import submit_cost
        from presets import load_preset, load_preset_text

        backend = self.app.backend
        try:
            if self.text is not None:
                preset = load_preset_text(self.text, preset_ref, overrides)
            else:
                preset = load_preset(preset_ref, backend.workspace.root, overrides)
            gpus = backend.gpus()
            free = max((g.total - g.used for g in gpus), default=None)
            cost = submit_cost(backend.workspace, preset, backend.store, gpu_free_bytes=free)
        except Exception as exc:
            self.app.call_from_thread(self._cost_ready, generation, None, user_message(exc))
            return
        self.app.call_from_thread(self._cost_ready, generation, cost, None)

    def _cost_ready(self, generation: int, cost, problem: str | None) -> None:
        if generation != self._cost_generation or not self.is_attached:
            return  # the inputs changed meanwhile: a newer estimate is on its way
        self.cost = cost
        self.query_one("#submit-cost", Static).update(cost_text(cost, problem))

    def _filter(self, text: str) -> None:
        options = self.query_one("#preset-list", OptionList)
        options.clear_options()
        needle = text.strip().lower()
        matching = [e for e in self.entries if needle in e[0].lower()] or self.entries
        for name, origin, description in matching:
            options.add_option(Option(Content.assemble(name, "  ", (f"{origin} · {description}", "dim")), id=name))
        exact = next((i for i, e in enumerate(matching) if e[0] == text.strip()), 0 if matching else None)
        options.highlighted = exact

    @on(OptionList.OptionSelected, "#preset-list")
    def _picked(self, event: OptionList.OptionSelected) -> None:
        with self.prevent(Input.Changed):
            self.query_one("#preset", Input).value = event.option.id or ""
        self.query_one("#overrides", Input).focus()
        self._estimate_soon()

    @on(Input.Submitted)
    @on(Button.Pressed, "#submit")
    def action_submit(self) -> None:
        preset = self.initial_preset if self.text is not None else self.query_one("#preset", Input).value.strip()
        if not preset:
            self._error("type or pick a preset")
            return
        try:
            overrides = parse_overrides(self.query_one("#overrides", Input).value)
        except ValueError as exc:
            self._error(str(exc))
            return
        name = self.query_one("#run-name", Input).value.strip() or None
        self._validate(SubmitRequest(preset, overrides, name))

    @work(thread=True, exclusive=True, exit_on_error=False)
    def _validate(self, request: SubmitRequest) -> None:
        from presets import load_preset, load_preset_text

        try:
            if self.text is not None:
                load_preset_text(self.text, request.preset, request.overrides)
            else:
                load_preset(request.preset, self.app.backend.workspace.root, request.overrides)
        except Exception as exc:
            self.app.call_from_thread(self._error, user_message(exc))
            return
        self.app.call_from_thread(self.dismiss, request)

    def _error(self, text: str) -> None:
        self.query_one("#submit-error", Static).update(text)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class FixScreen(ModalScreen[dict | None]):
    """Pick which finding's suggested change to apply to a copy of the preset (tui/fixes.py)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, findings: list[dict]):
        super().__init__()
        self.findings = findings

    def compose(self) -> ComposeResult:
        from tui.fixes import change_text

        with Vertical(classes="dialog wide"):
            yield Label("Apply which suggestion to a copy of the preset?", classes="dialog-title")
            yield OptionList(*(
                Option(Content.assemble((f"{f.get('severity')} {f.get('rule')}", "bold"), "  ", str(f.get("title", "")),
                                        "\n  → ", (change_text(f["change"]), "dim")), id=str(i))
                for i, f in enumerate(self.findings)), id="fix-list")
            yield Label("enter applies · escape cancels", classes="dialog-hint")

    def on_mount(self) -> None:
        self.query_one("#fix-list", OptionList).focus()

    @on(OptionList.OptionSelected, "#fix-list")
    def _picked(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.findings[int(event.option.id or 0)])

    def action_cancel(self) -> None:
        self.dismiss(None)
