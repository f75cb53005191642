"""The DataTable every screen uses: Textual's, fitted to its width, with Home and End on rows.

- Columns declared with `set_columns` give way by priority when the table is narrower than its
  content: the column with the highest `give_way` is hidden first (never one with 0), so a table at
  80 columns shows what matters most and no horizontal scrollbar. A `wrap` column (free text: a
  prompt, an answer) takes the width the others leave and its cells wrap, so the last column stays
  on screen and nothing is cut with "…".
- With a row cursor, Home and End go to the first and the last row (DataTable's own move a column
  cursor, which a row table does not have: an action after Home took the row still highlighted).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from textual.widgets import DataTable
from textual.widgets._data_table import Column as _DataTableColumn

WRAP_MIN = 12  # the narrowest a wrapping column gets before other columns give way


@dataclass(frozen=True)
class Col:
    key: str
    label: str
    give_way: int = 0  # 0: always shown; otherwise the highest gives way (is hidden) first
    wrap: bool = False  # free text that takes the room left over and wraps


@dataclass
class _FittedColumn(_DataTableColumn):
    hidden: bool = False

    def get_render_width(self, data_table) -> int:
        return 0 if self.hidden else super().get_render_width(data_table)


class Table(DataTable):
    """DataTable measures new rows on its Idle event, but rows it drew before then stay cached at the
    old column widths (its render caches are not keyed by width): a paint that came between the rows
    and the Idle left cells cut at their column label's width until the next change. Here a change
    of widths drops those caches."""

    _drawn_widths: tuple[int, ...] = ()
    _specs: tuple[Col, ...] = ()
    _layout: tuple = ()

    def clear(self, columns: bool = False):
        if columns:
            self._specs, self._layout = (), ()
        return super().clear(columns)

    def set_columns(self, columns: Sequence[Col]) -> None:
        """Replace the columns (and the rows) with these, fitted to the width from now on."""
        self.clear(columns=True)
        self._specs = tuple(columns)
        for spec in self._specs:
            key = self.add_column(spec.label, key=spec.key)
            column = self.columns[key]
            self.columns[key] = _FittedColumn(column.key, column.label, column.width, column.content_width,
                                              column.auto_width)

    def add_row(self, *cells, height: int | None = 1, key: str | None = None, label=None):
        # Rows of a table with wrapping columns grow to fit their text.
        if any(spec.wrap for spec in self._specs):
            height = None
        return super().add_row(*cells, height=height, key=key, label=label)

    @property
    def hidden_columns(self) -> list[str]:
        """Keys of the columns that gave way to the width (hidden now)."""
        return [str(c.key.value) for c in self.columns.values() if getattr(c, "hidden", False)]

    def on_resize(self) -> None:
        self._fit()

    def on_idle(self) -> None:
        self._fit()
        widths = tuple(column.get_render_width(self) for column in self.ordered_columns)
        if widths != self._drawn_widths:
            self._drawn_widths = widths
            self._clear_caches()
            self.refresh()

    def _fit(self) -> None:
        width = self.scrollable_content_region.width
        if not self._specs or width <= 0 or len(self.columns) != len(self._specs):
            return
        pad = 2 * self.cell_padding
        natural = {spec.key: self.columns[spec.key].content_width + pad for spec in self._specs}

        def needed(specs: list[Col]) -> int:
            return sum(min(natural[s.key], WRAP_MIN + pad) if s.wrap else natural[s.key] for s in specs)

        shown = list(self._specs)
        while needed(shown) > width and any(s.give_way for s in shown):
            # The highest give_way goes first; of equals, the rightmost.
            shown.remove(max((s for s in shown if s.give_way), key=lambda s: (s.give_way, shown.index(s))))
        wraps = sorted((s for s in shown if s.wrap), key=lambda s: natural[s.key])
        left = width - sum(natural[s.key] for s in shown if not s.wrap)
        wrap_widths: dict[str, int] = {}
        for index, spec in enumerate(wraps):  # the narrowest first: what it does not need goes to the others
            share = max(WRAP_MIN + pad, min(natural[spec.key], left // (len(wraps) - index)))
            wrap_widths[spec.key] = share
            left -= share
        layout = (tuple(s.key for s in shown), tuple(sorted(wrap_widths.items())))
        if layout == self._layout:
            return
        self._layout = layout
        for spec in self._specs:
            column = self.columns[spec.key]
            column.hidden = spec not in shown
            if spec.wrap:
                column.auto_width = False
                column.width = wrap_widths.get(spec.key, WRAP_MIN + pad) - pad
        if wraps:
            # Row heights follow the new widths: measure every row again (DataTable measures an
            # auto-height row only while its height is 0).
            for row in self.rows.values():
                if row.auto_height:
                    row.height = 0
            self._new_rows.update(self.rows)
        self._require_update_dimensions = True
        self._update_count += 1
        self._clear_caches()
        self.check_idle()
        self.refresh()

    def action_scroll_home(self) -> None:
        if self.cursor_type == "row":
            self.action_scroll_top()
        else:
            super().action_scroll_home()

    def action_scroll_end(self) -> None:
        if self.cursor_type == "row":
            self.action_scroll_bottom()
        else:
            super().action_scroll_end()
