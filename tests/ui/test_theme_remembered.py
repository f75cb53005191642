"""The theme picked in the command palette is the next start's (tui/config.py's tui.json)."""

from __future__ import annotations

from helpers.tui_app import async_test, make_app, settle

from tui.config import SETTINGS_FILE, TuiConfig


@async_test
async def test_a_theme_picked_is_remembered_for_the_next_start(workspace, monkeypatch):
    monkeypatch.delenv("TUNEBENCH_THEME", raising=False)
    assert TuiConfig.from_env(str(workspace.root)).theme == "textual-dark"
    app = make_app(workspace)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        assert not (workspace.root / SETTINGS_FILE).exists()  # starting with the default writes nothing
        app.theme = "nord"  # what the palette's theme command does
        await settle(pilot)
    assert (workspace.root / SETTINGS_FILE).stat().st_mode & 0o077 == 0
    assert TuiConfig.from_env(str(workspace.root)).theme == "nord"
    monkeypatch.setenv("TUNEBENCH_THEME", "gruvbox")  # the environment still wins
    assert TuiConfig.from_env(str(workspace.root)).theme == "gruvbox"


def test_an_unreadable_settings_file_is_ignored(workspace, monkeypatch):
    monkeypatch.delenv("TUNEBENCH_THEME", raising=False)
    workspace.ensure()
    (workspace.root / SETTINGS_FILE).write_text("{not json")
    assert TuiConfig.from_env(str(workspace.root)).theme == "textual-dark"
