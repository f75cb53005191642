"""Hours-long sessions: a poll that changes nothing costs nothing, and hidden screens do no polling work.

Textual's Footer leaves a watcher behind for each of its keys whenever a screen refreshes its
bindings; screens that did so on every poll (0.4 s) grew that list without end, and every later
change scanned it (the frozen TUI of a ten-minute session).
"""

from __future__ import annotations

from helpers.tui_app import async_test, fill_store, make_app, settle
from textual.widgets import Footer

from jobs.store import Store
from tui.screens.dashboard import DashboardScreen
from tui.screens.runs import RunsScreen
from tui.widgets.runs_table import RunsTable
from tui.widgets.text_line import TextLine

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


def _finished_runs_only(workspace):
    from helpers.tui_app import _run

    store = Store(workspace.store_db)
    _run(store, "r-fixed-0001", "demo", state="completed", started_ago=3000, took=95)
    _run(store, "r-fixed-0002", "demo-diverge", state="failed", started_ago=2000, took=40, error="loss is NaN")
    return store


@async_test
async def test_a_poll_that_finds_nothing_new_redraws_nothing(workspace, monkeypatch):
    """An idle TUI (nothing running or queued) took 2.7 % of a core: every poll and every status
    check told every screen to redraw, and each status-line rewrite laid the screen out again."""
    store = _finished_runs_only(workspace)
    app = make_app(workspace)
    told, rewritten = [], []
    original_update = TextLine.update
    monkeypatch.setattr(TextLine, "update", lambda line, *a, **k: (rewritten.append(line.id), original_update(line, *a, **k))[1])
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert isinstance(app.screen, RunsScreen)
        app.state_signal.subscribe(app.screen, lambda _: told.append(1))
        told.clear(), rewritten.clear()
        for _ in range(10):
            app.refresh_now()  # a store poll and a status check, as the app's timers do
            await settle(pilot, 1)
        assert told == [] and rewritten == []

        store.update_run("r-fixed-0002", priority=3)  # something new: one redraw
        app.refresh_now()
        await settle(pilot)
        assert len(told) == 1


@async_test
async def test_a_text_line_redraws_when_its_text_or_style_changes_only(workspace, monkeypatch):
    from textual.content import Content

    _finished_runs_only(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        line = app.screen.query_one("#run-detail", TextLine)
        updates = []
        original_update = TextLine.update
        monkeypatch.setattr(TextLine, "update", lambda self, *a, **k: (updates.append(1), original_update(self, *a, **k))[1])
        for content in ["a", "a", Content.from_markup("[b]a[/]"), Content.from_markup("[b]a[/]"), "b"]:
            line.show(content)
        assert len(updates) == 3  # "a", then bold "a" (same text, new style), then "b"


def test_overview_news_is_a_changed_run_a_live_run_or_the_clock_past_its_refresh(workspace):
    from dataclasses import replace

    from tui.backend import Overview

    runs = _finished_runs_only(workspace).list_runs()
    quiet = Overview(runs, now=100.0)
    assert quiet.news_since(None)
    assert not Overview(runs, now=110.0).news_since(quiet)
    assert Overview(runs, now=130.0).news_since(quiet)  # "5m ago" moves on now and then
    assert Overview([replace(runs[0], priority=2), *runs[1:]], now=101.0).news_since(quiet)
    live = Overview([replace(runs[0], state="running"), *runs[1:]], now=100.0)
    assert Overview(live.runs, now=100.4).news_since(live)  # its running time moves with the clock
