"""A line of text that the polls rewrite."""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Static


class TextLine(Static):
    """A Static that redraws only when its text or its styling changed.

    Static.update lays the whole screen out again; a poll (every 0.4 s) that rewrites the same
    status line must not cost that, or an idle TUI keeps a core busy.
    """

    _shown: object = None

    def show(self, content: str | Content) -> None:
        key = (content.plain, tuple(content.spans)) if isinstance(content, Content) else content
        if key != self._shown:
            self._shown = key
            self.update(content)
