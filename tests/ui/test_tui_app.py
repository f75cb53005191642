"""The app: navigation and the screen registry, the help screen, the command palette, errors."""

from __future__ import annotations

from textual.screen import Screen
from textual.widgets import DataTable, Static
from helpers.tui_app import async_test, fill_store, make_app, screen_text, settle, until

from tui import app as app_module
from tui.app import NAVIGATION, NavScreen, TunebenchApp, run_app
from tui.screens.help import HelpScreen, key_rows
from tui.screens.presets import PresetsScreen
from tui.screens.runs import RunsScreen


class ProbeScreen(Screen):
    """A plug-in screen as the ckpt and chat helpers write theirs."""

    BINDINGS = [("x", "noop", "Probe action")]

    def __init__(self, run_id: str | None = None):
        super().__init__()
        self.run_id = run_id

    def compose(self):
        yield Static(f"probe for {self.run_id}")


def notifications(app) -> list[str]:
    return [str(n.message) for n in app._notifications]


@async_test
async def test_registry_opens_plug_in_screens_with_the_selected_run(workspace, monkeypatch):
    fill_store(workspace)
    monkeypatch.setattr(app_module, "NAVIGATION", NAVIGATION + [
        NavScreen("probe", f"{__name__}:ProbeScreen", "", "Probe", needs_run=True),
        NavScreen("absent", "tui.screens.no_such_screen:Nothing", "", "Absent"),
    ])
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        app.selected_run_id = None
        app.action_open_screen("probe")
        await settle(pilot)
        assert isinstance(app.screen, RunsScreen)
        assert any("Select a run" in n for n in notifications(app))
        app.selected_run_id = "r-fixed-0003"
        app.action_open_screen("probe")
        await settle(pilot)
        assert isinstance(app.screen, ProbeScreen) and app.screen.run_id == "r-fixed-0003"
        assert app.screen.nav_name == "probe"
        app.action_open_screen("absent")
        await settle(pilot)
        assert any("not part of this build" in n for n in notifications(app))
        assert isinstance(app.screen, ProbeScreen), "a missing screen leaves the user where they were"
        await pilot.press("2")
        await settle(pilot)
        assert isinstance(app.screen, PresetsScreen) and len(app.screen_stack) == 2  # runs (home), presets
        await pilot.press("1")
        await settle(pilot)
        assert isinstance(app.screen, RunsScreen) and len(app.screen_stack) == 1


@async_test
async def test_help_lists_every_key(workspace):
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("question_mark")
        await settle(pilot)
        assert isinstance(app.screen, HelpScreen)
        rows = key_rows(app)
        table = app.screen.query_one(DataTable)
        assert table.row_count == len(rows)
        described = {(where, what) for where, _, what in rows}
        for expected in [("Runs", "Cancel"), ("Runs", "Priority ↑"), ("Runs", "Delete"), ("Runs", "Submit"),
                         ("Presets", "Save as"), ("Presets", "Diff"), ("Dashboard", "Smooth"),
                         ("Dashboard", "Log scale"), ("everywhere", "Presets"), ("everywhere", "Start engine")]:
            assert expected in described, expected
        await pilot.press("escape")
        await settle(pilot)
        assert isinstance(app.screen, RunsScreen)


@async_test
async def test_command_palette_offers_every_action(workspace):
    fill_store(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        provider = app_module.ActionsProvider(app.screen)
        labels = [label for label, _, _ in provider._commands()]
        for expected in ("Submit", "Cancel", "Delete", "Resume", "Retry", "Priority ↑", "Open", "Go to Presets",
                         "Go to Checkpoints", "Go to Chat", "Open the selected run's dashboard", "Help: every key",
                         "Start the engine"):
            assert expected in labels, expected
        assert len(labels) == len(set(labels)), "each action once"
        assert app_module.ActionsProvider in TunebenchApp.COMMANDS and len(TunebenchApp.COMMANDS) > 1, \
            "Textual's own commands (theme, quit, …) stay in the palette"
        await pilot.press("ctrl+p")
        await settle(pilot)
        await pilot.press(*"go to presets")
        await until(pilot, lambda: app.screen.query("CommandList") and app.screen.query_one("CommandList").option_count,
                    "palette hits")
        await pilot.press("down", "enter")
        await until(pilot, lambda: isinstance(app.screen, PresetsScreen), "the presets screen from the palette")


@async_test
async def test_an_unreadable_store_is_a_notification(workspace):
    app = make_app(workspace)

    def broken():
        raise OSError(5, "Input/output error", str(workspace.store_db))

    app.backend.overview = broken
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        app.refresh_now()
        await until(pilot, lambda: any("Input/output error" in n for n in notifications(app)), "the notification")
        assert sum("Input/output error" in n for n in notifications(app)) == 1, "said once, not at every poll"
        assert app.is_running


@async_test
async def test_a_slow_poll_shows_a_spinner(workspace):
    import threading

    fill_store(workspace)
    app = make_app(workspace)
    release = threading.Event()
    original = app.backend.overview

    def slow():
        release.wait(30)
        return original()

    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        app.backend.overview = slow
        app.poll_overview()  # starts a read that blocks
        app.poll_overview()  # finds it still running
        await pilot.pause()
        assert "waiting for the database" in screen_text(app)
        release.set()
        await settle(pilot)
        assert "waiting for the database" not in screen_text(app)


def test_run_app_rejects_an_unknown_run(workspace):
    from jobs.store import RunNotFound

    try:
        run_app(str(workspace.root), open_run="nope")
    except RunNotFound as exc:
        assert "no run matches 'nope'" in exc.message and "tunebench ls" in exc.advice
    else:
        raise AssertionError("expected RunNotFound")


@async_test
async def test_open_run_then_a_screen_when_it_completes(workspace):
    store = fill_store(workspace)
    app = make_app(workspace, open_run="r-fixed-0005", open_when_done="presets")
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: getattr(app.screen, "run_id", None) == "r-fixed-0005", "the run's dashboard")
        store.set_state("r-fixed-0005", "completed")
        app.refresh_now()
        await until(pilot, lambda: isinstance(app.screen, PresetsScreen), "the screen opened when the run completed")


@async_test
async def test_small_terminal_and_16_colours(workspace, monkeypatch):
    fill_store(workspace)
    app = make_app(workspace, ansi_color=True)
    assert isinstance(app, TunebenchApp)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        text = screen_text(app)
        assert "demo" in text and "queue 2" in text
        await pilot.press("enter")
        await until(pilot, lambda: getattr(app.screen, "run", None) is not None, "the dashboard")
        assert "step 120/300" in screen_text(app)


@async_test
async def test_every_screen_shows_the_help_key_at_80x24(workspace, monkeypatch):
    from helpers.checkpoints import fake_trained_run

    from tui.screens import chat as chat_module

    monkeypatch.setattr(chat_module.ChatScreen, "start_load", lambda self, request, **kw: None)  # no model here
    fill_store(workspace)
    trained = fake_trained_run(workspace)
    app = make_app(workspace)
    seen = []
    async with app.run_test(size=(80, 24)) as pilot:

        async def footer_of(name: str, ready) -> None:
            await until(pilot, ready, f"the {name} screen")
            await settle(pilot)
            footer = screen_text(app).splitlines()[-1]
            # On chat the prompt takes `?` as text, so the help key there is f1.
            assert "? Help" in footer or "f1 Help" in footer, f"{name}: {footer!r}"
            # The keys that do not fit are left out whole, never drawn cut ("1 Ru").
            labels = {active.binding.description for active in app.screen.active_bindings.values()}
            left = footer.split("▏")[0].rstrip()
            assert any(left.endswith(label) for label in labels if label), f"{name}: {footer!r}"
            seen.append(name)

        await footer_of("runs", lambda: isinstance(app.screen, RunsScreen))
        app.open_run("r-fixed-0005")
        await footer_of("dashboard", lambda: getattr(app.screen, "nav_name", "") == "dashboard" and app.screen.run)
        for name in ("checkpoints", "evals", "chat", "presets"):  # not by key: chat's prompt takes digits
            app.selected_run_id = trained
            app.action_open_screen(name)
            await footer_of(name, lambda: getattr(app.screen, "nav_name", "") == name)
    assert seen == ["runs", "dashboard", "checkpoints", "evals", "chat", "presets"]


@async_test
async def test_errors_read_as_message_and_advice_never_a_class_name(workspace):
    from presets.errors import TunebenchError
    from tui.format import user_message

    def fails_with(exc):
        def call():
            raise exc
        return call

    app = make_app(workspace)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        app.call_blocking("load the model", fails_with(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")))
        app.call_blocking("chat", fails_with(TunebenchError("no run named 'mine'", "tunebench ls lists the runs")))
        await settle(pilot)
        shown = notifications(app)
        assert "CUDA out of memory. Tried to allocate 2 GiB" in shown
        assert "no run named 'mine'\n  → tunebench ls lists the runs" in shown
        assert not any("Error" in text for text in shown)
    assert user_message(AssertionError()).startswith("an unexpected error (AssertionError) with no message")
