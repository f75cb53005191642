"""The Checkpoints screen with Pilot: the table and its markers, and every action key."""

from __future__ import annotations

from helpers.checkpoints import fake_trained_run
from textual.widgets import DataTable, Input
from helpers.tui_app import async_test, make_app, screen_text, settle, until

from jobs.store import open_store
from presets import load_preset_text
from tui.screens.checkpoints import CheckpointsScreen, PathScreen
from tui.screens.modals import ConfirmScreen


async def open_checkpoints(pilot, run_id: str) -> CheckpointsScreen:
    app = pilot.app
    await settle(pilot)
    app.selected_run_id = run_id
    app.action_open_screen("checkpoints")
    await until(pilot, lambda: isinstance(app.screen, CheckpointsScreen) and app.screen.infos, "the checkpoints")
    return app.screen


async def select_step(pilot, screen: CheckpointsScreen, step: int) -> None:
    table = screen.query_one(DataTable)
    table.move_cursor(row=[i.step for i in screen.infos].index(step))
    await settle(pilot)
    assert screen.selected.step == step


def steps(store, run_id):
    return [row.step for row in store.list_checkpoints(run_id)]


@async_test
async def test_table_markers_and_keep(workspace):
    run_id = fake_trained_run(workspace)
    store = open_store(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(120, 30)) as pilot:
        screen = await open_checkpoints(pilot, run_id)
        table = screen.query_one(DataTable)
        assert table.row_count == 3
        text = screen_text(app)
        assert "best eval loss 1.5000 at step 20" in text and "3 checkpoint(s)" in text
        best_row = [line for line in text.splitlines() if "★ best" in line]
        assert len(best_row) == 1 and " 20 " in best_row[0] and "1.5000" in best_row[0]
        await select_step(pilot, screen, 10)
        await pilot.press("k")
        await until(pilot, lambda: store.list_checkpoints(run_id)[0].keep and screen.infos[0].keep, "keep on step 10")
        assert (workspace.run_dir(run_id) / "checkpoints" / "checkpoint-10" / "tunebench-keep").is_file()
        assert "keep" in screen_text(app)
        # Resume is only offered for runs that can resume; this one completed.
        assert screen.check_action("resume", ()) is False


@async_test
async def test_home_and_end_move_the_row_cursor(workspace):
    run_id = fake_trained_run(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(120, 30)) as pilot:
        screen = await open_checkpoints(pilot, run_id)
        await select_step(pilot, screen, 20)
        await pilot.press("home")
        await settle(pilot)
        assert screen.selected.step == 10
        await pilot.press("d")  # so `d` asks about the first checkpoint, the row on show
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the delete question")
        assert "checkpoint 10 " in str(app.screen.question)
        await pilot.press("n")
        await settle(pilot)
        await pilot.press("end")
        await settle(pilot)
        assert screen.selected.step == 30


@async_test
async def test_eval_results_key_replaces_the_screen_without_an_error(workspace):
    # The checkpoints screen, on its way out, was asked for its keys after its table was gone.
    from tui.screens.evals import EvalsScreen

    run_id = fake_trained_run(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(120, 30)) as pilot:
        await open_checkpoints(pilot, run_id)
        await pilot.press("v")
        await until(pilot, lambda: isinstance(app.screen, EvalsScreen), "the evals screen")
        await settle(pilot)
        assert not any(isinstance(s, CheckpointsScreen) for s in app.screen_stack)


@async_test
async def test_delete_asks_once_and_twice_for_the_best(workspace):
    run_id = fake_trained_run(workspace)
    store = open_store(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(120, 30)) as pilot:
        screen = await open_checkpoints(pilot, run_id)
        await select_step(pilot, screen, 30)
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
        await pilot.press("y")
        await until(pilot, lambda: steps(store, run_id) == [10, 20] and len(screen.infos) == 2, "step 30 deleted")
        assert not (workspace.run_dir(run_id) / "checkpoints" / "checkpoint-30").exists()

        await select_step(pilot, screen, 20)  # the best
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the first confirmation")
        await pilot.press("y")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen) and "best" in app.screen.question, "the second")
        await pilot.press("n")
        await settle(pilot)
        assert steps(store, run_id) == [10, 20], "declining the second question keeps it"
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the first confirmation")
        await pilot.press("y")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen) and "best" in app.screen.question, "the second")
        await pilot.press("y")
        await until(pilot, lambda: steps(store, run_id) == [10], "step 20 deleted")


@async_test
async def test_evaluate_merge_and_export_keys(workspace, tmp_path):
    run_id = fake_trained_run(workspace)
    store = open_store(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(120, 30)) as pilot:
        screen = await open_checkpoints(pilot, run_id)
        await select_step(pilot, screen, 20)
        await pilot.press("e")
        await until(pilot, lambda: store.list_runs(kind="eval"), "the queued eval job")
        frozen = load_preset_text(store.list_runs(kind="eval")[0].preset_yaml)
        assert (frozen.run, frozen.checkpoint) == (run_id, 20)
        await pilot.press("m")
        await until(pilot, lambda: store.list_runs(kind="merge"), "the queued merge job")
        frozen = load_preset_text(store.list_runs(kind="merge")[0].preset_yaml)
        assert (frozen.method, frozen.run, frozen.checkpoint) == ("adapter", run_id, 20)

        await pilot.press("x")
        await until(pilot, lambda: isinstance(app.screen, PathScreen), "the export folder question")
        app.screen.query_one(Input).value = str(tmp_path / "exported")
        await pilot.press("enter")
        await until(pilot, lambda: (tmp_path / "exported" / "adapter_model.safetensors").is_file(), "the export")
        assert not (tmp_path / "exported" / "optimizer.pt").exists()


@async_test
async def test_resume_from_a_checkpoint_and_chat_with_one(workspace, monkeypatch):
    from tui.screens import chat as chat_module

    loads = []
    monkeypatch.setattr(chat_module.ChatScreen, "start_load", lambda self, request, **kw: loads.append(request))
    run_id = fake_trained_run(workspace, state="interrupted", final=False)
    store = open_store(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(120, 30)) as pilot:
        screen = await open_checkpoints(pilot, run_id)
        await select_step(pilot, screen, 20)
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the resume confirmation")
        assert "later checkpoints (30)" in app.screen.question
        await pilot.press("y")
        await until(pilot, lambda: store.get_run(run_id).state == "queued", "the resumed run")
        assert store.get_run(run_id).info["resume_step"] == 20
        assert steps(store, run_id) == [10, 20]

        await until(pilot, lambda: len(screen.infos) == 2, "the table after resume")
        await select_step(pilot, screen, 10)
        await pilot.press("a")
        await until(pilot, lambda: loads, "the chat screen loading the checkpoint")
        assert (loads[0].run, loads[0].checkpoint) == (run_id, 10)
        assert isinstance(app.screen, chat_module.ChatScreen)


@async_test
async def test_chat_with_the_merged_model(workspace, monkeypatch):
    import json

    from tui.screens import chat as chat_module

    loads = []
    monkeypatch.setattr(chat_module.ChatScreen, "start_load", lambda self, request, **kw: loads.append(request))
    run_id = fake_trained_run(workspace)
    merged = workspace.run_dir(run_id) / "merged" / "r-merge-1"
    merged.mkdir(parents=True)
    (merged / "merge_report.json").write_text(json.dumps({"base_model": "/models/base"}))
    app = make_app(workspace)
    async with app.run_test(size=(120, 30)) as pilot:
        screen = await open_checkpoints(pilot, run_id)
        assert "merged models: 1" in " ".join(screen_text(app).split())
        await pilot.press("o")
        await until(pilot, lambda: loads, "the chat screen loading the merged model")
        assert (loads[0].run, loads[0].base, loads[0].adapter) == (None, "/models/base", str(merged))


@async_test
async def test_a_crash_left_tombstone_is_repaired_when_the_screen_opens(workspace):
    import os

    run_id = fake_trained_run(workspace)
    store = open_store(workspace)
    folder = workspace.run_dir(run_id) / "checkpoints" / "checkpoint-30"
    os.replace(folder, folder.with_name(".deleting-checkpoint-30-abc123"))  # died before the row went
    app = make_app(workspace)
    async with app.run_test(size=(120, 30)) as pilot:
        screen = await open_checkpoints(pilot, run_id)
        assert [i.step for i in screen.infos] == [10, 20]
        assert steps(store, run_id) == [10, 20]
        assert not list(folder.parent.glob(".deleting-*"))
