"""The presets editor as a daily driver (issue 15): typing in the YAML is never overwritten by a
late validation or by the form, escape leaves the editor, leaving edits offers Discard or Cancel,
and workspace presets can be renamed and deleted from the list."""

from __future__ import annotations

import threading

import yaml
from helpers.tui_app import async_test, make_app, screen_text, settle, until
from textual.widgets import Button

import tui.screens.presets as presets_screen
from presets import save_user_preset
from presets.loader import builtin_dir, user_dir
from tui.preset_yaml import FORM_FIELDS, field_text
from tui.screens.modals import ConfirmScreen, NameScreen
from tui.screens.presets import PresetsScreen
from tui.widgets.preset_form import PresetForm
from tui.widgets.yaml_editor import YamlEditor

LR = ("training", "lr")


def write_copy(workspace, name: str) -> str:
    """`demo` copied into the workspace as `name`, as ^t would."""
    text = (builtin_dir() / "demo.yaml").read_text().replace("name: demo", f"name: {name}", 1)
    save_user_preset(workspace.root, name, text)
    return text


def form_widget(screen, path):
    return screen.query_one(PresetForm).widget_for(path)


async def open_presets(pilot, key: str):
    app = pilot.app
    await pilot.press("2")
    await until(pilot, lambda: isinstance(app.screen, PresetsScreen) and app.screen.current is not None
                and app.screen.validation is not None, "the presets screen")
    screen = app.screen
    if screen.current.key != key:
        names = screen.query_one("#preset-names")
        names.highlighted = names.get_option_index(key)
        names.focus()
        await pilot.press("enter")
    await until(pilot, lambda: screen.current.key == key and screen.validation.text
                == screen.query_one(YamlEditor).text, f"{key} loaded")
    return screen


class Gate:
    """Stands in for check_text, the function the validation worker calls, and holds the calls
    whose text `hold` picks until released: typing and validation results happen in an order the
    test forces, not one it races."""

    def __init__(self, monkeypatch):
        self.real = presets_screen.check_text
        self.hold = lambda text: False
        self.released = threading.Event()
        self.held: list[str] = []
        monkeypatch.setattr(presets_screen, "check_text", self)

    def __call__(self, text: str, source: str):
        if self.hold(text):
            self.held.append(text)
            self.released.wait()
        return self.real(text, source)

    def arm(self, hold) -> None:
        self.released = threading.Event()
        self.held = []
        self.hold = hold

    def release(self) -> None:
        self.hold = lambda text: False
        self.released.set()


async def wait_held(pilot, gate: Gate, count: int) -> None:
    """Pilot pauses only (settle would wait for the held workers)."""
    for _ in range(500):
        if len(gate.held) >= count:
            return
        await pilot.pause()
    raise AssertionError(f"{count} validation(s) never reached the gate")


async def type_keys(pilot, *keys: str) -> None:
    for key in keys:
        await pilot.press(key)
        await pilot.pause()


@async_test
async def test_typing_in_the_editor_is_never_overwritten_by_validation_or_the_form(workspace, monkeypatch):
    original = write_copy(workspace, "mine")
    gate = Gate(monkeypatch)
    form_writes: list = []
    real_plan_edit = presets_screen.plan_edit
    monkeypatch.setattr(presets_screen, "plan_edit", lambda *a: form_writes.append(a) or real_plan_edit(*a))
    app = make_app(workspace)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await open_presets(pilot, "workspace:mine")
            editor = screen.query_one(YamlEditor)
            lines = original.split("\n")
            row = lines.index("  lr: 5.0e-3")
            editor.focus()
            editor.move_cursor((row, 0))
            await settle(pilot)

            # Every validation started while typing is held: the results all land after the typing.
            gate.arm(lambda text: True)
            await type_keys(pilot, "end", *["backspace"] * 6, *"abc")
            await wait_held(pilot, gate, 1)
            assert editor.document.get_line(row) == "  lr: abc" and editor.cursor_location == (row, 9)
            gate.release()
            await until(pilot, lambda: screen.validation.text == editor.text, "the validation of the typed text")
            assert editor.text == "\n".join(lines[:row] + ["  lr: abc"] + lines[row + 1:])
            assert editor.cursor_location == (row, 9) and editor.has_focus
            assert form_widget(screen, LR).value == "abc", "text → form"
            assert app.cursor_position == editor.cursor_screen_offset, "the terminal cursor stays in the editor"

            # "lr: a", Backspace, "1e-3": hold the validation of "lr: a" until the rest is typed and
            # checked, then let its stale result land last.
            await type_keys(pilot, "backspace", "backspace", "backspace")
            await settle(pilot)
            gate.arm(lambda text: "  lr: a\n" in text)
            await type_keys(pilot, "a")
            await wait_held(pilot, gate, 1)
            await type_keys(pilot, "backspace", *"1e-3")
            # Later texts are not held: wait for theirs (pilot pauses: the held worker is still out).
            for _ in range(500):
                if screen.validation.text == editor.text:
                    break
                await pilot.pause()
            assert screen.validation.text == editor.text
            gate.release()
            await settle(pilot)
            typed = "\n".join(lines[:row] + ["  lr: 1e-3"] + lines[row + 1:])
            assert editor.text == typed, "the late result of 'lr: a' changed nothing"
            assert screen.validation.text == typed and screen.validation.problems == []
            assert form_widget(screen, LR).value == field_text(next(f for f in FORM_FIELDS if f.path == LR), yaml.safe_load(typed)["training"]["lr"])
            assert editor.cursor_location == (row, len("  lr: 1e-3")) and editor.has_focus
            assert app.cursor_position == editor.cursor_screen_offset
            assert form_writes == [], "the form wrote nothing: the user did not touch it"

            await pilot.press("ctrl+s")
            saved = user_dir(workspace.root) / "mine.yaml"
            await until(pilot, lambda: not screen.modified, "the save")
            assert saved.read_text() == typed, "the file holds exactly what was typed"
    finally:
        gate.release()


@async_test
async def test_a_form_edit_writes_only_its_own_field(workspace):
    original = write_copy(workspace, "mine")
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_presets(pilot, "workspace:mine")
        editor = screen.query_one(YamlEditor)
        epochs = form_widget(screen, ("training", "epochs"))
        epochs.focus()
        await pilot.press("end", "backspace", "backspace", "5")
        await until(pilot, lambda: yaml.safe_load(editor.text)["training"]["epochs"] == 5, "epochs in the YAML")
        await settle(pilot)
        assert epochs.has_focus and epochs.value == "5" and epochs.cursor_position == 1
        expected = original.replace("  epochs: 30\n", "  epochs: 5\n")
        assert editor.text == expected, "no other field was written back"


@async_test
async def test_escape_leaves_the_editor_and_the_focused_field_shows(workspace):
    write_copy(workspace, "mine")
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_presets(pilot, "workspace:mine")
        editor = screen.query_one(YamlEditor)
        editor.focus()
        editor.move_cursor((0, 0))
        await settle(pilot)
        assert "esc Leave editor" in screen_text(app), "the footer names the way out"
        await pilot.press("tab")
        await settle(pilot)
        assert editor.has_focus and editor.document.get_line(0).startswith("  #"), "tab indents in the editor"
        await pilot.press("escape")
        await settle(pilot)
        assert not editor.has_focus and app.focused is not None
        assert screen.query_one("#preset-names") is not app.focused, "forward, not back to the list"
        model = form_widget(screen, ("model", "path"))
        lr = form_widget(screen, LR)
        for _ in range(len(FORM_FIELDS) + 3):
            if model.has_focus:
                break
            await pilot.press("tab")
            await settle(pilot)
        assert model.has_focus
        assert model.styles.background != lr.styles.background, "the focused field stands out"
        assert model.styles.text_style.bold and not lr.styles.text_style.bold


@async_test
async def test_leaving_edits_offers_discard_or_cancel_never_save(workspace):
    original = write_copy(workspace, "mine")
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_presets(pilot, "workspace:mine")
        editor = screen.query_one(YamlEditor)
        editor.insert("# a note\n", (0, 0))
        await settle(pilot)
        names = screen.query_one("#preset-names")

        def buttons() -> list[str]:
            return [str(b.label) for b in app.screen.query(Button)]

        # Another preset from the list.
        names.focus()
        names.highlighted = names.get_option_index("built-in:demo")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the question")
        assert buttons() == ["Discard (y)", "Cancel (n)"]
        await pilot.press("n")
        await settle(pilot)
        assert app.screen is screen and screen.current.key == "workspace:mine" and editor.text.startswith("# a note")

        # Duplicating opens the copy in the editor: the same question first.
        await pilot.press("ctrl+t")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the question before the copy")
        assert buttons() == ["Discard (y)", "Cancel (n)"]
        await pilot.press("n")
        await settle(pilot)
        assert app.screen is screen and editor.text.startswith("# a note")

        # Another screen.
        await pilot.press("1")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the question on leaving")
        assert buttons() == ["Discard (y)", "Cancel (n)"]
        await pilot.press("y")
        await until(pilot, lambda: not isinstance(app.screen, (ConfirmScreen, PresetsScreen)), "left")
        assert (user_dir(workspace.root) / "mine.yaml").read_text() == original, "discarded, never saved"


@async_test
async def test_every_other_way_out_of_edits_asks_discard_or_cancel(workspace):
    original = write_copy(workspace, "mine")
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_presets(pilot, "workspace:mine")
        editor = screen.query_one(YamlEditor)
        editor.focus()
        editor.insert("# a note\n", (0, 0))
        await settle(pilot)

        def buttons() -> list[str]:
            return [str(b.label) for b in app.screen.query(Button)]

        # A click on another preset in the list.
        names = screen.query_one("#preset-names")
        await pilot.click("#preset-names", offset=(3, names.get_option_index("built-in:demo") + 1))
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the question on a click")
        assert buttons() == ["Discard (y)", "Cancel (n)"]
        await pilot.press("escape")
        await settle(pilot)
        assert app.screen is screen and screen.current.key == "workspace:mine"

        # Quitting (ctrl+q works from inside the editor, where q types).
        editor.focus()
        await pilot.press("ctrl+q")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the question on quitting")
        assert buttons() == ["Discard (y)", "Cancel (n)"]
        await pilot.press("n")
        await settle(pilot)
        assert app.is_running and app.screen is screen and editor.text.startswith("# a note")

        # Another screen from the command palette's way in (the same action as the number keys).
        app.action_open_screen("runs")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the question on leaving")
        await settle(pilot)
        assert buttons() == ["Discard (y)", "Cancel (n)"]
        await pilot.press("n")
        await settle(pilot)
        assert app.screen is screen and editor.text.startswith("# a note")
        assert (user_dir(workspace.root) / "mine.yaml").read_text() == original, "nothing was saved on the way"


@async_test
async def test_rename_and_delete_workspace_presets_from_the_list(workspace):
    write_copy(workspace, "mine")
    write_copy(workspace, "other")
    folder = user_dir(workspace.root)
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_presets(pilot, "workspace:mine")
        editor = screen.query_one(YamlEditor)
        names = screen.query_one("#preset-names")
        names.focus()
        await settle(pilot)
        text = screen_text(app)
        assert "Delete" in text and "Rename" in text, "the list's keys are in the footer"

        # Built-ins are refused, with the way round.
        names.highlighted = names.get_option_index("built-in:demo")
        await pilot.press("d")
        await settle(pilot)
        assert app.screen is screen and (builtin_dir() / "demo.yaml").exists()
        await pilot.press("r")
        await settle(pilot)
        assert app.screen is screen

        # Rename the open preset: a taken name is refused in place, then the file and its name: move.
        names.highlighted = names.get_option_index("workspace:mine")
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, NameScreen), "the name dialog")
        name_input = app.screen.query_one("#name")
        assert name_input.value == "mine"
        for taken in ("other", "demo"):
            name_input.value = taken
            await pilot.press("enter")
            await settle(pilot)
            assert isinstance(app.screen, NameScreen), f"{taken} is taken"
        name_input.value = "ours"
        await pilot.press("enter")
        await until(pilot, lambda: screen.current is not None and screen.current.key == "workspace:ours",
                    "the renamed preset open")
        await settle(pilot)
        assert sorted(p.name for p in folder.iterdir()) == ["other.yaml", "ours.yaml"]
        assert yaml.safe_load((folder / "ours.yaml").read_text())["name"] == "ours"
        assert editor.text == (folder / "ours.yaml").read_text() and not screen.modified

        # Delete asks first; "n" keeps the file.
        names.focus()
        names.highlighted = names.get_option_index("workspace:other")
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the question")
        await pilot.press("n")
        await settle(pilot)
        assert (folder / "other.yaml").exists()
        await pilot.press("delete")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the question again")
        await pilot.press("y")
        await until(pilot, lambda: not (folder / "other.yaml").exists(), "the delete")
        await until(pilot, lambda: "workspace:other" not in [e.key for e in screen.entries], "the list updated")

        # Deleting the open preset opens another one.
        names.highlighted = names.get_option_index("workspace:ours")
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the question")
        await pilot.press("y")
        await until(pilot, lambda: screen.current is not None and screen.current.origin == "built-in"
                    and screen.validation.text == editor.text, "a built-in opened instead")
        assert list(folder.iterdir()) == [] and not screen.modified

        # In the editor, d is a letter.
        editor.focus()
        editor.move_cursor((0, 0))
        await pilot.press("d")
        await settle(pilot)
        assert app.screen is screen and editor.text.startswith("d")
