"""Every key of every screen, read from the bindings themselves so the list never drifts."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label

from tui.widgets.table import Table


def key_rows(app) -> list[tuple[str, str, str]]:
    """(where, keys, what) for the app's keys and each screen's, in NAVIGATION order."""
    from tui.app import NAVIGATION, load_screen_class

    rows: list[tuple[str, str, str]] = []

    def add(where: str, bindings) -> None:
        for binding in bindings:
            if isinstance(binding, tuple):
                binding = Binding(*binding)
            if not binding.description or binding.system:
                continue
            keys = ", ".join(app.get_key_display(Binding(key.strip(), binding.action))
                             for key in binding.key.split(","))
            rows.append((where, keys, binding.description))

    add("everywhere", type(app).BINDINGS)
    rows.append(("everywhere", app.get_key_display(Binding("ctrl+p", "command_palette")), "Command palette: every action"))
    rows.append(("everywhere", "tab, shift+tab", "Move between panes"))
    for entry in NAVIGATION:
        try:
            screen_class = load_screen_class(entry)
        except Exception:
            screen_class = None
        if screen_class is not None:
            add(entry.title, getattr(screen_class, "BINDINGS", []))
    return rows


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "close", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide", id="help-dialog"):
            yield Label("Keys — escape closes; ctrl+p searches every action", classes="dialog-title")
            yield Table(id="help-table", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("screen", "keys", "action")
        for row in key_rows(self.app):
            table.add_row(*row)
        table.focus()

    def action_close(self) -> None:
        self.dismiss(None)
