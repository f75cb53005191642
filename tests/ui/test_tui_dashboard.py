"""The run dashboard: plots, figures, log, findings; live updates; toggles; frozen when finished."""

from __future__ import annotations

from helpers.tui_app import FIXED_NOW, async_test, fill_store, make_app, screen_text, settle, until

from textual.content import Content

from tui.screens.dashboard import DashboardScreen
from tui.screens.modals import ConfirmScreen
from tui.widgets.panels import FindingsPanel
from tui.widgets.plot import MetricPlot


async def open_dashboard(pilot, run_id: str = "r-fixed-0005") -> DashboardScreen:
    app = pilot.app
    await settle(pilot)
    app.open_run(run_id)
    await until(pilot, lambda: isinstance(app.screen, DashboardScreen) and app.screen.run is not None,
                "the dashboard")
    return app.screen


def plot(screen, plot_id: str) -> MetricPlot:
    return screen.query_one(f"#plot-{plot_id}", MetricPlot)


@async_test
async def test_dashboard_shows_the_run(workspace):
    fill_store(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("enter")  # the running demo run is first in the table
        await until(pilot, lambda: isinstance(app.screen, DashboardScreen) and app.screen.run is not None,
                    "the dashboard")
        screen = app.screen
        assert screen.run_id == "r-fixed-0005"
        loss = plot(screen, "loss")
        assert [line.label for line in loss.lines] == ["train", "eval"]
        assert loss.lines[0].xs[-1] == 120 and len(loss.lines[1].xs) == 4  # evals at 25, 50, 75, 100
        assert "train 0.7256" in str(loss.border_subtitle)
        assert [line.label for line in plot(screen, "memory").lines] == ["alloc", "reserved", "used", "total"]
        assert plot(screen, "memory").lines[-1].ys[-1] == 24.0, "device total in GiB"
        text = screen_text(app)
        for expected in ("98.3k / 1.2M (8.3%)", "best eval   1.0731 @ step 100", "peak memory 3.6 GiB, 4.2 reserved",
                         "step 120/300 · ETA 6m00s · 0.50 step/s", "step 120: loss", "plateau steps 50–100",
                         "lower the learning rate"):
            assert expected in text, expected
        assert screen.query_one(FindingsPanel).border_title == "findings (1)"


@async_test
async def test_new_metrics_reach_the_plots(workspace):
    store = fill_store(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_dashboard(pilot)
        seen = screen.feed.series.last_id
        store.add_metrics("r-fixed-0005", [(125, "loss", 0.4321, FIXED_NOW), (125, "grad_norm", 0.25, FIXED_NOW)])
        store.add_finding("r-fixed-0005", {"rule": "divergence", "severity": "error", "title": "loss rising",
                                           "advice": "lower the lr", "step_start": 120, "step_end": 125})
        with (workspace.run_dir("r-fixed-0005") / "run.log").open("a") as log:
            log.write("step 125: loss 0.4321\n")
        screen.poll()
        await until(pilot, lambda: "train 0.4321" in str(plot(screen, "loss").border_subtitle), "the new loss")
        assert screen.feed.series.last_id == seen + 2, "only the two new rows were read"
        assert plot(screen, "loss").lines[0].xs[-1] == 125
        assert screen.query_one(FindingsPanel).border_title == "findings (2)"
        assert "step 125: loss 0.4321" in screen_text(app)


@async_test
async def test_toggles_smoothing_log_scale_events_and_zoom(workspace):
    fill_store(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_dashboard(pilot)
        raw = list(plot(screen, "loss").lines[0].ys)
        await pilot.press("m")
        await settle(pilot)
        smoothed = plot(screen, "loss").lines[0].ys
        assert screen.smoothing and smoothed != raw and "smoothed" in plot(screen, "loss").note
        assert plot(screen, "loss").lines[1].ys == screen._plots["loss"][1].raw[1], "eval points are never smoothed"
        await pilot.press("g")
        await settle(pilot)
        assert plot(screen, "loss").log_y and "log" in plot(screen, "loss").note
        assert not plot(screen, "lr").log_y
        await pilot.press("v")
        await settle(pilot)
        assert "queued (train demo)" in screen_text(app) and "queued → running" in screen_text(app)
        assert "step 120: loss" not in screen_text(app), "the events replace the log in the panel"
        await pilot.press("v")
        await settle(pilot)
        assert "step 120: loss" in screen_text(app)
        await pilot.press("z")
        await settle(pilot)
        assert screen.maximized is plot(screen, "loss")
        await pilot.press("z")
        await settle(pilot)
        assert screen.maximized is None
        await pilot.press("escape")
        await settle(pilot)
        assert not isinstance(app.screen, DashboardScreen)


@async_test
async def test_a_finished_run_is_frozen(workspace):
    fill_store(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_dashboard(pilot, "r-fixed-0001")  # failed
        screen.poll()
        await until(pilot, lambda: screen.frozen, "the view to freeze")
        text = screen_text(app)
        assert "loss is NaN at step 40" in text and "lower training.lr" in text
        reads = screen.feed.reads
        screen.poll()
        await settle(pilot)
        assert screen.feed.reads == reads, "a frozen view does not read the store again"
        assert screen.check_action("cancel_run", ()) is None, "nothing to cancel: the key is dimmed"
        assert screen.check_action("resume_run", ()) is True


@async_test
async def test_a_long_run_is_drawn_from_a_bounded_number_of_points(workspace):
    store = fill_store(workspace)
    rows = [(step, "loss", 3.0 / (1 + step / 1000), FIXED_NOW - 100_000 + step) for step in range(1, 100_001)]
    store.create_run("train", "long", "name: long\n", run_id="r-long")
    store.set_state("r-long", "running")
    store.update_run("r-long", total_steps=200_000, started_at=FIXED_NOW - 100_000)
    store.add_metrics("r-long", rows)
    app = make_app(workspace, plot_points=400)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_dashboard(pilot, "r-long")
        await until(pilot, lambda: plot(screen, "loss").lines, "the loss plot")
        line = plot(screen, "loss").lines[0]
        assert len(screen.feed.series.get("loss")) == 100_000, "every point is kept"
        assert len(line.xs) <= 400, "at most plot_points are drawn"
        assert line.xs[0] == 1 and line.xs[-1] >= 99_000
        assert "step 100000/200000" in screen_text(app)


@async_test
async def test_a_deleted_run_says_so(workspace):
    store = fill_store(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_dashboard(pilot, "r-fixed-0002")
        store.delete_run("r-fixed-0002")
        screen.frozen = False
        screen.poll()
        await until(pilot, lambda: "This run was deleted" in screen_text(app), "the deleted notice")


@async_test
async def test_cancel_asks_first_and_says_a_checkpoint_is_saved(workspace):
    store = fill_store(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_dashboard(pilot, "r-fixed-0005")  # running
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the cancel question")
        assert "step 120" in str(app.screen.question) and "saves a checkpoint" in str(app.screen.question)
        await pilot.press("escape")
        await settle(pilot)
        assert app.screen is screen and store.stop_requested("r-fixed-0005") is None
        await pilot.press("c", "y")
        await until(pilot, lambda: store.stop_requested("r-fixed-0005") == "cancel", "the stop request")


@async_test
async def test_at_80x24_legends_figures_and_status_are_never_cut(workspace):
    fill_store(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_dashboard(pilot)
        await settle(pilot)
        text = screen_text(app)
        lines = text.splitlines()
        assert "…" not in text, "no title, legend or figure cut with an ellipsis"
        loss = plot(screen, "loss")
        assert "━ train ━ eval" in Content.from_markup(loss.border_title).plain
        assert "━ 0.7256 ━ 1.0731" in Content.from_markup(loss.border_subtitle).plain
        # A key figure that does not fit beside its label goes whole onto the next line.
        assert "│   98.3k / 1.2M (8.3%)" in text
        assert any("1.0731 @ step 100" in line for line in lines)
        assert lines[0].rstrip().endswith("queue 2"), "the status line fits, whole"
        await pilot.resize_terminal(120, 40)
        await settle(pilot)
        assert "train 0.7256  eval 1.0731" in Content.from_markup(loss.border_subtitle).plain
        assert "98.3k / 1.2M (8.3%)" in screen_text(app)


@async_test
async def test_events_wrap_at_word_boundaries_and_again_on_resize(workspace):
    store = fill_store(workspace)
    event = ("clipping is active at 100% of logged steps (median grad norm 3.96, max 1): frequent clipping lowers "
             "the effective learning rate; fine early in training, but if it lasts, lower training.lr")
    store.add_event("r-fixed-0005", "warning", event, step=120)
    app = make_app(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_dashboard(pilot)
        await pilot.press("v")
        await settle(pilot)
        log = screen.query_one("#run-log")
        for size in ((80, 24), (120, 40)):
            await pilot.resize_terminal(*size)
            await settle(pilot)
            log.scroll_end(animate=False, immediate=True)
            await settle(pilot)
            rows = [strip.text.rstrip() for strip in log.lines]
            start = next(i for i, row in enumerate(rows) if row.startswith("⚠ [step 120] clipping"))
            wrapped = rows[start:]
            assert len(wrapped) > 1 and all(len(row) <= log.scrollable_content_region.width for row in wrapped)
            # Joined at the line breaks with a space, the rows are the event, word for word.
            assert " ".join(wrapped) == f"⚠ [step 120] {event}"
            assert log.virtual_size.width <= log.scrollable_content_region.width, "nothing past the right edge"
