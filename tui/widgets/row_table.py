"""A DataTable whose cursor is a row: Home and End go to the first and the last row.

DataTable's own Home and End move the cursor to the leftmost and rightmost column, which a row
cursor does not have: the cursor stayed where it was, and an action that followed (delete, say)
took the wrong row."""

from __future__ import annotations

from textual.binding import Binding
from textual.widgets import DataTable


class RowTable(DataTable):
    BINDINGS = [
        Binding("home", "scroll_top", "First row", show=False),
        Binding("end", "scroll_bottom", "Last row", show=False),
    ]

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("cursor_type", "row")
        super().__init__(**kwargs)
