"""The Presets screen: list, YAML validated as you type, the form both ways, save, copy, diff, submit."""

from __future__ import annotations

import yaml
from helpers.tui_app import async_test, fill_store, make_app, settle, until

from presets.loader import user_dir
from tui.preset_yaml import origin_of
from tui.screens.modals import DiffScreen, NameScreen, SubmitScreen
from tui.screens.presets import PresetsScreen
from tui.widgets.preset_form import PresetForm
from tui.widgets.yaml_editor import YamlEditor


def form_input(app, path):
    return app.screen.query_one(PresetForm).widget_for(path)


async def open_presets(pilot, name: str = "demo"):
    app = pilot.app
    await pilot.press("2")
    await until(pilot, lambda: isinstance(app.screen, PresetsScreen) and app.screen.current is not None
                and app.screen.validation is not None, "the presets screen")
    if app.screen.current.name != name:
        names = app.screen.query_one("#preset-names")
        names.highlighted = names.get_option_index(f"built-in:{name}")
        names.focus()
        await pilot.press("enter")
        await until(pilot, lambda: app.screen.current.name == name and app.screen.validation.text
                    == app.screen.query_one(YamlEditor).text, f"{name} loaded")
    return app.screen


@async_test
async def test_lists_presets_and_validates_as_you_type(workspace):
    fill_store(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_presets(pilot)
        editor = screen.query_one(YamlEditor)
        assert editor.language == "yaml", "tree-sitter YAML highlighting is installed"
        keys = [screen.query_one("#preset-names").get_option_at_index(i).id
                for i in range(screen.query_one("#preset-names").option_count)]
        assert "built-in:demo" in keys and "built-in:demo-diverge" in keys
        assert screen.validation.problems == [] and screen.validation.kind == "train"
        assert form_input(app, ("training", "lr")).value == "0.005"
        # Break a value and misspell a key: both errors show, each at its line.
        row = next(i for i, line in enumerate(editor.text.split("\n")) if line.strip().startswith("lr:"))
        line = editor.document.get_line(row)
        editor.replace("  lr: fast", (row, 0), (row, len(line)))
        editor.insert("  epochz: 3\n", (row, 0))
        await until(pilot, lambda: screen.validation.text == editor.text, "validation of the edit")
        problems = {p.path: p for p in screen.validation.problems}
        assert problems["training.lr"].line == row + 2 and "expected a number" in problems["training.lr"].message
        assert "did you mean training.epochs" in problems["training.epochz"].message
        assert set(editor.problem_rows) == {row, row + 1}, "a gutter mark on each line with a problem"
        assert form_input(app, ("training", "lr")).has_class("has-problem")
        # Enter on a problem jumps to its line.
        problem_list = screen.query_one("#problems")
        problem_list.focus()
        problem_list.highlighted = [p.path for p in screen.validation.problems].index("training.lr")
        await pilot.press("enter")
        await settle(pilot)
        assert editor.has_focus and editor.cursor_location[0] == row + 1
        assert "expected a number" in str(editor.border_subtitle)


@async_test
async def test_form_and_yaml_stay_in_step(workspace):
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_presets(pilot)
        editor = screen.query_one(YamlEditor)
        lr = form_input(app, ("training", "lr"))
        lr.focus()
        lr.value = ""
        await pilot.press(*"1e-4")
        await until(pilot, lambda: screen.validation.text == editor.text and "lr: 0.0001" in editor.text, "lr in the YAML")
        assert editor.text.startswith("# The demo:"), "comments survive a form edit"
        assert lr.value == "1e-4", "the field being typed in is not rewritten under the cursor"
        # A key the preset does not have yet is added under its section.
        batch = form_input(app, ("training", "batch_size"))
        batch.focus()
        batch.value = "2"
        await until(pilot, lambda: yaml.safe_load(editor.text)["training"]["batch_size"] == 2, "batch size")
        # YAML → form: edit r in the editor, the form follows.
        editor.focus()
        row = next(i for i, line in enumerate(editor.text.split("\n")) if line.strip() == "r: 16")
        editor.replace("    r: 4", (row, 0), (row, len(editor.document.get_line(row))))
        await until(pilot, lambda: form_input(app, ("method", "lora", "r")).value == "4", "r in the form")
        method = form_input(app, ("method", "name"))
        method.value = "dora"
        await until(pilot, lambda: yaml.safe_load(editor.text)["method"]["name"] == "dora", "the method")
        assert screen.modified


@async_test
async def test_save_a_builtin_as_a_workspace_copy_then_diff(workspace):
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_presets(pilot)
        editor = screen.query_one(YamlEditor)
        row = next(i for i, line in enumerate(editor.text.split("\n")) if line.strip() == "epochs: 30")
        editor.replace("  epochs: 2", (row, 0), (row, len(editor.document.get_line(row))))
        await pilot.press("ctrl+s")  # a built-in is read-only: save asks for a new name
        await until(pilot, lambda: isinstance(app.screen, NameScreen), "the name dialog")
        name_input = app.screen.query_one("#name")
        assert name_input.value == "demo-copy"
        name_input.value = ""
        await pilot.press(*"bad name!", "enter")
        await settle(pilot)
        assert isinstance(app.screen, NameScreen), "a bad name is refused in place"
        name_input.value = "quick"
        await pilot.press("enter")
        saved = user_dir(workspace.root) / "quick.yaml"
        await until(pilot, saved.exists, "the saved file")
        text = saved.read_text()
        assert origin_of(text) == "demo" and yaml.safe_load(text)["name"] == "quick"
        assert yaml.safe_load(text)["training"]["epochs"] == 2
        await until(pilot, lambda: screen.current is not None and screen.current.key == "workspace:quick",
                    "the copy opened in the editor")
        assert not screen.modified
        await pilot.press("ctrl+g")
        await until(pilot, lambda: isinstance(app.screen, DiffScreen), "the diff")
        diff = app.screen.diff_text
        assert "--- built-in/demo.yaml" in diff and "-  epochs: 30" in diff and "+  epochs: 2" in diff
        assert "+name: quick" in diff
        await pilot.press("escape")
        await settle(pilot)
        # Saving a workspace preset writes it in place.
        editor.replace("  epochs: 3", (row + 1, 0), (row + 1, len(editor.document.get_line(row + 1))))
        await pilot.press("ctrl+s")
        await until(pilot, lambda: yaml.safe_load(saved.read_text())["training"]["epochs"] == 3, "the save")


@async_test
async def test_duplicate_and_submit_from_the_editor(workspace):
    store = fill_store(workspace)
    (workspace.models_dir / "tiny").mkdir(parents=True)
    workspace.data_dir.mkdir(parents=True)
    (workspace.data_dir / "demo_capitals.json").write_text("[]")
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_presets(pilot, "demo-diverge")
        screen.query_one("#preset-names").focus()
        await pilot.press("ctrl+t")
        await until(pilot, lambda: isinstance(app.screen, NameScreen), "the name dialog")
        await pilot.press("enter")  # the suggested name
        copy = user_dir(workspace.root) / "demo-diverge-copy.yaml"
        await until(pilot, copy.exists, "the duplicate")
        assert origin_of(copy.read_text()) == "demo-diverge"
        await until(pilot, lambda: screen.current.key == "workspace:demo-diverge-copy", "the copy opened")
        before = len(store.list_runs())
        await pilot.press("ctrl+r")
        await until(pilot, lambda: isinstance(app.screen, SubmitScreen), "the submit dialog")
        await pilot.press(*"training.max_steps=3", "enter")
        await until(pilot, lambda: len(store.list_runs()) == before + 1, "the run")
        run = store.list_runs()[0]
        assert run.name == "demo-diverge-copy" and run.info["overrides"] == ["training.max_steps=3"]


@async_test
async def test_leaving_with_unsaved_changes_asks_first(workspace):
    from tui.screens.modals import ConfirmScreen
    from tui.screens.runs import RunsScreen

    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_presets(pilot)
        editor = screen.query_one(YamlEditor)
        editor.insert("# a note\n", (0, 0))
        await settle(pilot)
        assert screen.modified
        screen.query_one("#preset-names").focus()
        await pilot.press("1")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the question")
        await pilot.press("n")
        await settle(pilot)
        assert app.screen is screen and editor.text.startswith("# a note")
        await pilot.press("ctrl+q")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the question on quit")
        await pilot.press("n")
        await settle(pilot)
        assert app.is_running and app.screen is screen
        await pilot.press("1")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the question again")
        await pilot.press("y")
        await until(pilot, lambda: isinstance(app.screen, RunsScreen), "the Runs screen")
