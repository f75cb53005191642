"""Hours-long sessions: a poll that changes nothing costs nothing, and hidden screens do no polling work.

Textual's Footer leaves a watcher behind for each of its keys whenever a screen refreshes its
bindings; screens that did so on every poll (0.4 s) grew that list without end, and every later
change scanned it (the frozen TUI of a ten-minute session).
"""

from __future__ import annotations

from helpers.tui_app import async_test, fill_store, make_app, settle
from textual.widgets import Footer

from tui.screens.dashboard import DashboardScreen
from tui.screens.runs import RunsScreen
from tui.widgets.runs_table import RunsTable

POLLS = 40


def footer_watchers(screen) -> int:
    footer = screen.query_one(Footer)
    return sum(len(watchers) for watchers in getattr(footer, "__watchers", {}).values())


async def poll(pilot, times: int) -> None:
    for _ in range(times):
        pilot.app.state_signal.publish(None)  # what the app does after each read of the store
        await settle(pilot, 1)


@async_test
async def test_polls_that_change_nothing_leave_the_footer_alone(workspace):
    fill_store(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert isinstance(app.screen, RunsScreen)
        await poll(pilot, 2)
        before = footer_watchers(app.screen)
        await poll(pilot, POLLS)
        assert footer_watchers(app.screen) == before

        await pilot.press("enter")  # the running demo run's dashboard
        await settle(pilot)
        dashboard = app.screen
        assert isinstance(dashboard, DashboardScreen)
        dashboard.poll()
        await settle(pilot)
        before = footer_watchers(dashboard)
        for _ in range(POLLS):
            dashboard.poll()
            await settle(pilot, 1)
        assert footer_watchers(dashboard) == before


@async_test
async def test_a_buried_screen_skips_polls_and_catches_up_once_when_shown(workspace, monkeypatch):
    fill_store(workspace)
    app = make_app(workspace)
    shown = []
    original = RunsTable.show
    monkeypatch.setattr(RunsTable, "show", lambda table, *args: (shown.append(1), original(table, *args))[1])
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        runs = app.screen
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, DashboardScreen)
        shown.clear()
        await poll(pilot, POLLS)
        assert shown == []  # Runs is under the dashboard: no table work
        await pilot.press("escape")
        await settle(pilot)
        assert app.screen is runs
        assert len(shown) == 1  # one catch-up on the latest state
        await poll(pilot, 3)
        assert len(shown) == 4  # shown again: every poll redraws it
