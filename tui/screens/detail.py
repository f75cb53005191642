"""Text that a table cuts, in full: an answer, a prompt, a reference. A table row's Enter opens it;
escape closes it."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Label, Static


class DetailScreen(ModalScreen[None]):
    """A title, then each (heading, text) section, wrapped and scrollable."""

    BINDINGS = [Binding("escape,q,enter", "close", "Close")]

    def __init__(self, title: str, sections: list[tuple[str, str]]):
        super().__init__()
        self.title_text = title
        self.sections = sections

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide", id="detail-dialog"):
            yield Label(Content(self.title_text), classes="dialog-title")
            with VerticalScroll(id="detail-body"):
                for heading, text in self.sections:
                    yield Label(Content(heading), classes="detail-heading")
                    yield Static(Content(text or "(empty)"), classes="detail-text")
            yield Label("escape closes · ↑ ↓ scroll", classes="dialog-hint")

    def on_mount(self) -> None:
        self.query_one("#detail-body").focus()

    def action_close(self) -> None:
        self.dismiss(None)
