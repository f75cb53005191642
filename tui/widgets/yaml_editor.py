"""The preset YAML editor: a TextArea with YAML highlighting and a mark in the gutter on each line
that has a validation problem (the problem itself shows below the editor and in its border when
the cursor is on that line).

Tab indents, as an editor's Tab should, so Tab cannot take the focus out: escape does (a key
TextArea leaves free, that every terminal sends over SSH), and the footer says so."""

from __future__ import annotations

from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding
from textual.strip import Strip
from textual.widgets import TextArea


class YamlEditor(TextArea):
    # priority: before TextArea's own key handling, so the footer names the key that really acts.
    BINDINGS = [Binding("escape", "leave", "Leave editor", priority=True)]

    def __init__(self, *, id: str | None = None):
        # tree-sitter-yaml gives the highlighting; without it the editor still works, uncoloured.
        from textual._tree_sitter import TREE_SITTER, get_language

        language = "yaml" if TREE_SITTER and get_language("yaml") is not None else None
        super().__init__("", language=language, show_line_numbers=True, tab_behavior="indent", id=id,
                         soft_wrap=False)
        self.indent_width = 2
        if language is None:
            from presets.extras import install_hint

            self.tooltip = f"no YAML highlighting: {install_hint('tree_sitter_yaml')}"
        self.problem_rows: dict[int, str] = {}  # 0-based row → message

    def action_leave(self) -> None:
        self.screen.focus_next()

    def set_problems(self, rows: dict[int, str]) -> None:
        if rows != self.problem_rows:
            self.problem_rows = rows
            self.refresh()
        self.update_subtitle()

    def update_subtitle(self) -> None:
        message = self.problem_rows.get(self.cursor_location[0])
        self.border_subtitle = f"⚠ {message}" if message else ""

    def on_text_area_selection_changed(self, event: TextArea.SelectionChanged) -> None:
        self.update_subtitle()

    def render_line(self, y: int) -> Strip:
        strip = super().render_line(y)
        if not self.problem_rows or not self.show_line_numbers:
            return strip
        info = getattr(self.wrapped_document, "_offset_to_line_info", None)
        offset = y + self.scroll_offset.y
        if info is None or offset >= len(info) or info[offset] is None:
            return strip
        row, section = info[offset]
        if section != 0 or row not in self.problem_rows:
            return strip
        gutter = self.gutter_width
        colour = self.app.theme_variables.get("error", "red")
        mark = Strip([Segment("▶ ", Style.parse(f"bold {colour}"))], 2)
        return Strip.join([strip.crop(0, gutter - 2), mark, strip.crop(gutter, strip.cell_length)])
