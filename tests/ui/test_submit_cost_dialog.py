"""The Submit dialog shows what a run will cost before it is queued: its steps, the memory preflight
(against the GPU the header shows) and a duration from the last run of the same preset here.
A real workspace (the tiny model, the demo data) and a real store."""

from __future__ import annotations

import pytest
from helpers.tui_app import _run, async_test, make_app, settle, until

from jobs.store import Store
from tui.screens.modals import SubmitScreen


def _earlier_demo_run(workspace) -> None:
    # 200 steps in 100 s: 0.5 s/step.
    _run(Store(workspace.store_db), "r-fixed-0100", "demo", state="completed", started_ago=1000, took=100.0,
         step=200, total_steps=200)


async def _dialog(pilot, preset: str = "demo", overrides: str = "") -> SubmitScreen:
    app = pilot.app
    await settle(pilot)
    app.push_screen(SubmitScreen(preset=preset, overrides=overrides))
    await until(pilot, lambda: isinstance(app.screen, SubmitScreen) and app.screen.cost is not None, "the cost")
    await settle(pilot)
    return app.screen


@async_test
async def test_submit_shows_steps_memory_and_time_before_queueing(demo_workspace):
    from engine.train import total_steps
    from presets import load_preset

    _earlier_demo_run(demo_workspace)
    app = make_app(demo_workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        dialog = await _dialog(pilot)
        cost = dialog.cost
        preset = load_preset("demo", demo_workspace.root)
        assert cost.samples and cost.steps == total_steps(preset, cost.samples)
        assert cost.memory.endswith("of 19.00 GiB free: fits") and cost.fits is True  # the L4 of the header: 24 - 5 GiB
        assert cost.seconds == pytest.approx(0.5 * cost.steps)
        assert cost.basis == "demo: 0.50 s/step over 200 steps"
        assert Store(demo_workspace.store_db).count_runs("queued") == 0  # nothing queued by looking


@async_test
async def test_overrides_change_the_cost(demo_workspace):
    app = make_app(demo_workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        dialog = await _dialog(pilot, overrides="training.max_steps=7")
        assert dialog.cost.steps == 7
        assert dialog.cost.seconds is None and dialog.cost.basis == "no earlier run of demo here to time it by"


def _cost_line(app) -> str:
    found = app.screen.query("#submit-cost")
    return str(found.first().content) if found else ""


@async_test
async def test_a_preset_that_does_not_load_says_why(demo_workspace):
    app = make_app(demo_workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        app.push_screen(SubmitScreen(preset="demo", overrides="training.lr=abc"))
        await until(pilot, lambda: "cost: unknown" in _cost_line(app), "the reason")
        assert 'training.lr: expected a number, got "abc"' in _cost_line(app)


@pytest.mark.parametrize("size", [(120, 40), (80, 24)], ids=["120x40", "80x24"])
def test_submit_cost_snapshot(snap_compare, demo_workspace, size):
    _earlier_demo_run(demo_workspace)

    async def run_before(pilot):
        await _dialog(pilot)

    assert snap_compare(make_app(demo_workspace), terminal_size=size, run_before=run_before)
