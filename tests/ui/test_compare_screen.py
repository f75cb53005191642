"""Runs: marking, filter, sort, tags and notes; Compare: the runs' metric overlaid, figures, settings
that differ. Pilot on real stores (fixed data, fixed clock); SVG snapshots of Compare."""

from __future__ import annotations

import math

import pytest
from helpers.tui_app import FIXED_NOW, async_test, fill_store, make_app, screen_text, settle, until

from tui.screens.compare import CompareScreen
from tui.screens.runs import LabelScreen, RunsScreen
from tui.widgets.plot import MetricPlot
from tui.widgets.runs_table import RunsTable

PRESET = """\
name: {name}
model:
  path: /models/tiny
method:
  name: lora
  lora:
    r: {r}
training:
  lr: {lr}
  epochs: 2
"""


def add_sweep(store) -> None:
    """Two finished runs of one sweep: other lr and LoRA rank, other losses, same everything else."""
    for run_id, name, lr, r, scale in (("r-sweep-0001", "lr-low", 1e-4, 8, 1.0), ("r-sweep-0002", "lr-high", 1e-3, 16, 0.6)):
        store.create_run("train", name, PRESET.format(name=name, lr=lr, r=r), run_id=run_id)
        store.set_state(run_id, "running")
        store.set_state(run_id, "completed")
        store.update_run(run_id, started_at=FIXED_NOW - 900, finished_at=FIXED_NOW - 300, active_seconds=600.0,
                         total_steps=200)
        rows = []
        for step in range(2, 201, 2):
            t = FIXED_NOW - 900 + step * 3.0 * scale
            rows += [(step, "loss", scale * 2.0 * math.exp(-step / 50) + 0.3 * scale + 0.04 * math.sin(step / 4), t),
                     (step, "grad_norm", 1.0 + scale * math.exp(-step / 80), t),
                     (step, "tokens_seen", step * 256.0 / scale, t)]
            if step % 40 == 0:
                rows.append((step, "eval_loss", scale * 2.2 * math.exp(-step / 60) + 0.4 * scale, t))
        store.add_metrics(run_id, rows)


def table_names(app) -> list[str]:
    table = app.screen.query_one(RunsTable)
    return [table.get_row_at(i)[0].plain.removeprefix("◆ ").split(" ↑")[0] for i in range(table.row_count)]


def notifications(app) -> list[str]:
    return [str(n.message) for n in app._notifications]


async def select(pilot, name: str) -> None:
    app = pilot.app
    table = app.screen.query_one(RunsTable)
    table.focus()
    steps = table_names(app).index(name) - table.cursor_row
    await pilot.press(*(["down"] * steps if steps > 0 else ["up"] * -steps))
    await settle(pilot)


async def open_compare(pilot, *names: str) -> CompareScreen:
    app = pilot.app
    await settle(pilot)
    for name in names:
        await select(pilot, name)
        await pilot.press("space")
        await settle(pilot)
    await pilot.press("C")
    await until(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.loads >= 1, "the Compare screen")
    await settle(pilot)
    return app.screen


@pytest.fixture
def app(workspace):
    store = fill_store(workspace)
    add_sweep(store)
    return make_app(workspace)


@async_test
async def test_mark_two_runs_and_compare_them(app):
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_compare(pilot, "lr-low", "lr-high")
        plot = screen.query_one("#compare-plot", MetricPlot)
        assert [line.label for line in plot.lines] == ["lr-low", "lr-high"]
        assert plot.title_text == "loss" and plot.lines[0].xs[:2] == [2.0, 4.0]
        assert set(plot.values) == {"lr-low", "lr-high"}
        diff = screen.query_one("#compare-diff")
        rows = [[str(cell) for cell in diff.get_row_at(i)] for i in range(diff.row_count)]
        assert rows == [["method.lora.r", "8", "16"], ["training.lr", "0.0001", "0.001"]]  # only what differs
        figures = screen.query_one("#compare-figures")
        low = [str(cell) for cell in figures.get_row("r-sweep-0001")]
        assert low[0] == "━ lr-low" and low[5] == "completed"
        text = screen_text(app)
        assert "Compare 2 runs" in text and "loss by step" in text and "settings that differ (2)" in text

        await pilot.press("m")  # the next metric: eval_loss
        await until(pilot, lambda: screen.loads >= 2, "eval_loss")
        assert plot.title_text == "eval_loss" and plot.lines[1].xs == [40.0, 80.0, 120.0, 160.0, 200.0]
        await pilot.press("a")  # by tokens seen
        await until(pilot, lambda: screen.loads >= 3, "tokens")
        assert plot.lines[0].xs == [40.0 * 256, 80.0 * 256, 120.0 * 256, 160.0 * 256, 200.0 * 256]
        assert "eval_loss by tokens seen" in screen_text(app)
        await pilot.press("a")  # by running time, from each run's first report
        await until(pilot, lambda: screen.loads >= 4, "time")
        assert plot.lines[0].xs[0] == pytest.approx(114.0) and "by time (s)" in screen_text(app)

        await pilot.press("escape")
        await settle(pilot)
        assert isinstance(app.screen, RunsScreen) and app.screen.marked == ["r-sweep-0001", "r-sweep-0002"]


@async_test
async def test_compare_asks_for_two_to_six_marked_runs(app):
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert "C Compare" not in screen_text(app)  # in the footer once a run is marked
        await pilot.press("space", "C")
        await settle(pilot)
        assert isinstance(app.screen, RunsScreen) and "C Compare" in screen_text(app)
        assert any("Mark 2 to 6 runs with space" in n for n in notifications(app))
        await pilot.press(*["space"] * 6)  # space marks and moves down: 7 runs asked, 6 taken
        await settle(pilot)
        assert len(app.screen.marked) == 6
        assert any("at most 6 runs" in n for n in notifications(app))
        await select(pilot, table_names(app)[0])
        await pilot.press("space")  # a second space unmarks
        await settle(pilot)
        assert len(app.screen.marked) == 5 and not app.screen.query_one(RunsTable).get_row_at(0)[0].plain.startswith("◆")


@async_test
async def test_filter_and_sort_the_runs(app):
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("slash")
        await pilot.press(*"state:queued")
        await settle(pilot)
        assert table_names(app) == ["merge-demo", "qlora-big"]
        await pilot.press("enter")  # back to the table, the filter stays
        await settle(pilot)
        assert app.screen.query_one(RunsTable).has_focus and table_names(app) == ["merge-demo", "qlora-big"]
        await pilot.press("escape")  # clears it
        await settle(pilot)
        assert len(table_names(app)) == 9
        await pilot.press("slash", *"lr- method:lora")
        await settle(pilot)
        assert table_names(app) == ["lr-high", "lr-low"]
        await pilot.press("escape")
        await pilot.press("slash", *"colour:red")
        await settle(pilot)
        assert "not a field to filter on" in screen_text(app) and len(table_names(app)) == 9
        await pilot.press("escape")

        await pilot.press("o")  # by name, lowest first
        await settle(pilot)
        assert table_names(app) == sorted(table_names(app), key=str.lower)
        assert "name ▲" in screen_text(app)
        await pilot.press("O")
        await settle(pilot)
        assert table_names(app) == sorted(table_names(app), key=str.lower, reverse=True)
        await pilot.click("#runs-table", offset=(2, 0))  # a click on a header sorts by its column
        await settle(pilot)
        assert app.screen.sort == ("name", False)
        while app.screen.sort is not None and app.screen.sort[0] != "loss":
            await pilot.press("o")
        await settle(pilot)
        losses = [app.backend.store.resolve_run(n).last_loss for n in table_names(app)]
        known = [value for value in losses if value is not None]
        assert known == sorted(known) and losses[len(known):] == [None] * (len(losses) - len(known))


@async_test
async def test_tag_and_note_a_run_then_find_it_by_tag(app):
    async with app.run_test(size=(160, 40)) as pilot:
        await settle(pilot)
        await select(pilot, "lr-low")
        await pilot.press("number_sign")
        await until(pilot, lambda: isinstance(app.screen, LabelScreen), "the tags dialog")
        await pilot.press(*"baseline v2", "enter")
        await until(pilot, lambda: app.backend.store.get_run("r-sweep-0001").tags == ["baseline", "v2"], "the tags")
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, LabelScreen), "the note dialog")
        await pilot.press(*"rank 8 is enough", "enter")
        await until(pilot, lambda: app.backend.store.get_run("r-sweep-0001").note == "rank 8 is enough", "the note")
        app.refresh_now()
        await until(pilot, lambda: "#baseline #v2 rank 8 is enough" in screen_text(app), "the labels in the table")
        await pilot.press("number_sign")
        await until(pilot, lambda: isinstance(app.screen, LabelScreen), "the tags dialog")
        await pilot.press("ctrl+u", *"v2", "enter")  # the dialog holds the whole set: baseline is dropped
        await until(pilot, lambda: app.backend.store.get_run("r-sweep-0001").tags == ["v2"], "the new tags")
        await pilot.press("number_sign")
        await until(pilot, lambda: isinstance(app.screen, LabelScreen), "the tags dialog")
        await pilot.press("ctrl+u", *"two,words!", "enter")
        await until(pilot, lambda: any("is not a tag" in n for n in notifications(app)), "the bad tag refused")
        app.refresh_now()
        await settle(pilot)
        await pilot.press("slash", *"#v2")
        await settle(pilot)
        assert table_names(app) == ["lr-low"]


def compare_snapshot(*names):
    async def run_before(pilot):
        await open_compare(pilot, *names)

    return run_before


@pytest.mark.parametrize("size", [(120, 40), (80, 24)], ids=["120x40", "80x24"])
def test_compare_screen(snap_compare, app, size):
    assert snap_compare(app, terminal_size=size, run_before=compare_snapshot("lr-low", "lr-high", "demo"))
