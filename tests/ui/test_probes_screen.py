"""The Probes screen with Pilot on a real store and run folder: the timeline, the changes marked, the
actions on the highlighted checkpoint (chat, evaluate, keep), and its snapshots at 80x24 and 120x40."""

from __future__ import annotations

import pytest
from helpers.probes import fake_probed_run
from helpers.tui_app import async_test, make_app, screen_text, settle, until

from jobs.store import open_store
from presets import load_preset_text
from tui.screens.probes import ProbesScreen
from tui.widgets.table import Table


async def open_probes(pilot, run_id: str) -> ProbesScreen:
    app = pilot.app
    await settle(pilot)
    app.selected_run_id = run_id
    await pilot.press("8")
    await until(pilot, lambda: isinstance(app.screen, ProbesScreen) and app.screen.timeline is not None, "the probes")
    await settle(pilot)
    return app.screen


async def select(pilot, screen: ProbesScreen, probe: int, step: int) -> None:
    table = screen.query_one(Table)
    keys = [str(row.key.value) for row in table.ordered_rows]
    table.move_cursor(row=keys.index(f"{probe}:{step}"))
    await settle(pilot)
    assert screen.selected.step == step


@async_test
async def test_timeline_shows_every_answer_and_what_changed(workspace):
    run_id = fake_probed_run(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_probes(pilot, run_id)
        assert screen.query_one(Table).row_count == 12  # 3 probes × 4 saves
        text = " ".join(screen_text(app).split())
        assert "3 probe(s) × 4 checkpoint(s)" in text and "probing adds 0.38 s per save (median)" in text
        assert "#1 What is the capital of France?" in text and "The capital of France is Paris." in text
        await select(pilot, screen, 0, 20)
        detail = " ".join(screen_text(app).split())
        assert "step 20: 2 of 3 answer(s) changed since the checkpoint before" in detail
        # The changed words are styled: " France" bold in the success colour, " Frankfurt" struck out.
        cell = screen.query_one(Table).get_cell("0:20", "answer")
        styles = {cell.plain[span.start:span.end]: str(span.style) for span in cell.spans}
        assert "bold" in styles[" France"] and "strike" in styles[" Frankfurt"]


@async_test
async def test_keep_evaluate_and_chat_act_on_the_highlighted_checkpoint(workspace, monkeypatch):
    from tui.screens import chat as chat_module

    loads = []
    monkeypatch.setattr(chat_module.ChatScreen, "start_load", lambda self, request, **kw: loads.append(request))
    run_id = fake_probed_run(workspace)
    store = open_store(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_probes(pilot, run_id)
        await select(pilot, screen, 1, 5)  # pruned: its answers stay, there is nothing to open
        assert not any(screen.check_action(a, ()) for a in ("chat", "evaluate", "toggle_keep"))
        assert "removed from disk" in screen_text(app)

        await select(pilot, screen, 1, 10)
        await pilot.press("k")
        await until(pilot, lambda: store.list_checkpoints(run_id)[0].keep and screen.timeline.checkpoint(10).keep, "keep on 10")
        assert (workspace.run_dir(run_id) / "checkpoints" / "checkpoint-10" / "tunebench-keep").is_file()

        await select(pilot, screen, 2, 30)
        await pilot.press("e")
        await until(pilot, lambda: store.list_runs(kind="eval"), "the queued eval job")
        frozen = load_preset_text(store.list_runs(kind="eval")[0].preset_yaml)
        assert (frozen.run, frozen.checkpoint) == (run_id, 30)

        await pilot.press("a")
        await until(pilot, lambda: loads, "the chat screen loading the checkpoint")
        assert (loads[0].run, loads[0].checkpoint) == (run_id, 30)


@async_test
async def test_a_run_without_probes_says_how_to_add_them(workspace):
    from helpers.checkpoints import fake_trained_run

    run_id = fake_trained_run(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(120, 30)) as pilot:
        screen = await open_probes(pilot, run_id)
        assert screen.query_one(Table).row_count == 0
        assert "name some under probes.prompts" in " ".join(screen_text(app).split())
        assert screen.check_action("chat", ()) is False


@pytest.mark.parametrize("size", [(120, 40), (80, 24)], ids=["120x40", "80x24"])
def test_probes_screen_snapshot(snap_compare, workspace, size):
    run_id = fake_probed_run(workspace, name="demo-probed", run_id="r-fixed-0042")
    app = make_app(workspace)

    async def run_before(pilot):
        screen = await open_probes(pilot, run_id)
        await select(pilot, screen, 0, 20)
        await settle(pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)
