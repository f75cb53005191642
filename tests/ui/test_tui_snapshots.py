"""SVG snapshots of the main screens on fixed data (fixed clock, engine line, GPUs; no blinking).

Update after an intended change of the look: pytest tests/test_tui_snapshots.py --snapshot-update
"""

from __future__ import annotations

import pytest
from helpers.tui_app import fill_store, make_app, settle, until

from tui import app as app_module
from tui.screens.dashboard import DashboardScreen
from tui.screens.presets import PresetsScreen
from tui.widgets.yaml_editor import YamlEditor


@pytest.fixture
def app(workspace):
    fill_store(workspace)
    return make_app(workspace)


def wait_for_dashboard(run_id: str):
    async def run_before(pilot):
        app = pilot.app
        await settle(pilot)
        app.open_run(run_id)
        await until(pilot, lambda: isinstance(app.screen, DashboardScreen) and app.screen.run is not None
                    and app.screen.feed.reads >= 1, "the dashboard")
        await settle(pilot)

    return run_before


@pytest.mark.parametrize("size", [(120, 40), (80, 24)], ids=["120x40", "80x24"])
def test_runs_screen(snap_compare, app, size):
    async def run_before(pilot):
        await settle(pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", [(120, 40), (80, 24)], ids=["120x40", "80x24"])
def test_dashboard_running(snap_compare, app, size):
    assert snap_compare(app, terminal_size=size, run_before=wait_for_dashboard("r-fixed-0005"))


def test_dashboard_failed_run(snap_compare, app):
    assert snap_compare(app, terminal_size=(100, 30), run_before=wait_for_dashboard("r-fixed-0001"))


FIXED_PRESET = """\
# A preset of this test: the built-ins change as the project grows, this does not.
name: snapshot
description: fixed text for the snapshot
model:
  path: /models/tiny
method:
  name: lora
  lora:
    r: 8
    alpha: 16
data:
  train_files: /data/train.json
  max_length: 256
training:
  epochs: 2
  batch_size: 4
  lr: 2.0e-4
"""


def test_presets_with_problems(snap_compare, app, workspace):
    path = workspace.presets_dir / "snapshot.yaml"
    path.write_text(FIXED_PRESET)
    app.backend.preset_entries = lambda: [("snapshot", "workspace", path)]

    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("2")
        await until(pilot, lambda: isinstance(app.screen, PresetsScreen) and app.screen.validation is not None,
                    "the presets screen")
        editor = app.screen.query_one(YamlEditor)
        row = next(i for i, line in enumerate(editor.text.split("\n")) if line.strip().startswith("lr:"))
        editor.replace("  lr: fast", (row, 0), (row, len(editor.document.get_line(row))))
        editor.insert("  epochz: 3\n", (row, 0))
        await until(pilot, lambda: app.screen.validation.text == editor.text, "validation")
        editor.focus()
        editor.move_cursor((row + 1, 2))
        await settle(pilot)

    assert snap_compare(app, terminal_size=(120, 40), run_before=run_before)


def test_help_screen(snap_compare, app, monkeypatch):
    # Only this screens: the plug-in screens (checkpoints, evals, chat) have their own tests.
    monkeypatch.setattr(app_module, "NAVIGATION", [e for e in app_module.NAVIGATION
                                                   if e.name in ("runs", "presets", "dashboard")])

    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("question_mark")
        await settle(pilot)

    assert snap_compare(app, terminal_size=(100, 36), run_before=run_before)
