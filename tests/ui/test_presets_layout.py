"""The presets screen at 80x24 and 160x48 (issue 15, part 6): editor and form take turns when narrow
(a key in the footer switches), the list can be hidden, and focus shows on every field and the editor."""

from __future__ import annotations

from helpers.tui_app import async_test, make_app, screen_text, settle
from test_presets_editing import open_presets, write_copy
from test_presets_form import shown

from tui.widgets.preset_form import PresetForm
from tui.widgets.yaml_editor import YamlEditor


def rendered_style(app, widget):
    """The style drawn at the widget's first cell (for a bordered widget: its border's corner)."""
    region = widget.region
    return app.screen._compositor.get_style_at(region.x + (0 if widget.styles.border_top[0] else 1), region.y)


@async_test
async def test_at_80x24_editor_and_form_take_turns_and_the_list_hides(workspace):
    write_copy(workspace, "mine")
    app = make_app(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_presets(pilot, "workspace:mine")
        editor = screen.query_one(YamlEditor)
        form = screen.query_one(PresetForm)
        names = screen.query_one("#preset-list-pane")
        editor.focus()
        await settle(pilot)
        assert editor.display and not form.display, "one of editor / form at a time"
        assert editor.region.width > 50
        footer = screen_text(app).splitlines()[-1]
        assert "^f Form/YAML" in footer, "the footer names the switch"
        assert "esc Leave editor" in footer, "and the way out of the editor, where tab indents"

        await pilot.press("ctrl+f")
        await settle(pilot)
        assert form.display and not screen.query_one("#editor-pane").display
        assert form.region.width > 50 and app.focused.id == "field-model-path", "the focus goes along"
        await pilot.press("ctrl+f")
        await settle(pilot)
        assert editor.display and not form.display and editor.has_focus

        width = editor.region.width
        await pilot.press("ctrl+b")
        await settle(pilot)
        assert not names.display and editor.region.width > width and editor.has_focus
        names_list = screen.query_one("#preset-names")
        await pilot.press("ctrl+b")
        await settle(pilot)
        assert names.display
        # Hiding the list while it has the focus hands the focus to what is shown.
        names_list.focus()
        await pilot.press("ctrl+b")
        await settle(pilot)
        assert not names.display and editor.has_focus
        # escape (back to the list) brings the list back.
        await pilot.press("escape", "escape")
        await settle(pilot)
        assert names.display and names_list.has_focus


@async_test
async def test_at_160x48_list_editor_and_form_side_by_side(workspace):
    write_copy(workspace, "mine")
    app = make_app(workspace)
    async with app.run_test(size=(160, 48)) as pilot:
        screen = await open_presets(pilot, "workspace:mine")
        editor = screen.query_one(YamlEditor)
        form = screen.query_one(PresetForm)
        assert editor.display and form.display and screen.query_one("#preset-list-pane").display
        assert editor.region.width >= 80 and form.region.width >= 36
        assert "Form/YAML" not in screen_text(app), "no switch where both fit"
        await pilot.press("ctrl+f")
        await settle(pilot)
        assert editor.display and form.display


@async_test
async def test_focus_shows_on_every_form_field_and_on_the_editor(workspace):
    write_copy(workspace, "mine")
    app = make_app(workspace)
    async with app.run_test(size=(160, 48)) as pilot:
        screen = await open_presets(pilot, "workspace:mine")
        editor = screen.query_one(YamlEditor)
        names = screen.query_one("#preset-names")
        form = screen.query_one(PresetForm)
        fields = [w for w in form.query("Input, Select") if w.id and w.id.startswith("field-") and shown(w)]
        assert len(fields) > 16
        for widget in [editor, *fields]:
            names.focus()
            await settle(pilot, 1)
            form.scroll_to_widget(widget, animate=False)
            await settle(pilot, 1)
            blurred = rendered_style(app, widget)
            widget.focus()
            await settle(pilot, 1)
            focused = rendered_style(app, widget)
            assert focused != blurred, f"{widget.id}: focus does not show"
