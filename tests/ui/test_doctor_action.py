"""From advice to action on the dashboard: `f` copies the run's preset with a finding's suggested
change and opens the copy in the Presets editor; `x` exports the plots (SVG) and metrics (CSV).
Real stores and preset files; SVG snapshots of what the dashboard adds."""

from __future__ import annotations

import pytest
from helpers.tui_app import async_test, fill_store, make_app, settle, until

from tui.screens.dashboard import DashboardScreen
from tui.screens.modals import FixScreen
from tui.screens.presets import PresetsScreen
from tui.widgets.yaml_editor import YamlEditor

LR_FINDING = {"rule": "divergence", "key": "climb", "severity": "error", "step_start": 60, "step_end": 120,
              "title": "the loss diverges: 2.9 now against its best 0.6 around step 60",
              "advice": "Lower the learning rate ÷5 (training.lr: 0.005 → 0.001) and lengthen the warmup",
              "evidence": {"kind": "rise"}, "change": {"training.lr": 0.001, "training.warmup_ratio": 0.1}}
CLIP_FINDING = {"rule": "spikes", "severity": "warning", "step_start": 40, "step_end": 90,
                "title": "3 loss spikes, the largest 4.1 at step 90", "advice": "Clip harder",
                "evidence": {}, "change": {"training.max_grad_norm": 0.5}}


def _with(workspace, *findings):
    store = fill_store(workspace)
    for finding in findings:
        store.add_finding("r-fixed-0005", finding)
    return store


async def _open_dashboard(pilot):
    app = pilot.app
    await settle(pilot)
    app.open_run("r-fixed-0005")
    await until(pilot, lambda: isinstance(app.screen, DashboardScreen) and app.screen.run is not None
                and app.screen.feed.reads >= 1, "the dashboard")
    await settle(pilot)


async def _editor_on(pilot, name: str) -> str:
    app = pilot.app
    await until(pilot, lambda: isinstance(app.screen, PresetsScreen) and app.screen.current is not None
                and app.screen.current.name == name, f"the editor on {name}")
    return app.screen.query_one(YamlEditor).text


@async_test
async def test_one_key_makes_the_fixed_copy_and_opens_it_in_the_editor(workspace):
    _with(workspace, LR_FINDING)
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await _open_dashboard(pilot)
        assert app.screen.check_action("fix_preset", ()) is True
        await pilot.press("f")
        text = await _editor_on(pilot, "demo-fix1")
        assert "name: demo-fix1" in text and "lr: 0.001" in text and "warmup_ratio: 0.1" in text
        assert text.startswith("# based on built-in preset: demo")
        assert not app.screen.modified  # saved: ready to submit
    saved = (workspace.root / "presets" / "demo-fix1.yaml").read_text()
    assert saved == text


@async_test
async def test_several_suggestions_are_picked_from_a_list(workspace):
    _with(workspace, LR_FINDING, CLIP_FINDING)
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await _open_dashboard(pilot)
        await pilot.press("f")
        await until(pilot, lambda: isinstance(app.screen, FixScreen), "the picker")
        await pilot.press("down", "enter")  # the second: the spikes' clipping (errors come first)
        text = await _editor_on(pilot, "demo-fix1")
        assert "max_grad_norm: 0.5" in text and "lr: 0.001" not in text


@async_test
async def test_no_suggestion_no_key(workspace):
    fill_store(workspace)  # its one finding has no change
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await _open_dashboard(pilot)
        assert app.screen.check_action("fix_preset", ()) is False
        assert "f" not in {key for key, b in app.screen.active_bindings.items() if b.enabled and b.binding.show
                           and app.screen.check_action(b.binding.action, ()) is not False}


@async_test
async def test_export_saves_the_plots_and_the_metrics_into_the_run_folder(workspace):
    fill_store(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await _open_dashboard(pilot)
        await pilot.press("x")
        await settle(pilot)
    folder = workspace.run_dir("r-fixed-0005") / "exports"
    svg = (folder / "demo-step120.svg").read_text()
    assert svg.startswith("<svg") and "loss" in svg
    csv_lines = (folder / "demo-step120.csv").read_text().splitlines()
    assert csv_lines[0].startswith("step,time,loss,eval_loss,grad_norm,lr")
    assert len(csv_lines) == 1 + 120 // 5


@pytest.mark.parametrize("size", [(120, 40), (80, 24)], ids=["120x40", "80x24"])
def test_dashboard_with_a_fix_snapshot(snap_compare, workspace, size):
    _with(workspace, LR_FINDING)
    assert snap_compare(make_app(workspace), terminal_size=size, run_before=_open_dashboard)


@pytest.mark.parametrize("size", [(120, 40), (80, 24)], ids=["120x40", "80x24"])
def test_fix_picker_snapshot(snap_compare, workspace, size):
    _with(workspace, LR_FINDING, CLIP_FINDING)

    async def run_before(pilot):
        await _open_dashboard(pilot)
        await pilot.press("f")
        await until(pilot, lambda: isinstance(pilot.app.screen, FixScreen), "the picker")
        await settle(pilot)

    assert snap_compare(make_app(workspace), terminal_size=size, run_before=run_before)
