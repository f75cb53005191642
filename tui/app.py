"""The Textual app: wires the screens, polls the store and the engine, and runs blocking calls off
the event loop.

Screens plug in through NAVIGATION. To add a screen, add one line:

    NavScreen("checkpoints", "tui.screens.checkpoints:CheckpointsScreen", "3", "Checkpoints", needs_run=True)

- `target` is "module:Class"; the module is imported the first time the screen opens (so the first
  frame never waits for it, and a screen whose module is missing only says so when asked for).
- `key` is bound app-wide (help screen, footer and command palette list it); "" for no key.
- The class is constructed as `Class(run_id=<the selected run's id or None>)`; with `needs_run=True`
  the app refuses to open it (with a notification) until a run is selected.
- Inside a screen: `self.app.backend` (tui.backend.Backend: store, engine, presets; blocking, so call
  it from `self.app.call_blocking(...)` or an `@work(thread=True)` method), `self.app.config`
  (tui.config.TuiConfig), `self.app.selected_run_id`, and the `self.app.state_signal` Signal
  (published after each poll; `self.app.overview` holds the latest runs). Put the screen's own
  BINDINGS on the class: the help screen and the palette read them from there.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.screen import Screen
from textual.signal import Signal

from tui.backend import Backend, EngineInfo, GpuInfo, Overview
from tui.format import user_message
from tui.config import DESKTOP_MODES, TuiConfig, remember
from tui.notify import Notice, Notifier, desktop_sequence


@dataclass(frozen=True)
class NavScreen:
    name: str
    target: str  # "module:Class", imported lazily
    key: str  # app-wide key ("" = palette only)
    title: str
    needs_run: bool = False


NAVIGATION: list[NavScreen] = [
    NavScreen("runs", "tui.screens.runs:RunsScreen", "1", "Runs"),
    NavScreen("presets", "tui.screens.presets:PresetsScreen", "2", "Presets"),
    NavScreen("checkpoints", "tui.screens.checkpoints:CheckpointsScreen", "3", "Checkpoints", needs_run=True),
    NavScreen("evals", "tui.screens.evals:EvalsScreen", "4", "Evals", needs_run=True),
    NavScreen("chat", "tui.screens.chat:ChatScreen", "5", "Chat"),
    NavScreen("dashboard", "tui.screens.dashboard:DashboardScreen", "", "Dashboard", needs_run=True),
    NavScreen("data", "tui.screens.data:DataScreen", "6", "Data"),
    NavScreen("samples", "tui.screens.samples:SamplesScreen", "7", "Samples", needs_run=True),
    NavScreen("probes", "tui.screens.probes:ProbesScreen", "8", "Probes", needs_run=True),
]
# Screens that replace the stack above Runs instead of stacking on top of what is open.
TOP_LEVEL = ("runs", "presets")


def nav_entry(name: str) -> NavScreen:
    for entry in NAVIGATION:
        if entry.name == name:
            return entry
    raise KeyError(f"no screen named {name!r}")


def load_screen_class(entry: NavScreen) -> type[Screen] | None:
    """The screen class, or None when its module is not part of this build."""
    module_name, _, class_name = entry.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise
    return getattr(module, class_name)


class ActionsProvider(Provider):
    """The command palette: every key of the screen it was opened on, and every screen."""

    def _commands(self) -> list[tuple[str, str, Callable[[], Any]]]:
        commands: list[tuple[str, str, Callable[[], Any]]] = []
        seen: set[str] = set()
        # The screen's and the app's own bindings (not active_bindings: a focused table's enter would
        # hide the screen's "Open"); a focused widget's keys (cursor moves) are not commands.
        for node in (self.screen, self.app):
            for bindings in node._bindings.key_to_bindings.values():
                for binding in bindings:
                    label = binding.description
                    if not label or binding.system or label in seen or binding.action.startswith("open_screen("):
                        continue  # screens are listed below as "Go to …", with those that have no key
                    seen.add(label)
                    help_text = f"key {self.app.get_key_display(binding)}"
                    if node.check_action(binding.action.split("(")[0], ()) is not True:
                        help_text += " · not available now"
                    commands.append((label, help_text, partial(self.app.run_action, binding.action, node)))
        app = self.app
        for entry in NAVIGATION:
            label = f"Go to {entry.title}" if entry.name != "dashboard" else "Open the selected run's dashboard"
            if label not in seen:
                commands.append((label, f"key {entry.key}" if entry.key else "", partial(app.action_open_screen, entry.name)))
        for label, help_text, action in (
            ("Help: every key", "key ?", "app.help"),
            ("Start the engine", "key E", "app.start_engine"),
            ("Bell when a run ends: on / off", "", "app.toggle_bell"),
            ("Desktop notifications: OSC 9 / OSC 777 / off", "", "app.next_desktop_notify"),
        ):
            if label not in seen:
                commands.append((label, help_text, partial(app.run_action, action)))
        return commands

    async def discover(self) -> Hits:
        for label, help_text, callback in self._commands():
            yield DiscoveryHit(label, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for label, help_text, callback in self._commands():
            score = matcher.match(label)
            if score > 0:
                yield Hit(score, matcher.highlight(label), callback, help=help_text)


class TunebenchApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "tunebench"
    # Textual's own commands (theme, keys panel, screenshot, quit) and every action of ours.
    COMMANDS = App.COMMANDS | {ActionsProvider}
    BINDINGS = [
        *(Binding(e.key, f"open_screen('{e.name}')", e.title, show=e.name in TOP_LEVEL)
          for e in NAVIGATION if e.key),
        Binding("question_mark,f1", "help", "Help"),
        Binding("E", "start_engine", "Start engine"),
        Binding("q", "quit", "Quit", show=False),
    ]

    def __init__(self, config: TuiConfig, backend: Backend | None = None):
        super().__init__(ansi_color=config.ansi_color or None)
        self.config = config
        self.backend = backend or Backend(config.workspace)
        self.overview: Overview | None = None
        self.engine_info: EngineInfo | None = None
        self.gpu_info: list[GpuInfo] | None = None
        self.selected_run_id: str | None = config.open_run
        self.busy_polls = 0  # consecutive ticks that found the last poll still running (spinner)
        self.pending: list[str] = []  # blocking actions in flight, shown with a spinner
        self.ticks = 0
        self.state_signal: Signal[None] = Signal(self, "state")
        self._drawn_overview: Overview | None = None  # the last poll the screens were told of
        self._overview_worker = None
        self._status_worker = None
        self._opened_when_done = False
        self.notifier = Notifier(config.workspace)  # runs that ended, doctor warnings: said once (tui/notify.py)

    # ----------------------------------------------------------------- start-up

    def on_mount(self) -> None:
        if self.config.theme in self.available_themes:
            self.theme = self.config.theme
        self.theme_changed_signal.subscribe(self, self._remember_theme)
        self.config.workspace.ensure()
        # The first reads start once the first frame is on the terminal: the status probe imports
        # the engine side (Huey) and would compete with the first paint for the GIL.
        self.call_after_refresh(self.refresh_now)
        self.set_interval(self.config.poll_interval, self.poll_overview, name="poll-overview")
        self.set_interval(self.config.status_interval, self.poll_status, name="poll-status")
        if self.config.start_engine:
            self.call_blocking("start the engine", self.backend.start_engine, quiet=True)
        if self.config.open_run:
            self.action_open_screen("dashboard")

    def _remember_theme(self, theme) -> None:
        """The theme picked in the palette is the next start's (tui/config.py)."""
        if theme.name != self.config.theme:
            self.config = self.config.with_(theme=theme.name)
            try:
                remember(self.config.workspace, theme=theme.name)
            except OSError as exc:  # a read-only workspace: the theme still applies to this session
                self.notify(f"could not remember the theme: {exc}", severity="warning")

    def get_default_screen(self) -> Screen:
        """Runs is the home screen: the bottom of the stack, painted first."""
        screen = load_screen_class(nav_entry("runs"))()
        screen.nav_name = "runs"
        return screen

    # ----------------------------------------------------------------- polling

    def poll_overview(self) -> None:
        self.ticks += 1
        if self._overview_worker is not None and self._overview_worker.is_running:
            # The database is slow (a big write, a busy disk): show it rather than pile up readers.
            self.busy_polls += 1
            self.state_signal.publish(None)
            return
        self._overview_worker = self._read_overview()

    @work(thread=True, group="poll-overview", exit_on_error=False)
    def _read_overview(self) -> None:
        try:
            overview = self.backend.overview()
        except Exception as exc:
            self.call_from_thread(self._poll_failed, "reading the run store", exc)
            return
        self.call_from_thread(self._apply_overview, overview)
        try:
            notices = self.notifier.check(overview.runs, self.backend.store.findings)
        except Exception as exc:  # being told is a courtesy: it never keeps the screens from drawing
            self.call_from_thread(self._poll_failed, "looking for runs that ended", exc)
            return
        if notices:
            self.call_from_thread(self.tell, notices)

    def tell(self, notices: list[Notice]) -> None:
        """A toast on whatever screen is open, the bell, and a desktop notification (each setting allowing)."""
        for notice in notices:
            self.notify(notice.body, title=notice.title, severity=notice.severity, timeout=10)
            escape = desktop_sequence(notice, self.config.desktop_notify, tmux=bool(os.environ.get("TMUX")))
            if escape:
                self.write_to_terminal(escape)
        if self.config.bell:
            self.bell()

    def action_toggle_bell(self) -> None:
        self._change_setting(bell=not self.config.bell)
        self.notify(f"Bell {'on' if self.config.bell else 'off'} when a run ends or the doctor warns.", timeout=3)

    def action_next_desktop_notify(self) -> None:
        modes = DESKTOP_MODES
        mode = modes[(modes.index(self.config.desktop_notify) + 1) % len(modes)] \
            if self.config.desktop_notify in modes else modes[0]
        self._change_setting(desktop_notify=mode)
        self.notify(f"Desktop notifications: {mode}.", timeout=3)

    def _change_setting(self, **changes: Any) -> None:
        """For this session and, remembered in tui.json, the next ones."""
        self.config = self.config.with_(**changes)
        try:
            remember(self.config.workspace, **changes)
        except OSError as exc:
            self.notify(f"could not remember the setting: {exc}", severity="warning")

    def write_to_terminal(self, text: str) -> None:
        """Raw bytes for the terminal itself (escape sequences), beside Textual's drawing."""
        if not self.is_headless and self._driver is not None:
            self._driver.write(text)

    def _apply_overview(self, overview: Overview) -> None:
        # A poll that finds nothing new does no work: an idle TUI redraws nothing.
        if self.busy_polls or overview.news_since(self._drawn_overview):
            self._drawn_overview = overview
            self.state_signal.publish(None)
        self.overview = overview
        self.busy_polls = 0
        self._open_when_done(overview)

    def poll_status(self) -> None:
        if self._status_worker is not None and self._status_worker.is_running:
            return
        self._status_worker = self._read_status()

    @work(thread=True, group="poll-status", exit_on_error=False)
    def _read_status(self) -> None:
        try:
            engine, gpus = self.backend.engine(), self.backend.gpus()
        except Exception as exc:
            self.call_from_thread(self._poll_failed, "reading the engine status", exc)
            return
        self.call_from_thread(self._apply_status, engine, gpus)

    def _apply_status(self, engine: EngineInfo, gpus: list[GpuInfo]) -> None:
        engine_changed = engine != self.engine_info
        if not engine_changed and gpus == self.gpu_info:
            return  # nothing new to draw
        self.engine_info, self.gpu_info = engine, gpus
        self.state_signal.publish(None)
        if engine_changed:
            self.refresh_bindings()  # "Start engine" shows only while the engine is down

    def _poll_failed(self, what: str, exc: Exception) -> None:
        # Said once per distinct problem: a poll repeats every fraction of a second.
        message = f"{what}: {user_message(exc)}"
        if getattr(self, "_last_poll_error", None) != message:
            self._last_poll_error = message
            self.notify(message, title="cannot read", severity="error", timeout=8)

    def _open_when_done(self, overview: Overview) -> None:
        target, run_id = self.config.open_when_done, self.config.open_run
        if not target or not run_id or self._opened_when_done:
            return
        run = overview.run(run_id)
        if run is not None and run.state == "completed":
            self._opened_when_done = True
            self.selected_run_id = run_id
            self.action_open_screen(target)

    def refresh_now(self) -> None:
        """Poll at once (after an action) instead of waiting for the next tick."""
        self.poll_overview()
        self.poll_status()

    # ----------------------------------------------------------------- blocking calls

    def call_blocking(self, what: str, fn: Callable[..., Any], *args: Any,
                      then: Callable[[Any], Any] | None = None, quiet: bool = False, **kwargs: Any):
        """Run fn(*args, **kwargs) in a thread; `then(result)` back on the event loop; errors are
        notifications naming `what`, never a traceback."""

        def run() -> None:
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                self.call_from_thread(self.notify, user_message(exc), title=f"cannot {what}",
                                      severity="error", timeout=10)
                return
            finally:
                self.call_from_thread(self._action_done, what)
            if then is not None:
                self.call_from_thread(then, result)
            elif not quiet:
                self.call_from_thread(self.notify, f"{what}: done", timeout=3)
            self.call_from_thread(self.refresh_now)

        self.pending.append(what)
        self.state_signal.publish(None)
        return self.run_worker(run, thread=True, group="actions", exit_on_error=False, description=what)

    def _action_done(self, what: str) -> None:
        if what in self.pending:
            self.pending.remove(what)
        self.state_signal.publish(None)

    # ----------------------------------------------------------------- navigation

    def action_open_screen(self, name: str, run_id: str | None = None, **params: Any) -> None:
        """`params` go to the screen's constructor (e.g. preset= for the Presets editor)."""
        entry = nav_entry(name)
        run_id = run_id or self.selected_run_id
        if entry.needs_run and not run_id:
            self.notify(f"Select a run on the Runs screen first, then open {entry.title}.", severity="warning")
            return
        try:
            screen_class = load_screen_class(entry)
        except Exception as exc:
            self.notify(user_message(exc), title=f"cannot open {entry.title}", severity="error")
            return
        if screen_class is None:
            self.notify(f"The {entry.title} screen is not part of this build yet.", severity="warning")
            return
        top = self.screen
        if not params and getattr(top, "nav_name", None) == name and getattr(top, "run_id", None) in (None, run_id):
            return
        if name in TOP_LEVEL:
            leaving = self.screen_stack[1:]
            if self._unsaved(leaving):
                self._confirm_discard(leaving, lambda: self.action_open_screen(name, run_id, **params))
                return
            self._pop_to_home()
            if name == "runs":
                return  # Runs is the home screen, at the bottom of the stack
        elif getattr(top, "nav_name", None) not in (None, *TOP_LEVEL, "dashboard"):
            self.pop_screen()  # one plug-in screen replaces another instead of stacking up
        screen = screen_class(**params) if name in TOP_LEVEL else screen_class(run_id=run_id, **params)
        screen.nav_name = name
        self.push_screen(screen)

    @staticmethod
    def _unsaved(screens) -> list:
        """Screens holding edits not yet saved (they expose `modified`, like the presets editor)."""
        return [screen for screen in screens if getattr(screen, "modified", False)]

    def _confirm_discard(self, screens, then: Callable[[], Any]) -> None:
        from tui.screens.modals import ConfirmScreen

        names = ", ".join(getattr(s, "unsaved_name", type(s).__name__) for s in self._unsaved(screens))

        def answered(yes: bool | None) -> None:
            if yes:
                for screen in self._unsaved(screens):
                    screen.discard_changes()
                then()

        self.push_screen(ConfirmScreen(f"Discard the unsaved changes to {names}?", "Discard"), answered)

    async def action_quit(self) -> None:
        if self._unsaved(self.screen_stack):
            self._confirm_discard(self.screen_stack, self.exit)
            return
        self.exit()

    def _pop_to_home(self) -> None:
        while len(self.screen_stack) > 1:
            self.pop_screen()

    def open_run(self, run_id: str) -> None:
        self.selected_run_id = run_id
        self.action_open_screen("dashboard", run_id)

    def action_help(self) -> None:
        from tui.screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_start_engine(self) -> None:
        if self.engine_info is not None and self.engine_info.running:
            self.notify(f"The engine runs already (pid {self.engine_info.pid}).")
            return
        self.notify("Starting the engine…", timeout=3)
        self.call_blocking("start the engine", self.backend.start_engine,
                           then=lambda _: self.notify("Engine started.", timeout=3))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "start_engine":
            return self.engine_info is None or not self.engine_info.running
        return True


def run_app(workspace_arg: str | None = None, *, open_run: str | None = None,
            open_when_done: str | None = None, **settings: Any) -> int:
    """`tunebench` with no verb: the TUI on the workspace. Returns the process exit code.

    open_run: a run reference (id, prefix or name) whose dashboard opens first; open_when_done: the
    NAVIGATION name (e.g. "chat") to open when that run completes (the demo uses both).
    """
    config = TuiConfig.from_env(workspace_arg, start_engine=True, **settings)
    if open_run is not None:
        run = Backend(config.workspace).store.resolve_run(open_run)  # RunNotFound: the CLI prints it
        config = config.with_(open_run=run.id, open_when_done=open_when_done)
    app = TunebenchApp(config)
    result = app.run()
    return result if isinstance(result, int) else (app.return_code or 0)
