"""The presets screen's form: the most used fields, kept in step with the YAML by the screen.

Text → form: `show` refills the fields from the parsed YAML. Form → text: only a user's edit of a
field posts FieldChanged; a refill never does (a refill that wrote back would put a stale value
into text the user has typed since)."""

from __future__ import annotations

from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import Input, Label, Select

from tui.preset_yaml import FORM_FIELDS, FormField, field_text, get_value


class FieldInput(Input):
    """An Input that moves the terminal's cursor only while it has focus.

    Input puts the terminal cursor on itself whenever its selection changes, focused or not; the
    form is refilled while the user types in the editor, and the cursor must stay there."""

    def _watch_selection(self, selection) -> None:
        if self.has_focus:
            super()._watch_selection(selection)


class PresetForm(VerticalScroll):
    class FieldChanged(Message):
        """The user changed a field; `text` is what the field shows now."""

        def __init__(self, field: FormField, text: str):
            super().__init__()
            self.field = field
            self.text = text

    def __init__(self) -> None:
        super().__init__()
        # What each field shows as the text last said (refill) or the user last typed: a Changed
        # event carrying that same value is no edit of the user's and must not reach the text.
        self._shown: dict[int, str] = {}

    def compose(self) -> ComposeResult:
        for index, field in enumerate(FORM_FIELDS):
            yield Label(field.label)
            if field.kind == "choice":
                yield Select([(c, c) for c in field.choices], allow_blank=True, id=f"field-{index}", compact=True)
            else:
                yield FieldInput(id=f"field-{index}", compact=True, select_on_focus=False)

    def on_mount(self) -> None:
        self.border_title = "form"
        for widget in self.query(Input):
            widget.cursor_blink = self.app.config.cursor_blink

    def widget_for(self, field: FormField):
        return self.query_one(f"#field-{FORM_FIELDS.index(field)}")

    def show(self, data: dict | None, problem_paths: set[tuple[str, ...]]) -> None:
        """Fill the fields from parsed YAML, leaving alone the one the user is in."""
        for index, field in enumerate(FORM_FIELDS):
            widget = self.widget_for(field)
            widget.set_class(any(p[: len(field.path)] == field.path for p in problem_paths), "has-problem")
            if data is None or widget.has_focus or widget.has_focus_within:
                continue
            value: Any = get_value(data, field.path)
            with self.prevent(Input.Changed, Select.Changed):
                if isinstance(widget, Select):
                    chosen = value if value in field.choices else Select.NULL
                    self._shown[index] = "" if chosen is Select.NULL else str(chosen)
                    if widget.value != chosen:
                        widget.value = chosen
                else:
                    text = field_text(field, value)
                    self._shown[index] = text
                    if widget.value != text:
                        widget.value = text
                        widget.cursor_position = len(text)

    def _user_edit(self, index: int, text: str) -> None:
        if self._shown.get(index) == text:
            return  # what the text says already: a refill, not an edit
        self._shown[index] = text
        self.post_message(self.FieldChanged(FORM_FIELDS[index], text))

    @on(Input.Changed)
    def _typed(self, event: Input.Changed) -> None:
        event.stop()
        self._user_edit(int(event.input.id.split("-")[1]), event.value)

    @on(Select.Changed)
    def _chosen(self, event: Select.Changed) -> None:
        event.stop()
        if event.value is Select.NULL:
            return
        self._user_edit(int(event.select.id.split("-")[1]), str(event.value))
