"""The top line of every screen: where you are, the engine, the GPUs and the queue."""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Static

from tui import format as fmt

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


class StatusLine(Static):
    """Redrawn after every poll (the app's state_signal); reads the app's latest state."""

    DEFAULT_CSS = """
    StatusLine { height: 1; width: 1fr; background: $panel; color: $text; padding: 0 1; }
    """

    def __init__(self, title: str, *, id: str | None = None):
        super().__init__(id=id)
        self.title_text = title

    def on_mount(self) -> None:
        self.app.state_signal.subscribe(self, self._on_state)
        self._on_state(None)

    def set_title(self, title: str) -> None:
        self.title_text = title
        self._on_state(None)

    def _on_state(self, _: object) -> None:
        self.update(self.line())

    def line(self) -> Content:
        app = self.app
        parts: list[Content] = [Content.from_markup("[b]tunebench[/] › $title", title=self.title_text)]
        engine = app.engine_info
        if engine is None:
            parts.append(Content.from_markup("[$text-muted]engine …[/]"))
        elif engine.running:
            pid = f" pid {engine.pid}" if engine.pid else ""
            parts.append(Content.from_markup("[$success]● engine up[/]$pid", pid=pid))
        else:
            parts.append(Content.from_markup("[$error]○ engine down[/] [$text-muted](E starts it)[/]"))
        gpus = app.gpu_info
        if gpus is None:
            parts.append(Content("GPU …"))
        elif not gpus:
            parts.append(Content("CPU"))
        else:
            parts.append(Content(" ".join(f"GPU{g.index} {fmt.gib(g.used)}/{fmt.gib(g.total)} GiB" for g in gpus)))
        if app.overview is not None:
            parts.append(Content(f"queue {app.overview.queue_length}"))
        frame = SPINNER[app.ticks % len(SPINNER)]
        if app.pending:
            parts.append(Content.from_markup("[$accent]$frame $what…[/]", frame=frame, what=app.pending[-1]))
        if app.busy_polls:
            parts.append(Content.from_markup("[$warning]$frame waiting for the database[/]", frame=frame))
        return Content(" │ ").join(parts)
