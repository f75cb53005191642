"""Errors on the presets and chat screens read as the message and its advice, never an internal class
name (issue 15, part 5: "Not loaded: CliError: …")."""

from __future__ import annotations

from helpers.tui_app import async_test, make_app, screen_text, settle, until
from test_chat_screen import open_chat, wait_for

import tui.screens.chat as chat_screen
from presets.errors import TunebenchError
from tui.backend import engine_probe_for


class InternalError(TunebenchError):
    """Stands in for a layer's own error class (CliError, TargetError, StoreError…)."""


def refuse(*args, **kwargs):
    raise InternalError("run r-1 has no adapter", "train it first, or pick another run")


def notifications(app) -> str:
    return "\n".join(str(n.message) for n in app._notifications)


@async_test
async def test_a_failed_chat_load_says_the_message_and_the_advice(workspace, monkeypatch):
    monkeypatch.setattr(chat_screen, "resolve_request", refuse)
    app = make_app(workspace)
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.pause()
        app.push_screen(chat_screen.ChatScreen("r-1"))
        await wait_for(pilot, lambda: "Not loaded" in screen_text(app) and notifications(app), "the load to fail")
        text = screen_text(app)
        assert "Not loaded: run r-1 has no adapter → train it first, or pick another run" in text
        assert "InternalError" not in text + notifications(app)
        assert "train it first" in notifications(app)


@async_test
async def test_the_compare_picker_shows_a_listing_error_as_a_sentence(workspace, monkeypatch):
    app = make_app(workspace)
    monkeypatch.setattr(app.backend, "comparable_runs", refuse)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_chat(pilot, None)
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: isinstance(app.screen, chat_screen.PickScreen), "the picker")
        await wait_for(pilot, lambda: "no adapter" in screen_text(app), "the error")
        text = screen_text(app)
        assert "train it first" in text and "InternalError" not in text
        assert screen is not app.screen


@async_test
async def test_a_preset_that_cannot_be_opened_says_why_without_a_class_name(workspace, monkeypatch):
    from tui.screens.presets import PresetsScreen

    app = make_app(workspace)
    monkeypatch.setattr(app.backend, "read_text", refuse)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("2")
        await until(pilot, lambda: isinstance(app.screen, PresetsScreen) and notifications(app), "the error")
        await settle(pilot)
        assert "run r-1 has no adapter\n  → train it first" in notifications(app)
        assert "InternalError" not in notifications(app) + screen_text(app)


def test_a_broken_engine_side_reads_as_a_sentence(workspace, monkeypatch):
    import jobs.engine_process

    monkeypatch.setattr(jobs.engine_process, "engine_status", refuse)
    info = engine_probe_for(workspace)()
    assert not info.running and info.error == "run r-1 has no adapter\n  → train it first, or pick another run"
