"""The DataTable every screen uses: Textual's, redrawn when its column widths change."""

from __future__ import annotations

from textual.widgets import DataTable


class Table(DataTable):
    """DataTable measures new rows on its Idle event, but rows it drew before then stay cached at the
    old column widths (its render caches are not keyed by width): a paint that came between the rows
    and the Idle left cells cut at their column label's width until the next change. Here a change
    of widths drops those caches."""

    _drawn_widths: tuple[int, ...] = ()

    def on_idle(self) -> None:
        widths = tuple(column.get_render_width(self) for column in self.ordered_columns)
        if widths != self._drawn_widths:
            self._drawn_widths = widths
            self._clear_caches()
            self.refresh()
