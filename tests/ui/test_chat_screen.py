"""The chat screen with Pilot: load in a worker, stream both columns, Esc, clear/regenerate, settings,
the picker, the second-model question and the probe-set view. Runs are fake (the demo preset frozen
in a run folder, an adapter with random weights as the result): no training, seconds per test."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers.chat import fake_run, make_adapter, make_full_model
from textual.widgets import DataTable, Input, ProgressBar
from helpers.tui_app import async_test, make_app, screen_text

from engine.demo_data import demo_rows


@pytest.fixture(scope="module")
def random_lora(tiny_model_dir, tmp_path_factory):
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("screen-lora") / "adapter", "lora", seed=4)


@pytest.fixture
def chat_run(demo_workspace, random_lora):
    return fake_run(demo_workspace, random_lora, name="demo-chat")


async def wait_for(pilot, condition, what: str, attempts: int = 3000) -> None:
    """Bounded wait that lets workers run on (settle() would wait for a generation to end)."""
    for _ in range(attempts):
        if condition():
            return
        await pilot.pause(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def open_chat(pilot, run_id):
    from tui.screens.chat import ChatScreen

    app = pilot.app
    await pilot.pause()
    app.selected_run_id = run_id
    app.action_open_screen("chat")

    def chat_screen():
        return next((s for s in app.screen_stack if isinstance(s, ChatScreen) and s.mounted), None)

    await wait_for(pilot, lambda: chat_screen() is not None, "the chat screen")
    return chat_screen()


async def ask(pilot, screen, prompt: str) -> None:
    field = screen.query_one("#chat-prompt", Input)
    field.focus()
    field.value = prompt
    await pilot.press("enter")


def set_setting(screen, name: str, value: str) -> None:
    screen.query_one(f"#set-{name}", Input).value = value


@async_test
async def test_loads_in_a_worker_and_streams_both_columns(demo_workspace, chat_run):
    from tui.screens.chat import ChatColumn

    app = make_app(demo_workspace)
    shown: dict[str, list[str]] = {"chat-left": [], "chat-right": []}
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_chat(pilot, chat_run)
        assert screen.loading and screen.query_one("#chat-loading").display  # the progress bar shows at once
        await wait_for(pilot, lambda: screen.session is not None, "the models to load")
        assert not screen.query_one("#chat-loading").display
        assert screen.query_one("#chat-progress", ProgressBar).progress == 100
        assert "one copy of the base weights" in screen_text(app)
        # the prompt box offers a question from the run's own data
        assert screen.query_one("#chat-prompt", Input).value == demo_rows()[0]["instruction"]

        original = ChatColumn.show

        def spy(column, label, text, stats):
            shown[column.id].append(text.plain)
            return original(column, label, text, stats)

        ChatColumn.show = spy
        try:
            set_setting(screen, "max_new_tokens", "40")
            await ask(pilot, screen, "What is the capital of France?")
            await wait_for(pilot, lambda: not screen.generating and screen.session.turns, "the answers")
        finally:
            ChatColumn.show = original
        turn = screen.session.turns[-1]
        assert turn.prompt == "What is the capital of France?"
        assert turn.answers[0].text != turn.answers[1].text
        for column_id, answer in (("chat-left", turn.answers[0]), ("chat-right", turn.answers[1])):
            partial = [t for t in shown[column_id] if t.endswith("▌")]
            assert len(partial) >= 2, f"{column_id} streamed in {len(partial)} updates"
        text = screen_text(app)
        assert "base" in text and "fine-tuned" in text
        assert text.count("tok/s") == 2 and "40 tokens" in text  # stats under each answer
        assert screen.query_one("#chat-prompt", Input).value == ""


@async_test
async def test_after_the_followed_run_completes_the_chat_opens_and_asks(demo_workspace, chat_run):
    """The demo's way in: the app follows a run and opens the chat when it completes; it asks at once."""
    from tui.screens.chat import ChatScreen

    app = make_app(demo_workspace, open_run=chat_run, open_when_done="chat")
    async with app.run_test(size=(120, 40)) as pilot:
        def chat():
            return next((s for s in app.screen_stack if isinstance(s, ChatScreen)), None)

        await wait_for(pilot, lambda: chat() is not None and chat().session is not None and chat().session.turns
                       and not chat().generating, "the first answers")
        turn = chat().session.turns[0]
        assert turn.prompt == demo_rows()[0]["instruction"]
        assert all(answer.stats.tokens > 0 for answer in turn.answers)


@async_test
async def test_escape_stops_both_sides_of_a_long_generation(demo_workspace, chat_run):
    app = make_app(demo_workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_chat(pilot, chat_run)
        await wait_for(pilot, lambda: screen.session is not None, "the models to load")
        set_setting(screen, "max_new_tokens", "5000")
        await ask(pilot, screen, "Tell me a long story.")
        await wait_for(pilot, lambda: all(len(screen._live.get(side, "")) > 5 for side in (0, 1)), "both sides to stream")
        await pilot.press("escape")
        await wait_for(pilot, lambda: not screen.generating, "the generation to stop")
        assert app.screen is screen  # Esc stopped the answers; it did not leave the screen
        answers = screen.session.turns[-1].answers
        assert [a.stats.finish for a in answers] == ["stopped", "stopped"]
        assert all(a.stats.tokens < 1000 for a in answers)
        await pilot.press("escape")  # idle: Esc goes back
        await wait_for(pilot, lambda: app.screen is not screen, "leaving the chat screen")


@async_test
async def test_clear_regenerate_and_the_saved_transcript(demo_workspace, chat_run):
    from jobs.store import open_store

    app = make_app(demo_workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_chat(pilot, chat_run)
        await wait_for(pilot, lambda: screen.session is not None, "the models to load")
        set_setting(screen, "max_new_tokens", "8")
        await ask(pilot, screen, "What is the capital of Spain?")
        await wait_for(pilot, lambda: not screen.generating and screen.session.turns, "the answers")
        first_turn = screen.session.turns[-1]
        first = [a.token_ids for a in first_turn.answers]
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: not screen.generating and screen.session.turns
                       and screen.session.turns[-1] is not first_turn, "the regenerated answers")
        assert len(screen.session.turns) == 1  # replaced, not added
        assert [a.token_ids for a in screen.session.turns[-1].answers] == first  # greedy: the same

        set_setting(screen, "temperature", "hot")
        await ask(pilot, screen, "Ignored?")
        await pilot.pause()
        assert not screen.generating and len(screen.session.turns) == 1
        assert screen.query_one("#chat-prompt", Input).value == "Ignored?"  # kept to fix the setting
        set_setting(screen, "temperature", "0")

        await pilot.press("ctrl+l")
        await pilot.pause()
        assert screen.session.turns == [] and screen.session.histories == [[], []]
        saved = open_store(demo_workspace).transcripts(chat_run, "chat")
        assert len(saved) == 1
        assert saved[0].payload["turns"][0]["prompt"] == "What is the capital of Spain?"
        files = list((demo_workspace.run_dir(chat_run) / "chat").glob("chat-*.json"))
        assert len(files) == 1 and json.loads(files[0].read_text())["turns"][0]["answers"][1]["text"]


@async_test
async def test_settings_panel_and_bad_values(demo_workspace, chat_run):
    app = make_app(demo_workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_chat(pilot, chat_run)
        await wait_for(pilot, lambda: screen.session is not None, "the models to load")
        set_setting(screen, "top_p", "1.5")
        assert screen.settings() is None
        await pilot.pause()
        assert any("top_p" in str(n.message) for n in app._notifications)
        for name, value in (("temperature", "0.7"), ("top_p", "0.9"), ("top_k", "40"), ("max_new_tokens", "12"),
                            ("repetition_penalty", "1.1")):
            set_setting(screen, name, value)
        settings = screen.settings()
        assert (settings.temperature, settings.top_p, settings.top_k, settings.max_new_tokens,
                settings.repetition_penalty) == (0.7, 0.9, 40, 12, 1.1)



@async_test
async def test_ctrl_s_shows_the_hidden_settings_first_then_hides_them(workspace):
    app = make_app(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_chat(pilot, None)
        panel = screen.query_one("#chat-settings")
        prompt = screen.query_one("#chat-prompt", Input)
        assert not panel.display and prompt.has_focus, "the chat opens on the prompt, settings folded away"
        # The footer says how to unfold them, at 80 columns too.
        await wait_for(pilot, lambda: "^s Settings" in screen_text(app).splitlines()[-1], "^s in the footer", 200)
        for _ in range(2):
            await pilot.press("ctrl+s")
            await pilot.pause()
            assert panel.display and panel.region.height == 1, "the first ^s shows them"
            assert screen.query_one("#set-temperature", Input).has_focus
            await pilot.press("tab")  # moving on inside the panel keeps it shown
            await pilot.press("ctrl+s")
            await pilot.pause()
            assert not panel.display and prompt.has_focus, "hidden again, and the keys go to what is seen"


@async_test
async def test_the_picker_compares_two_checkpoints_of_the_run(demo_workspace, chat_run):
    from textual.widgets import OptionList, Select

    from tui.screens.chat import PickScreen

    app = make_app(demo_workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_chat(pilot, chat_run)
        await wait_for(pilot, lambda: screen.session is not None, "the models to load")
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: isinstance(app.screen, PickScreen), "the picker")
        picker = app.screen
        await wait_for(pilot, lambda: len(picker.query_one("#pick-compare", Select)._options) == 3, "the checkpoints")
        results = picker.query_one("#pick-result", OptionList)
        results.highlighted = results.get_option_index("10")
        picker.query_one("#pick-compare", Select).value = 5
        await pilot.click("#pick-load")
        await wait_for(pilot, lambda: app.screen is screen and screen.session is not None and not screen.loading,
                       "the two checkpoints to load")
        assert [s.label for s in screen.session.sides] == ["checkpoint-5", "checkpoint-10"]
        assert screen.session.plan.shares_base
        assert "checkpoint-5 vs checkpoint-10" in screen_text(app)


@async_test
async def test_the_picker_lists_runs_and_their_checkpoints_as_the_run_is_highlighted(demo_workspace, random_lora):
    from textual.widgets import OptionList

    from tui.screens.chat import PickScreen

    older = fake_run(demo_workspace, random_lora, name="older", checkpoints=(5, 10, 15), final=False)
    fake_run(demo_workspace, random_lora, name="nothing-yet", checkpoints=(), final=False, state="running")
    newer = fake_run(demo_workspace, random_lora, name="newer", checkpoints=(20,))
    app = make_app(demo_workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_chat(pilot, None)
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: isinstance(app.screen, PickScreen), "the picker")
        picker = app.screen
        runs = picker.query_one("#pick-run", OptionList)
        results = picker.query_one("#pick-result", OptionList)
        await wait_for(pilot, lambda: runs.option_count == 2, "the runs")
        assert [runs.get_option_at_index(i).id for i in range(2)] == [newer, older], "only runs with results"
        assert runs.has_focus and [results.get_option_at_index(i).id for i in range(results.option_count)] \
            == ["final", "20"], "the highlighted run's results, at once"
        await pilot.press("down")  # highlighting is enough: no Enter, no typing
        await pilot.pause()
        assert [results.get_option_at_index(i).id for i in range(results.option_count)] == ["15", "10", "5"]
        await pilot.press("enter")  # on to the run's results
        await pilot.pause()
        assert results.has_focus
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: app.screen is screen and screen.session is not None and not screen.loading,
                       "checkpoint-10 to load")
        assert screen.request.run == older and screen.request.checkpoint == 10
        assert [s.label for s in screen.session.sides][-1] == "checkpoint-10"


@async_test
async def test_a_full_fine_tune_asks_before_loading_a_second_model(demo_workspace, tiny_model_dir, tmp_path):
    from tui.screens.modals import ConfirmScreen

    full = make_full_model(tiny_model_dir, tmp_path / "full")
    run_id = fake_run(demo_workspace, full, name="full-run", checkpoints=())
    app = make_app(demo_workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_chat(pilot, run_id)
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the memory question")
        assert "second full model" in app.screen.question and "MiB" in app.screen.question
        await pilot.press("n")
        await wait_for(pilot, lambda: app.screen is screen, "the chat screen again")
        assert screen.session is None and "declined" in screen_text(app)
        screen.start_load(screen.request)
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the memory question again")
        await pilot.press("y")
        await wait_for(pilot, lambda: screen.session is not None, "both models to load")
        assert len(screen.session.plan.models) == 2


@async_test
async def test_probe_view_fills_the_table_saves_and_exports(demo_workspace, chat_run, tmp_path, monkeypatch):
    from jobs.store import open_store
    from tui.screens.chat import ProbeScreen

    prompts = tmp_path / "probe.jsonl"
    prompts.write_text("\n".join(json.dumps({"instruction": r["instruction"], "output": r["output"]}) for r in demo_rows()[:4]))
    monkeypatch.chdir(tmp_path)
    app = make_app(demo_workspace)
    async with app.run_test(size=(140, 40)) as pilot:
        screen = await open_chat(pilot, chat_run)
        await wait_for(pilot, lambda: screen.session is not None, "the models to load")
        set_setting(screen, "max_new_tokens", "6")
        await pilot.press("ctrl+t")
        await wait_for(pilot, lambda: isinstance(app.screen, ProbeScreen), "the probe view")
        probe = app.screen
        # the demo preset holds out 10% for validation: the first run draws from it
        await wait_for(pilot, lambda: not probe.running and probe.result is not None, "the validation probe")
        assert probe.result.source == "validation split" and len(probe.result.rows) >= 1
        probe.query_one("#probe-count", Input).value = "3"
        field = probe.query_one("#probe-file", Input)
        field.value = str(prompts)
        field.focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: not probe.running and probe.result is not None and probe.result.source == "probe.jsonl",
                       "the file probe")
        table = probe.query_one(DataTable)
        assert table.row_count == 3 and len(table.columns) == 7
        assert table.get_row_at(0)[1] == demo_rows()[0]["instruction"]
        saved = open_store(demo_workspace).transcripts(chat_run, "probe")
        assert [len(t.payload["rows"]) for t in saved][-1] == 3
        chat_dir = demo_workspace.run_dir(chat_run) / "chat"
        assert len(list(chat_dir.glob("probe-*.jsonl"))) == 2 and len(list(chat_dir.glob("probe-*.md"))) == 2
        table.focus()
        await pilot.press("j")
        await pilot.press("m")
        exported = sorted(p.suffix for p in tmp_path.glob("probe-*"))
        assert exported == [".jsonl", ".md"]
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen, "back to the chat")


@async_test
async def test_without_a_run_the_screen_says_how_to_pick(workspace):
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_chat(pilot, None)
        assert screen.session is None and "ctrl+o picks" in screen_text(app)
        await ask(pilot, screen, "hello?")
        await pilot.pause()
        assert any("Load something" in str(n.message) for n in app._notifications)


@async_test
async def test_a_run_that_cannot_be_compared_reads_as_a_plain_sentence(demo_workspace):
    from tui.screens.chat import ChatScreen

    app = make_app(demo_workspace)
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.pause()
        app.push_screen(ChatScreen("no-such-run"))
        await wait_for(pilot, lambda: "Not loaded" in screen_text(app), "the load to fail")
        text = screen_text(app)
        assert "Not loaded: no run matches 'no-such-run'" in text
        assert "Error" not in text  # the message, not the class name of the layer that raised it


def test_the_chat_screen_module_imports_no_torch():
    code = ("import sys, tui.screens.chat, tui.commands.chat_cmd, jobs.chats, jobs.targets; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
