"""The top and bottom lines of every screen: where you are, the engine, the GPUs and the queue;
the keys."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import HorizontalGroup
from textual.content import Content
from textual.widgets import Footer
from textual.widgets._footer import FooterKey

from tui import format as fmt
from tui.widgets.text_line import TextLine

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


def gpu_text(gpu, *, health: bool = True) -> str:
    """`GPU0 87% 5.0/24.0 GiB 250W 65°C`: utilisation, memory, power, temperature (those NVML reports)."""
    util = f" {gpu.util}%" if health and gpu.util is not None else ""
    text = f"GPU{gpu.index}{util} {fmt.gib(gpu.used)}/{fmt.gib(gpu.total)} GiB"
    if health and gpu.power_w is not None:
        text += f" {gpu.power_w:.0f}W"
    if health and gpu.temp_c is not None:
        text += f" {gpu.temp_c}°C"
    return text


class StatusLine(TextLine):
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
        self.show(self.line())

    def on_resize(self) -> None:
        self.show(self.line())

    def line(self) -> Content:
        """What fits the width, whole: on a narrow terminal the engine's pid and the "tunebench ›"
        prefix go first, then the GPUs' utilisation, power and temperature, then the queue length,
        then the GPU memory; what is left is never cut."""
        room = self.content_region.width or 10**6
        drops = ((), ("pid",), ("pid", "app"), ("pid", "app", "health"), ("pid", "app", "health", "queue"),
                 ("pid", "app", "health", "queue", "gpu"))
        for drop in drops:
            line = Content(" │ ").join(part for _, part in self._parts(drop))
            if line.cell_length <= room:
                return line
        return line

    def _parts(self, drop: tuple[str, ...] = ()) -> list[tuple[str, Content]]:
        app = self.app
        prefix = "" if "app" in drop else "[b]tunebench[/] › "
        parts: list[tuple[str, Content]] = [("title", Content.from_markup(prefix + "$title", title=self.title_text))]
        engine = app.engine_info
        if engine is None:
            parts.append(("engine", Content.from_markup("[$text-muted]engine …[/]")))
        elif engine.running:
            pid = f" pid {engine.pid}" if engine.pid and "pid" not in drop else ""
            parts.append(("engine", Content.from_markup("[$success]● engine up[/]$pid", pid=pid)))
        else:
            parts.append(("engine", Content.from_markup("[$error]○ engine down[/] [$text-muted](E starts it)[/]")))
        gpus = app.gpu_info
        if "gpu" in drop:
            pass
        elif gpus is None:
            parts.append(("gpu", Content("GPU …")))
        elif not gpus:
            parts.append(("gpu", Content("CPU")))
        else:
            parts.append(("gpu", Content(" ".join(gpu_text(g, health="health" not in drop) for g in gpus))))
        if app.overview is not None and "queue" not in drop:
            parts.append(("queue", Content(f"queue {app.overview.queue_length}")))
        frame = SPINNER[app.ticks % len(SPINNER)]
        if app.pending:
            parts.append(("pending", Content.from_markup("[$accent]$frame $what…[/]", frame=frame, what=app.pending[-1])))
        if app.busy_polls:
            parts.append(("busy", Content.from_markup("[$warning]$frame waiting for the database[/]", frame=frame)))
        return parts


class KeyFooter(Footer):
    """Textual's Footer with the help key pinned to the right, beside the command palette's: on a
    narrow terminal the keys that do not fit are left out (whole, never cut), and `? Help` (which
    lists them all) must never be one of them. Below 100 columns the keys are drawn compact and the
    palette's key gives its room to the screen's keys (the help screen names ctrl+p).

    Screens list their most important keys first in BINDINGS: that is the footer's order."""

    DEFAULT_CSS = """
    KeyFooter #pinned-keys {
        dock: right;
        width: auto;
        height: 1;
        background: $footer-background;
        border-left: vkey $foreground 20%;
    }
    KeyFooter #pinned-keys FooterKey.-command-palette {
        dock: none;
        border-left: none;
    }
    """
    NARROW = 100

    def compose(self) -> ComposeResult:
        self.call_after_refresh(self._drop_cut_keys)
        help_key = None
        for widget in super().compose():
            if isinstance(widget, FooterKey) and widget.action == "help" and help_key is None:
                help_key = widget  # a top-level key (the app's): held back for the pinned group
                continue
            if isinstance(widget, FooterKey) and widget.has_class("-command-palette"):
                widget.display = self.app.size.width >= self.NARROW
                yield HorizontalGroup(*(k for k in (help_key, widget) if k is not None), id="pinned-keys")
                help_key = None
                continue
            yield widget
        if help_key is not None:
            yield HorizontalGroup(help_key, id="pinned-keys")

    def on_resize(self) -> None:
        self.compact = self.size.width < self.NARROW
        for child in self.children:
            child.display = True
        for palette in self.query("FooterKey.-command-palette"):
            palette.display = not self.compact
        self.call_after_refresh(self._drop_cut_keys)

    def _drop_cut_keys(self, tries: int = 10) -> None:
        """A key that would be drawn cut under the pinned ones ("1 Ru") is not drawn at all."""
        pinned = next(iter(self.query("#pinned-keys")), None)
        if pinned is None:
            return
        if not pinned.region or not all(child.region for child in self.children if child.display):
            if tries:  # a recompose is not laid out yet: look again after the next refresh
                self.call_after_refresh(self._drop_cut_keys, tries - 1)
            return
        for child in self.children:
            if child is not pinned and child.display and child.region.right > pinned.region.x:
                child.display = False
