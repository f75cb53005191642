"""The presets screen's form: the common training fields, then the chosen method's own, kept in step
with the YAML by the screen.

Text → form: `show` refills the fields from the parsed YAML. Form → text: only a user's edit of a
field posts FieldChanged; a refill never does (a refill that wrote back would put a stale value
into text the user has typed since).

The method's fields come from the method table (presets/methods.py: the method.* sections a method
uses) and the schema (each section's fields, types and help): every section is composed once and
shown while the chosen method uses it."""

from __future__ import annotations

from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Input, Label, Select

from presets.methods import METHODS as METHOD_TABLE
from tui.preset_yaml import FORM_FIELDS, FormField, field_text, get_value, method_fields, method_sections

DEFAULT_METHOD = "lora"  # what a preset without method.name trains (presets.schema.MethodConfig)


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
        self.sections = method_sections()
        self.fields: dict[str, FormField] = {f.key: f for f in FORM_FIELDS}
        for section_fields in self.sections.values():
            self.fields.update((f.key, f) for f in section_fields)
        self.method: str | None = None  # whose fields are shown
        # What each field shows as the text last said (refill) or the user last typed: a Changed
        # event carrying that same value is no edit of the user's and must not reach the text.
        self._shown: dict[str, str] = {}

    def compose(self) -> ComposeResult:
        for field in FORM_FIELDS:
            yield self._row(field)
        for section, section_fields in self.sections.items():
            with Vertical(id=f"section-{section}", classes="form-section"):
                yield Label(f"method.{section}", classes="form-section-title")
                for field in section_fields:
                    yield self._row(field)

    @staticmethod
    def _row(field: FormField) -> Horizontal:
        if field.kind in ("choice", "bool"):
            widget = Select([(c, c) for c in field.choices], allow_blank=True, id=field.key, compact=True,
                            prompt=field.default or "Select")
        else:
            widget = FieldInput(id=field.key, compact=True, select_on_focus=False, placeholder=field.default)
        widget.tooltip = field.help or None
        return Horizontal(Label(field.label), widget, classes="form-row", id=f"row-{field.key}")

    def on_mount(self) -> None:
        self.border_title = "form"
        for widget in self.query(Input):
            widget.cursor_blink = self.app.config.cursor_blink
        self.show_method(DEFAULT_METHOD)

    def focus_first(self) -> None:
        self.query_one(f"#{FORM_FIELDS[0].key}").focus()

    def widget_for(self, field: FormField | tuple[str, ...]):
        path = field.path if isinstance(field, FormField) else field
        return self.query_one("#field-" + "-".join(path))

    def show_method(self, method: str) -> None:
        """Show the sections (and, in them, the fields) that `method` uses."""
        if method == self.method or method not in METHOD_TABLE:
            return
        self.method = method
        params = METHOD_TABLE[method].params
        for section, section_fields in self.sections.items():
            self.query_one(f"#section-{section}").display = section in params
            own = set(method_fields(method, section_fields))
            for field in section_fields:
                self.query_one(f"#row-{field.key}").display = field in own

    def show(self, data: dict | None, problem_paths: set[tuple[str, ...]]) -> None:
        """Fill the fields from parsed YAML, leaving alone the one the user is in."""
        if data is not None:
            method = get_value(data, ("method", "name"))
            self.show_method(method if method is not None else DEFAULT_METHOD)
        for key, field in self.fields.items():
            widget = self.query_one(f"#{key}")
            widget.set_class(any(p[: len(field.path)] == field.path for p in problem_paths), "has-problem")
            if data is None or widget.has_focus or widget.has_focus_within:
                continue
            value: Any = get_value(data, field.path)
            with self.prevent(Input.Changed, Select.Changed):
                if isinstance(widget, Select):
                    text = field_text(field, value)
                    chosen = text if text in field.choices else Select.NULL
                    self._shown[key] = "" if chosen is Select.NULL else chosen
                    if widget.value != chosen:
                        widget.value = chosen
                else:
                    text = field_text(field, value)
                    self._shown[key] = text
                    if widget.value != text:
                        widget.value = text
                        widget.cursor_position = len(text)

    def _user_edit(self, key: str, text: str) -> None:
        if self._shown.get(key) == text:
            return  # what the text says already: a refill, not an edit
        self._shown[key] = text
        self.post_message(self.FieldChanged(self.fields[key], text))

    @on(Input.Changed)
    def _typed(self, event: Input.Changed) -> None:
        event.stop()
        self._user_edit(event.input.id, event.value)

    @on(Select.Changed)
    def _chosen(self, event: Select.Changed) -> None:
        event.stop()
        if event.value is Select.NULL:
            return
        self._user_edit(event.select.id, str(event.value))
