"""The Runs screen, driven with keys on a store of fixed runs."""

from __future__ import annotations

from helpers.tui_app import async_test, fill_store, make_app, screen_text, settle, until

from tui.screens.modals import ConfirmScreen, SubmitScreen
from tui.screens.runs import RunsScreen
from tui.widgets.runs_table import RunsTable


def table_names(app) -> list[str]:
    table = app.screen.query_one(RunsTable)
    return [table.get_row_at(i)[0].plain.split(" ↑")[0] for i in range(table.row_count)]


def notifications(app) -> list[str]:
    return [str(n.message) for n in app._notifications]


async def select(pilot, name: str) -> None:
    app = pilot.app
    names = table_names(app)
    table = app.screen.query_one(RunsTable)
    table.focus()
    steps = names.index(name) - table.cursor_row
    await pilot.press(*(["down"] * steps if steps > 0 else ["up"] * -steps))
    await settle(pilot)
    assert app.selected_run_id == app.backend.store.resolve_run(name).id


@async_test
async def test_runs_table_shows_every_run_in_queue_order(workspace):
    fill_store(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert isinstance(app.screen, RunsScreen)
        # Running first, the queue in the engine's order (priority 2 before 0), then newest first.
        assert table_names(app) == ["demo", "merge-demo", "qlora-big", "qlora-night", "sweep-lr-3", "eval-demo",
                                    "demo-diverge"]
        text = screen_text(app)
        assert "● engine up pid 4242" in text and "GPU0 5.0/24.0 GiB" in text and "queue 2" in text
        row = app.screen.query_one(RunsTable).get_row("r-fixed-0005")
        cells = [c.plain if hasattr(c, "plain") else c for c in row]
        assert cells[1] == "▶ running" and cells[2].endswith("40%") and cells[3] == "15m00s"
        assert cells[4] == "120/300" and cells[7] == "10m00s" and cells[10] == "⚑1"


@async_test
async def test_cancel_a_running_and_a_queued_run(workspace):
    store = fill_store(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await select(pilot, "demo")
        await pilot.press("c")  # a stray key costs nothing: it asks, and `n` keeps the run going
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the cancel question")
        assert "saves a checkpoint" in str(app.screen.question)
        await pilot.press("n")
        await settle(pilot)
        assert isinstance(app.screen, RunsScreen) and store.stop_requested("r-fixed-0005") is None
        await pilot.press("c", "y")
        await until(pilot, lambda: store.stop_requested("r-fixed-0005") == "cancel", "the stop request")
        await until(pilot, lambda: any("cancel requested" in n for n in notifications(app)), "the notification")
        await select(pilot, "qlora-big")
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the cancel question")
        assert "off the queue" in str(app.screen.question)
        await pilot.press("y")
        await until(pilot, lambda: store.get_run("r-fixed-0006").state == "cancelled", "the queued run cancelled")
        await until(pilot, lambda: "■ cancelled" in str(app.screen.query_one(RunsTable).get_row("r-fixed-0006")[1]),
                    "the table to show it")


@async_test
async def test_raise_priority_moves_a_run_to_the_front_of_the_queue(workspace):
    store = fill_store(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await select(pilot, "qlora-big")
        await pilot.press("p")
        await until(pilot, lambda: store.get_run("r-fixed-0006").priority == 3, "the new priority")
        await until(pilot, lambda: table_names(app)[1] == "qlora-big", "the table to reorder")
        assert app.selected_run_id == "r-fixed-0006", "the cursor follows the run it moved"
        await select(pilot, "eval-demo")
        await pilot.press("p")  # not queued: nothing happens but a dimmed key
        await settle(pilot)
        assert store.get_run("r-fixed-0002").priority == 0


@async_test
async def test_delete_asks_first(workspace):
    store = fill_store(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await select(pilot, "sweep-lr-3")
        await pilot.press("d")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        await settle(pilot)
        assert store.get_run("r-fixed-0003") is not None
        await pilot.press("d")
        await settle(pilot)
        await pilot.press("y")
        await until(pilot, lambda: store.get_run("r-fixed-0003") is None, "the run deleted")
        await until(pilot, lambda: "sweep-lr-3" not in table_names(app), "the row gone")


@async_test
async def test_a_refused_action_is_a_notification_not_a_crash(workspace):
    fill_store(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await select(pilot, "qlora-night")  # interrupted, but no checkpoint on disk
        await pilot.press("r")
        await until(pilot, lambda: any("no checkpoint" in n for n in notifications(app)), "the refusal")
        assert app.is_running and isinstance(app.screen, RunsScreen)


@async_test
async def test_retry_creates_a_new_run(workspace):
    store = fill_store(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await select(pilot, "demo-diverge")
        await pilot.press("t")
        await until(pilot, lambda: any(r.parent_run == "r-fixed-0001" for r in store.list_runs()), "the retry")
        retry = next(r for r in store.list_runs() if r.parent_run == "r-fixed-0001")
        assert retry.state == "queued" and retry.name == "demo-diverge-2"


def _demo_paths(workspace):
    # submit checks that the model and data paths exist; the runs here never train
    (workspace.models_dir / "tiny").mkdir(parents=True)
    workspace.data_dir.mkdir(parents=True)
    (workspace.data_dir / "demo_capitals.json").write_text("[]")


@async_test
async def test_submit_a_preset_with_overrides(workspace):
    store = fill_store(workspace)
    _demo_paths(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, SubmitScreen) and app.screen.entries, "the preset list")
        preset_input = app.screen.query_one("#preset")
        preset_input.value = ""
        await pilot.press(*"demo-diverge", "tab", "tab")  # to the overrides (past the list)
        await pilot.press(*"training.max_steps=7 training.lr=abc")
        await pilot.press("enter")
        await until(pilot, lambda: "training.lr" in str(app.screen.query_one("#submit-error").render()),
                    "the validation error")
        assert isinstance(app.screen, SubmitScreen), "an invalid override keeps the dialog open"
        overrides = app.screen.query_one("#overrides")
        overrides.value = "training.max_steps=7"
        await pilot.press("enter")
        await until(pilot, lambda: len(store.list_runs()) == 8, "the submitted run")
        run = store.list_runs()[0]
        assert run.name == "demo-diverge-2", "names stay unique: the failed demo-diverge keeps its name"
        assert run.state == "queued" and run.info["overrides"] == ["training.max_steps=7"]
        assert "max_steps: 7" in run.preset_yaml
        await until(pilot, lambda: "demo-diverge-2" in table_names(app), "the new run in the table")
        await until(pilot, lambda: app.screen.query_one(RunsTable).selected_id == app.selected_run_id == run.id,
                    "the cursor on the submitted run")


@async_test
async def test_cursor_follows_a_submit_that_a_poll_showed_first(workspace):
    # The order that once left the cursor behind: a poll rebuilds the table with the new run (its
    # highlight event still in flight for the old row), then the submit's answer arrives.
    store = fill_store(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = app.screen
        before = app.selected_run_id
        run = store.create_run("train", "demo-new", "name: demo-new\n")
        app.overview = app.backend.overview()
        screen._redraw()  # the poll's redraw, now rather than on the signal's next turn
        screen._submitted(run)
        await settle(pilot)
        assert before != run.id
        assert screen.query_one(RunsTable).selected_id == app.selected_run_id == run.id


@async_test
async def test_engine_down_shows_and_starts(workspace):
    fill_store(workspace)
    app = make_app(workspace, engine_running=False, gpus=False)
    started = []
    app.backend.start_engine = lambda: started.append(True)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        text = screen_text(app)
        assert "○ engine down" in text and "CPU" in text
        assert "Start engine" in text, "the footer offers the key while the engine is down"
        await pilot.press("E")
        await until(pilot, lambda: started == [True], "the engine start")


@async_test
async def test_empty_workspace_says_what_to_do(workspace):
    app = make_app(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert "No runs yet" in screen_text(app)


@async_test
async def test_columns_give_way_by_priority_at_80_columns(workspace):
    fill_store(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        table = app.screen.query_one(RunsTable)
        assert table.virtual_size.width <= table.scrollable_content_region.width  # no horizontal scrollbar
        assert not table.show_horizontal_scrollbar
        assert set(table.hidden_columns) == {"gpu", "kind", "elapsed", "best", "tags"}  # the lowest priorities
        header = screen_text(app).splitlines()[1]
        assert header.split() == ["name", "state", "progress", "ETA", "step/total", "loss", "⚑"]
        await pilot.resize_terminal(130, 30)
        await settle(pilot)
        assert table.hidden_columns == [] and "best eval" in screen_text(app)
