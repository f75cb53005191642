"""Being told in the TUI: a run that ends gives one toast, one bell and one desktop escape — on
whatever screen is open, across polls and across restarts of the app; the settings turn them off."""

from __future__ import annotations

import pytest
from helpers.tui_app import FIXED_NOW, async_test, fill_store, make_app, settle

from jobs.store import Store


def _recording(app):
    written: list[str] = []
    bells: list[int] = []
    app.write_to_terminal = written.append  # the terminal itself (a headless driver drops it)
    app.bell = lambda: bells.append(1)
    return written, bells


def _toasts(app) -> list[tuple[str, str]]:
    return [(n.title, n.message) for n in app._notifications]


@async_test
async def test_a_run_that_ends_is_told_once_on_any_screen(workspace):
    fill_store(workspace)
    app = make_app(workspace)
    written, bells = _recording(app)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        assert _toasts(app) == [] and written == [] and bells == []  # the runs already there are no news
        await pilot.press("2")  # the Presets screen: the toast comes wherever the user is
        await settle(pilot)
        Store(workspace.store_db).set_state("r-fixed-0005", "completed")
        for _ in range(3):  # several polls: said once
            app.refresh_now()
            await settle(pilot)
        assert _toasts(app) == [("tunebench: run completed", "demo completed at step 120/300")]
        assert written == ["\x1b]9;tunebench: run completed: demo completed at step 120/300\x07"]
        assert bells == [1]

    # A restart of the TUI does not say it again.
    again = make_app(workspace)
    written, bells = _recording(again)
    async with again.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        again.refresh_now()
        await settle(pilot)
        assert _toasts(again) == [] and written == [] and bells == []


@async_test
async def test_bell_and_desktop_notification_can_be_turned_off(workspace):
    fill_store(workspace)
    app = make_app(workspace, bell=False, desktop_notify="off")
    written, bells = _recording(app)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        Store(workspace.store_db).set_state("r-fixed-0005", "failed", error="CUDA out of memory")
        app.refresh_now()
        await settle(pilot)
        assert _toasts(app) == [("tunebench: run failed", "demo failed at step 120/300: CUDA out of memory")]
        assert written == [] and bells == []


@async_test
async def test_palette_settings_are_remembered(workspace):
    fill_store(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        app.action_toggle_bell()
        app.action_next_desktop_notify()
        assert (app.config.bell, app.config.desktop_notify) == (False, "osc777")
    from tui.config import saved_settings

    assert saved_settings(workspace) == {"bell": False, "desktop_notify": "osc777"}


@pytest.mark.parametrize("size", [(120, 40), (80, 24)], ids=["120x40", "80x24"])
def test_run_ended_toast_snapshot(snap_compare, workspace, size):
    fill_store(workspace)
    app = make_app(workspace)
    _recording(app)

    async def run_before(pilot):
        await settle(pilot)
        store = Store(workspace.store_db)
        store.set_state("r-fixed-0005", "failed", error="CUDA out of memory")
        store.update_run("r-fixed-0005", active_seconds=600.0, finished_at=FIXED_NOW)  # the fixed clock's times
        app.refresh_now()
        await settle(pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)
