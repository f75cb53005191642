"""The presets screen's form: the most used fields, kept in step with the YAML by the screen."""

from __future__ import annotations

from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import Input, Label, Select

from tui.preset_yaml import FORM_FIELDS, FormField, field_text, get_value


class PresetForm(VerticalScroll):
    class FieldChanged(Message):
        """The user changed a field; `text` is what the field shows now."""

        def __init__(self, field: FormField, text: str):
            super().__init__()
            self.field = field
            self.text = text

    def compose(self) -> ComposeResult:
        for index, field in enumerate(FORM_FIELDS):
            yield Label(field.label)
            if field.kind == "choice":
                yield Select([(c, c) for c in field.choices], allow_blank=True, id=f"field-{index}", compact=True)
            else:
                yield Input(id=f"field-{index}", compact=True, select_on_focus=False)

    def on_mount(self) -> None:
        self.border_title = "form"
        for widget in self.query(Input):
            widget.cursor_blink = self.app.config.cursor_blink

    def widget_for(self, field: FormField):
        return self.query_one(f"#field-{FORM_FIELDS.index(field)}")

    def show(self, data: dict | None, problem_paths: set[tuple[str, ...]]) -> None:
        """Fill the fields from parsed YAML, leaving alone the one the user is typing in."""
        for field in FORM_FIELDS:
            widget = self.widget_for(field)
            widget.set_class(any(p[: len(field.path)] == field.path for p in problem_paths), "has-problem")
            if data is None or widget.has_focus:
                continue
            value: Any = get_value(data, field.path)
            with self.prevent(Input.Changed, Select.Changed):
                if isinstance(widget, Select):
                    widget.value = value if value in field.choices else Select.NULL
                else:
                    text = field_text(field, value)
                    if widget.value != text:
                        widget.value = text
                        widget.cursor_position = len(text)

    @on(Input.Changed)
    def _typed(self, event: Input.Changed) -> None:
        event.stop()
        field = FORM_FIELDS[int(event.input.id.split("-")[1])]
        self.post_message(self.FieldChanged(field, event.value))

    @on(Select.Changed)
    def _chosen(self, event: Select.Changed) -> None:
        event.stop()
        if event.value is Select.NULL:
            return
        field = FORM_FIELDS[int(event.select.id.split("-")[1])]
        self.post_message(self.FieldChanged(field, str(event.value)))
