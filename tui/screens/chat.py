"""The chat pane: base and fine-tuned answers side by side, streaming both at once.

Opens on the selected run (its final result against the base) unless told otherwise; ctrl+o picks
another result, a checkpoint, or two checkpoints of one run. Models load in a thread worker with a
progress bar; torch and transformers are imported there, never at app start-up. Generation runs in
another thread worker (engine.chat interleaves the two sides token by token) and posts throttled
updates; Esc stops both sides. ctrl+t opens the probe set: N validation prompts scored per side.

Transcripts and probe results are saved in the workspace, tied to the run (store + runs/<id>/chat/):
a conversation when it is cleared, when another comparison is loaded, and when the screen closes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, DataTable, Input, Label, OptionList, ProgressBar, Select, Static
from textual.widgets.option_list import Option

from tui.format import user_message
from tui.widgets.status import KeyFooter, StatusLine
from tui.widgets.table import Col, Table

STREAM_INTERVAL = 0.05  # at most 20 redraws a second per side, however fast the tokens come
SETTINGS = (  # (field, label, input type, default)
    ("temperature", "temperature", "number", "0"),
    ("top_p", "top-p", "number", "1.0"),
    ("top_k", "top-k", "integer", "0"),
    ("max_new_tokens", "max new tokens", "integer", "256"),
    ("repetition_penalty", "rep. penalty", "number", "1.0"),
)


@dataclass(frozen=True)
class ChatRequest:
    """What to compare: a run (final result or a checkpoint, against the base or another checkpoint),
    or a base folder and an adapter/model folder."""

    run: str | None = None
    checkpoint: int | None = None
    compare: str | int | None = "base"
    base: str | None = None
    adapter: str | None = None


def resolve_request(workspace, request: ChatRequest):
    """ChatTarget for a request (blocking: reads the store and the run folder)."""
    from jobs.targets import chat_target, path_target

    if request.run:
        return chat_target(workspace, request.run, checkpoint=request.checkpoint, compare=request.compare)
    return path_target(request.base or None, request.adapter or None)


class PickScreen(ModalScreen[ChatRequest | None]):
    """Pick what to compare: a run from the list of those with a result or checkpoints, then one of
    its results (filled as soon as a run is highlighted), and what to compare it with; or, without
    a run, a base model folder and an adapter."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    PickScreen #pick-lists { height: auto; margin-bottom: 1; }
    PickScreen #pick-lists OptionList { width: 1fr; height: 8; border: round $primary 40%; }
    PickScreen #pick-lists OptionList:focus { border: round $accent; }
    PickScreen .pick-row { height: auto; margin-bottom: 1; }
    PickScreen .pick-row Label { width: 16; padding: 0 1 0 0; }
    PickScreen .pick-row Input, PickScreen .pick-row Select { width: 1fr; }
    """

    def __init__(self, request: ChatRequest):
        super().__init__()
        self.request = request
        self.runs: dict[str, tuple[list[int], bool]] = {}  # run id → (checkpoint steps, has a final result)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Static("Compare", classes="dialog-title")
            with Horizontal(id="pick-lists"):
                yield OptionList(id="pick-run")
                yield OptionList(id="pick-result")
            with Horizontal(classes="pick-row"):
                yield Label("compare with")
                yield Select([("base model", "base")], value="base", allow_blank=False, id="pick-compare", compact=True)
            yield Static("or, without a run:", classes="dialog-hint")
            with Horizontal(classes="pick-row"):
                yield Label("base model")
                yield Input(self.request.base or "", placeholder="base model folder", id="pick-base", compact=True)
            with Horizontal(classes="pick-row"):
                yield Label("adapter/model")
                yield Input(self.request.adapter or "", placeholder="adapter or fine-tuned model folder", id="pick-adapter", compact=True)
            yield Static("", id="pick-error", classes="error-text")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Load", variant="primary", id="pick-load")
                yield Button("Cancel", id="pick-cancel")

    def on_mount(self) -> None:
        self.query_one("#pick-run", OptionList).border_title = "run"
        self.query_one("#pick-result", OptionList).border_title = "fine-tuned"
        self.query_one("#pick-run", OptionList).focus()
        self._read_runs()

    @work(thread=True, exclusive=True, group="pick", exit_on_error=False)
    def _read_runs(self) -> None:
        try:
            runs = self.app.backend.comparable_runs()
        except Exception as exc:
            self.app.call_from_thread(self._show_error, user_message(exc))
            return
        self.app.call_from_thread(self._show_runs, runs)

    def _show_runs(self, runs) -> None:
        self.runs = {run.id: (steps, final) for run, steps, final in runs}
        options = self.query_one("#pick-run", OptionList)
        options.clear_options()
        if not runs:
            options.add_option(Option(Text("no run has a result or a checkpoint yet", style="dim"), disabled=True))
            self.query_one("#pick-base", Input).focus()
            return
        for run, steps, final in runs:  # run names are unique in the store: the id would only crowd the line
            results = " + ".join((["final"] if final else []) + ([f"{len(steps)} ckpt"] if steps else []))
            options.add_option(Option(Text.assemble(run.name, "  ", (f"{run.state} · {results}", "dim")), id=run.id))
        wanted = self.request.run if self.request.run in self.runs else runs[0][0].id
        options.highlighted = options.get_option_index(wanted)  # posts OptionHighlighted: the results follow

    @on(OptionList.OptionHighlighted, "#pick-run")
    def _run_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option.id in self.runs:
            self._set_choices(event.option.id)

    @on(OptionList.OptionSelected, "#pick-run")
    def _run_selected(self, event: OptionList.OptionSelected) -> None:
        self.query_one("#pick-result", OptionList).focus()

    @on(OptionList.OptionSelected, "#pick-result")
    def _result_selected(self) -> None:
        self._load(paths=False)

    @on(Input.Submitted, "#pick-base, #pick-adapter")
    def _paths_entered(self) -> None:
        self._load(paths=True)

    def _set_choices(self, run_id: str) -> None:
        self._show_error("")
        steps, final = self.runs[run_id]
        asked = run_id == self.request.run  # the request's own checkpoint and comparison, when it is this run
        results = self.query_one("#pick-result", OptionList)
        results.clear_options()
        if final:
            results.add_option(Option("final result", id="final"))
        for step in reversed(steps):
            results.add_option(Option(f"checkpoint-{step}", id=str(step)))
        wanted = str(self.request.checkpoint) if asked and self.request.checkpoint in steps else None
        results.highlighted = results.get_option_index(wanted) if wanted else 0
        compare = self.query_one("#pick-compare", Select)
        compare.set_options([("base model", "base")] + [(f"checkpoint-{s}", s) for s in steps])
        compare.value = self.request.compare if asked and self.request.compare in steps else "base"

    def _show_error(self, text: str) -> None:
        self.query_one("#pick-error", Static).update(text)

    @on(Button.Pressed, "#pick-load")
    def _load_pressed(self) -> None:
        self._load(paths=None)

    def _load(self, paths: bool | None) -> None:
        """Load the highlighted run's result, or the paths (`paths` None: the paths when given; the
        list always highlights a run, and a path typed on purpose wins)."""
        runs = self.query_one("#pick-run", OptionList)
        results = self.query_one("#pick-result", OptionList)
        base = self.query_one("#pick-base", Input).value.strip()
        adapter = self.query_one("#pick-adapter", Input).value.strip()
        if paths or (paths is None and (base or adapter)):
            if not base and not adapter:
                self._show_error("give a base model folder (and an adapter), or pick a run")
                return
            self.dismiss(ChatRequest(run=None, base=base or None, adapter=adapter or None, compare=None))
            return
        if runs.highlighted is None or results.highlighted is None or runs.highlighted_option.id not in self.runs:
            self._show_error("pick a run and one of its results, or give a base model folder (and an adapter)")
            return
        result = results.highlighted_option.id
        compare = self.query_one("#pick-compare", Select).value
        self.dismiss(ChatRequest(run=runs.highlighted_option.id, checkpoint=None if result == "final" else int(result),
                                 compare="base" if compare == "base" else int(compare)))

    @on(Button.Pressed, "#pick-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class ChatColumn(Vertical):
    """One side: its label, the conversation, and the stats of the last answer."""

    DEFAULT_CSS = """
    ChatColumn { width: 1fr; height: 1fr; border: round $primary-background; padding: 0 1; }
    ChatColumn > VerticalScroll { height: 1fr; }
    ChatColumn > .chat-stats { height: 1; color: $text-muted; }
    """

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static("", classes="chat-text")
        yield Static("", classes="chat-stats")

    def show(self, label: str, text: Text, stats: str) -> None:
        self.border_title = label
        self.query_one(".chat-text", Static).update(text)
        self.query_one(".chat-stats", Static).update(stats)
        self.query_one(VerticalScroll).scroll_end(animate=False)


class ChatScreen(Screen):
    BINDINGS = [
        # The footer's order, and at 80 columns only the first few show: the settings start folded, so ^s is early.
        Binding("escape", "stop", "Stop / back"),
        Binding("ctrl+o", "pick", "Compare…"),
        Binding("ctrl+s", "toggle_settings", "Settings"),
        Binding("ctrl+r", "regenerate", "Regenerate"),
        Binding("ctrl+l", "clear", "Clear"),
        Binding("ctrl+t", "probe", "Probe set"),
    ]
    DEFAULT_CSS = """
    ChatScreen #chat-head { height: 1; padding: 0 1; background: $boost; }
    ChatScreen #chat-loading { height: 1; padding: 0 1; }
    ChatScreen #chat-loading ProgressBar { width: 40; }
    ChatScreen #chat-load-text { width: 1fr; }
    ChatScreen #chat-columns { height: 1fr; }
    ChatScreen #chat-settings { height: 1; padding: 0 1; display: none; }
    ChatScreen.show-settings #chat-settings { display: block; }
    ChatScreen #chat-settings Label { padding: 0 1 0 2; }
    ChatScreen #chat-settings Input { width: 8; }
    ChatScreen #chat-prompt { margin: 0 1; }
    """

    class Streamed(Message):
        def __init__(self, side: int, text: str, answer=None):
            super().__init__()
            self.side, self.text, self.answer = side, text, answer

    class Finished(Message):
        def __init__(self, error: str | None = None):
            super().__init__()
            self.error = error

    def __init__(self, run_id: str | None = None, *, checkpoint: int | None = None, compare: str | int | None = "base"):
        super().__init__()
        self.run_id = run_id
        self.request = ChatRequest(run=run_id, checkpoint=checkpoint, compare=compare) if run_id else None
        self.session = None
        self.target = None
        self.loading = False
        self.generating = False
        self._live: dict[int, str] = {}  # side → text of the answer being streamed
        self._answers: dict[int, object] = {}  # side → its finished Answer, while the other side goes on
        self._live_prompt: str | None = None
        self._turns_before = 0  # finished turns when this answer began (the new one joins at the end)
        self._last_settings = None
        self.mounted = False
        self._closed = False
        self._asked_on_open = False

    def compose(self) -> ComposeResult:
        yield StatusLine("Chat")
        yield Static("", id="chat-head")
        with Horizontal(id="chat-loading"):
            yield ProgressBar(total=100, show_eta=False, id="chat-progress")
            yield Static("", id="chat-load-text")
        with Horizontal(id="chat-columns"):
            yield ChatColumn(id="chat-left")
            yield ChatColumn(id="chat-right")
        with Horizontal(id="chat-settings"):
            for name, label, kind, default in SETTINGS:
                yield Label(label)
                yield Input(default, type=kind, id=f"set-{name}", compact=True)
        yield Input(placeholder="Ask both sides… (Enter sends)", id="chat-prompt")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.query_one("#chat-loading").display = False
        self._draw()
        if self.request is not None:
            self.start_load(self.request)
        else:
            self._set_head("Nothing loaded: ctrl+o picks a run (or a base model and an adapter) to compare.")
        self.query_one("#chat-prompt", Input).focus()
        self.mounted = True

    def on_unmount(self) -> None:
        self._closed = True
        self._release()

    # ----------------------------------------------------------------- loading

    def action_pick(self) -> None:
        if self.loading or self.generating:
            self.notify("Wait for the load or generation to end (Esc stops generation).", severity="warning")
            return
        self.app.push_screen(PickScreen(self.request or ChatRequest(run=self.app.selected_run_id)), self._picked)

    def _picked(self, request: ChatRequest | None) -> None:
        if request is not None:
            self.start_load(request)

    def start_load(self, request: ChatRequest, *, allow_second_model: bool = False) -> None:
        self._release()
        self.request = request
        self.loading = True
        self.query_one("#chat-loading").display = True
        self._progress(0.0, "resolving what to compare")
        self._draw()
        self._load(request, allow_second_model)

    @work(thread=True, exclusive=True, group="chat-load", exit_on_error=False)
    def _load(self, request: ChatRequest, allow_second_model: bool) -> None:
        try:
            target = resolve_request(self.app.config.workspace, request)
            from engine.chat import ChatSession

            plan = ChatSession.plan_load(target.base, target.target, compare_to=target.compare_to,
                                         model_config=target.model_config, labels=target.labels)
            if plan.needs_confirmation and not allow_second_model:
                self.app.call_from_thread(self._confirm_second_model, request, plan.describe())
                return
            session = ChatSession.load(
                target.base, target.target, compare_to=target.compare_to, model_config=target.model_config,
                chat_template=target.chat_template, system_prompt=target.system_prompt, labels=target.labels,
                allow_second_model=allow_second_model,
                progress=lambda fraction, message: self.app.call_from_thread(self._progress, fraction, message),
            )
            from jobs.chats import first_question

            question = first_question(target.data_config)
        except Exception as exc:
            self.app.call_from_thread(self._load_failed, user_message(exc))
            return
        self.app.call_from_thread(self._loaded, session, target, question)

    def _progress(self, fraction: float, message: str) -> None:
        self.query_one("#chat-progress", ProgressBar).update(progress=fraction * 100)
        self.query_one("#chat-load-text", Static).update(message)

    def _confirm_second_model(self, request: ChatRequest, description: str) -> None:
        from tui.screens.modals import ConfirmScreen

        self.loading = False
        self.query_one("#chat-loading").display = False

        def answered(yes: bool | None) -> None:
            if yes:
                self.start_load(request, allow_second_model=True)
            else:
                self._set_head("Not loaded: a second full model was declined.")

        self.app.push_screen(ConfirmScreen(f"This comparison needs a second full model in memory: {description}. Load it?", "Load"), answered)

    def _load_failed(self, message: str) -> None:
        self.loading = False
        self.query_one("#chat-loading").display = False
        self._set_head("Not loaded: " + " ".join(line.strip() for line in message.splitlines()))  # the advice too
        self.notify(message, title="cannot load the models", severity="error", timeout=10)

    def _loaded(self, session, target, question: str | None = None) -> None:
        if self._closed:  # the screen closed while loading
            _close_later(session)
            return
        self.session, self.target = session, target
        self.loading = False
        self.query_one("#chat-loading").display = False
        notes = f" — {'; '.join(target.notes)}" if target.notes else ""
        self._set_head(f"{target.describe()}: {session.plan.describe()}{notes}")
        self._draw()
        prompt = self.query_one("#chat-prompt", Input)
        prompt.focus()
        if question and not prompt.value:
            prompt.value = question  # a question from the run's own data: Enter asks it
            config = self.app.config
            if not self._asked_on_open and config.open_when_done == "chat" and config.open_run == target.run_id:
                # the demo's way in: the run it followed has completed, so ask at once
                self._asked_on_open = True
                if self.ask(question):
                    prompt.value = ""

    def _set_head(self, text: str) -> None:
        self.query_one("#chat-head", Static).update(Text(text, no_wrap=True, overflow="ellipsis"))

    def _release(self) -> None:
        """Save the conversation, stop, and free the models (in a thread: gc and CUDA frees take time)."""
        session, self.session = self.session, None
        if session is None:
            return
        session.stop(timeout=0)
        self._save_transcript(session)
        _close_later(session)

    def _save_transcript(self, session) -> None:
        if not session.turns:
            return
        from jobs.chats import save_chat_record

        run_id = self.target.run_id if self.target else None
        try:
            save_chat_record(self.app.config.workspace, run_id, "chat", session.transcript(self._last_settings))
        except Exception as exc:  # saving must not keep the user from leaving
            self.app.notify(f"the transcript was not saved: {user_message(exc)}", severity="warning")

    # ----------------------------------------------------------------- settings

    def action_toggle_settings(self) -> None:
        """^s shows the settings (and goes to them), ^s again hides them (and goes back to the prompt):
        each press changes what is seen, and the focus never stays on a hidden field."""
        shown = not self.has_class("show-settings")
        self.set_class(shown, "show-settings")
        if shown:
            self.query_one("#set-temperature", Input).focus()
        else:
            self.query_one("#chat-prompt", Input).focus()

    def settings(self):
        """GenerationSettings from the panel, or None (with a notification) when a value is wrong."""
        from engine.chat import GenerationSettings

        values = {}
        for name, label, kind, _ in SETTINGS:
            raw = self.query_one(f"#set-{name}", Input).value.strip()
            try:
                values[name] = int(raw) if kind == "integer" else float(raw)
            except ValueError:
                self.notify(f"{label}: {raw!r} is not a number", severity="error")
                return None
        settings = GenerationSettings(**values)
        problems = settings.problems()
        if problems:
            self.notify("; ".join(problems), title="generation settings", severity="error")
            return None
        return settings

    # ----------------------------------------------------------------- generation

    @on(Input.Submitted, "#chat-prompt")
    def _submitted(self, event: Input.Submitted) -> None:
        prompt = event.value.strip()
        if prompt and self.ask(prompt):
            event.input.value = ""

    def ask(self, prompt: str) -> bool:
        """Ask both sides `prompt` with the panel's settings; False (said in a notification) when it cannot."""
        return self._start(lambda session, settings: session.ask(prompt, settings), prompt)

    def action_regenerate(self) -> None:
        if self.session is not None and not self.session.turns:
            self.notify("Nothing to regenerate yet.", severity="warning")
            return
        prompt = self.session.turns[-1].prompt if self.session is not None else ""
        self._start(lambda session, settings: session.regenerate(settings), prompt)

    def _start(self, begin, prompt: str) -> bool:
        if self.session is None:
            self.notify("Load something to compare first (ctrl+o).", severity="warning")
            return False
        if self.generating:
            self.notify("Still answering: Esc stops it.", severity="warning")
            return False
        settings = self.settings()
        if settings is None:
            return False
        self._last_settings = settings
        events = begin(self.session, settings)
        self.generating = True
        self._live = {side: "" for side in range(len(self.session.sides))}
        self._answers = {}
        self._live_prompt = prompt
        self._turns_before = len(self.session.turns)
        self._draw()
        self._generate(events)
        return True

    @work(thread=True, group="chat-generate", exit_on_error=False)
    def _generate(self, events) -> None:
        last_post: dict[int, float] = {}
        try:
            for event in events:
                now = time.monotonic()
                if event.done or now - last_post.get(event.side, 0.0) >= STREAM_INTERVAL:
                    last_post[event.side] = now
                    self.post_message(self.Streamed(event.side, event.text, event.answer))
        except Exception as exc:
            self.post_message(self.Finished(user_message(exc)))
            return
        self.post_message(self.Finished())

    @on(Streamed)
    def _streamed(self, message: Streamed) -> None:
        self._live[message.side] = message.text
        if message.answer is not None:
            self._answers[message.side] = message.answer
        self._draw_side(message.side)

    @on(Finished)
    def _finished(self, message: Finished) -> None:
        self.generating = False
        self._live, self._answers, self._live_prompt = {}, {}, None
        if message.error:
            self.notify(message.error, title="generation failed", severity="error")
        self._draw()

    def action_stop(self) -> None:
        """Esc: stop both sides when answering; otherwise leave the screen."""
        if self.generating and self.session is not None:
            self.session.stop(timeout=0)  # the worker sees it before the next token
            return
        if len(self.app.screen_stack) > 2:
            self.app.pop_screen()
        else:
            self.app.action_open_screen("runs")

    def action_clear(self) -> None:
        if self.generating:
            self.notify("Still answering: Esc stops it.", severity="warning")
            return
        if self.session is not None:
            self._save_transcript(self.session)
            self.session.clear()
        self._draw()

    # ----------------------------------------------------------------- drawing

    def _draw(self) -> None:
        for side in (0, 1):
            self._draw_side(side)
        self.query_one("#chat-right").display = self.session is None or len(self.session.sides) > 1

    def _draw_side(self, side: int) -> None:
        column = self.query_one("#chat-left" if side == 0 else "#chat-right", ChatColumn)
        session = self.session
        if session is None or side >= len(session.sides):
            column.show("base" if side == 0 else "fine-tuned", Text("(nothing loaded)", style="dim"), "")
            return
        text = Text()
        # while answering, the turn being answered is drawn from the stream, not from session.turns
        turns = session.turns[: self._turns_before] if self.generating else session.turns
        for turn in turns:
            _append_turn(text, turn.prompt, turn.answers[side].text)
        if self.generating:
            answer = self._answers.get(side)
            _append_turn(text, self._live_prompt or "", self._live.get(side, "") + ("" if answer else "▌"))
            stats = answer.stats.line() if answer else "generating…"
        else:
            stats = turns[-1].answers[side].stats.line() if turns else ""
        column.show(session.sides[side].label, text, stats)

    # ----------------------------------------------------------------- probe set

    def action_probe(self) -> None:
        if self.session is None:
            self.notify("Load something to compare first (ctrl+o).", severity="warning")
            return
        if self.generating:
            self.notify("Still answering: Esc stops it.", severity="warning")
            return
        settings = self.settings()
        if settings is not None:
            self.app.push_screen(ProbeScreen(self.session, self.target, settings))


def _append_turn(text: Text, prompt: str, answer: str) -> None:
    if text:
        text.append("\n\n")
    text.append(f"› {prompt}\n", style="bold")
    text.append(answer)


def _close_later(session) -> None:
    import threading

    threading.Thread(target=session.close, name="chat-release", daemon=True).start()


class ProbeScreen(Screen):
    """N prompts (the run's validation split, or a file) answered by both sides and scored."""

    BINDINGS = [
        Binding("escape", "back", "Stop / back"),
        Binding("ctrl+g", "start", "Run again"),
        Binding("j", "export('jsonl')", "Export JSONL"),
        Binding("m", "export('md')", "Export Markdown"),
    ]
    DEFAULT_CSS = """
    ProbeScreen #probe-bar { height: 1; padding: 0 1; }
    ProbeScreen #probe-bar Label { padding: 0 1; }
    ProbeScreen #probe-count { width: 8; }
    ProbeScreen #probe-file { width: 1fr; }
    ProbeScreen #probe-status { height: auto; max-height: 3; padding: 0 1; background: $boost; }
    ProbeScreen DataTable { height: 1fr; }
    """

    class Row(Message):
        def __init__(self, index: int, row):
            super().__init__()
            self.index, self.row = index, row

    class Done(Message):
        def __init__(self, result=None, files=None, error: str | None = None):
            super().__init__()
            self.result, self.files, self.error = result, files or [], error

    def __init__(self, session, target, settings, *, count: int = 20):
        super().__init__()
        self.session, self.target, self.settings = session, target, settings
        self.count = count
        self.result = None
        self.running = False
        self._cancelled = False
        self.answered: dict[int, object] = {}  # row index → ProbeRow, read in full with Enter

    def compose(self) -> ComposeResult:
        yield StatusLine("Chat › Probe set")
        with Horizontal(id="probe-bar"):
            yield Label("prompts")
            yield Input(str(self.count), type="integer", id="probe-count", compact=True)
            yield Label("from file")
            yield Input("", placeholder="(blank: the run's validation split)", id="probe-file", compact=True)
        yield Static("", id="probe-status")
        yield Table(id="probe-table", zebra_stripes=True, cursor_type="row")
        yield KeyFooter()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        labels = [s.label for s in self.session.sides]
        # Text columns wrap in the width the others leave, so the last column stays on screen.
        table.set_columns([Col("n", "#"), Col("prompt", "prompt", wrap=True), Col("reference", "reference", wrap=True),
                           *(Col(f"answer-{i}", label, wrap=True) for i, label in enumerate(labels)),
                           *(Col(f"score-{i}", f"EM/F1 {label}") for i, label in enumerate(labels))])
        self.action_start()

    @on(Input.Submitted)
    def _submitted(self) -> None:
        self.action_start()

    def action_start(self) -> None:
        if self.running:
            return
        raw = self.query_one("#probe-count", Input).value.strip() or "0"
        try:
            count = int(raw)
        except ValueError:
            count = 0
        if count < 1:
            self.notify("prompts: give a number of at least 1", severity="error")
            return
        prompts_file = self.query_one("#probe-file", Input).value.strip() or None
        self.query_one(DataTable).clear()
        self.answered.clear()
        self.result, self.running, self._cancelled = None, True, False
        self._status(f"answering {count} prompts on both sides…")
        self.query_one(DataTable).focus()  # j / m export from the table
        self._run(count, prompts_file)

    @work(thread=True, exclusive=True, group="probe", exit_on_error=False)
    def _run(self, count: int, prompts_file: str | None) -> None:
        from engine.chat import run_probe
        from jobs.chats import probe_examples, save_chat_record

        try:
            examples, source = probe_examples(self.target, self.session.tokenizer, count=count, prompts_file=prompts_file)
            if not examples:
                raise ValueError(f"the probe set is empty ({source})")
            result = run_probe(self.session, examples, self.settings, source=source,
                               on_row=lambda i, row: self.post_message(self.Row(i, row)),
                               should_stop=lambda: self._cancelled)
            files = save_chat_record(self.app.config.workspace, self.target.run_id, "probe", result.to_payload(), probe=result)
        except Exception as exc:
            self.post_message(self.Done(error=user_message(exc)))
            return
        self.post_message(self.Done(result, files))

    @on(Row)
    def _row(self, message: Row) -> None:
        row = message.row
        cells = [str(message.index + 1), _cell(row.prompt), _cell(row.reference), *(_cell(a) for a in row.answers)]
        cells += [f"{e:.0f} / {f:.2f}" for e, f in zip(row.exact, row.f1)]
        self.query_one(DataTable).add_row(*cells)
        self.answered[message.index] = row
        self._status(f"{message.index + 1} answered…")

    @on(DataTable.RowSelected)
    def _read_row(self, event: DataTable.RowSelected) -> None:
        """Enter: the prompt, the reference and every answer in full (the table cuts long ones)."""
        from tui.screens.detail import DetailScreen

        row = self.answered.get(event.cursor_row)
        if row is None:
            return
        sections = [("prompt", row.prompt), ("reference", row.reference)]
        sections += [(f"{side.label} (exact match {e:.0f} · token F1 {f:.2f})", answer)
                     for side, answer, e, f in zip(self.session.sides, row.answers, row.exact, row.f1)]
        self.app.push_screen(DetailScreen(f"Prompt {event.cursor_row + 1}", sections))

    @on(Done)
    def _done(self, message: Done) -> None:
        self.running = False
        if message.error:
            self._status(f"probe failed: {message.error}")
            self.notify(message.error, title="probe set", severity="error")
            return
        self.result = message.result
        summary = "   ".join(f"{s['label']}: EM {s['exact_match']:.2f} · F1 {s['token_f1']:.2f}" for s in self.result.summary())
        where = f" — saved {message.files[0].parent}" if message.files else ""
        stopped = " (stopped)" if self._cancelled else ""
        self._status(f"{len(self.result.rows)} prompts{stopped}: {summary}{where}")

    def _status(self, text: str) -> None:
        self.query_one("#probe-status", Static).update(text)

    def action_export(self, kind: str) -> None:
        """Write the table to the current directory (it is also saved in the run folder)."""
        if self.result is None:
            self.notify("No finished probe set to export yet.", severity="warning")
            return
        name = f"probe-{self.target.run_id or 'chat'}-{time.strftime('%Y%m%d-%H%M%S')}.{kind}"
        try:
            path = self.result.to_jsonl(name) if kind == "jsonl" else self.result.to_markdown(name)
        except OSError as exc:
            self.notify(f"cannot write {name}: {exc}", severity="error")
            return
        self.notify(f"exported {path.resolve()}")

    def action_back(self) -> None:
        if self.running:
            self._cancelled = True
            self.session.stop(timeout=0)
            return
        self.app.pop_screen()


def _cell(text: str, width: int = 160) -> str:  # the table wraps it; Enter shows it whole
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
