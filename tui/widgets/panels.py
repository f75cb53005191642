"""The dashboard's text panels: key figures, the doctor's findings, the run's log and events."""

from __future__ import annotations

from collections import deque

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.content import Content
from textual.widgets import RichLog, Static

from tui import format as fmt


class KeyFigures(Static):
    """Trainable parameters, tokens seen, best eval loss and its step, peak memory, pace."""

    _rows: list[tuple[str, str]] = []

    def on_mount(self) -> None:
        self.border_title = "key figures"

    def show(self, rows: list[tuple[str, str]]) -> None:
        self._rows = rows
        self._draw()

    def on_resize(self) -> None:
        self._draw()

    def _draw(self) -> None:
        # A figure is never broken across lines: one that does not fit beside its label goes whole
        # onto the next line, indented.
        room = self.content_region.width or 10**6
        width = max((len(label) for label, _ in self._rows), default=0)
        lines = []
        for label, value in self._rows:
            if width + 1 + len(value) <= room:
                lines.append(Content.from_markup("[$text-muted]$label[/] $value", label=label.ljust(width), value=value))
            else:
                lines.append(Content.from_markup("[$text-muted]$label[/]\n  $value", label=label, value=value))
        self.update(Content("\n").join(lines))


class FindingsPanel(VerticalScroll):
    """What the training doctor found (store.findings(run_id)), newest last; scrolls when long."""

    def compose(self) -> ComposeResult:
        yield Static(id="findings-text")

    def on_mount(self) -> None:
        self.show([])

    def update(self, content: Content) -> None:
        self.query_one("#findings-text", Static).update(content)

    def show(self, findings: list[dict]) -> None:
        self.border_title = f"findings ({len(findings)})" if findings else "findings"
        self.set_class(bool(findings), "has-findings")
        if not findings:
            self.update(Content.from_markup(
                "[$text-muted]None. The doctor watches loss, grad norm and memory while the run trains.[/]"))
            return
        blocks = []
        for finding in findings:
            severity = str(finding.get("severity", "info"))
            style = fmt.SEVERITY_STYLES.get(severity, "")
            icon = {"error": "✗", "warning": "⚠"}.get(severity, "i")
            start, end = finding.get("step_start"), finding.get("step_end")
            where = ""
            if start is not None:
                where = f" steps {start}–{end}" if end not in (None, start) else f" step {start}"
            head = Content.from_markup(f"[{style}]$icon $rule[/][$text-muted]$where[/] $title", icon=icon,
                                       rule=str(finding.get("rule", "")), where=where,
                                       title=str(finding.get("title", "")))
            advice = finding.get("advice")
            block = head + (Content.from_markup("\n  → $advice", advice=str(advice)) if advice else Content(""))
            if isinstance(finding.get("change"), dict) and finding["change"]:
                from tui.fixes import change_text

                block += Content.from_markup("\n  [$accent]f[/] fix: $change", change=change_text(finding["change"]))
            blocks.append(block)
        self.update(Content("\n").join(blocks))


class WrappedLog(RichLog):
    """The run's log or its events: long lines wrap at word boundaries (never mid-word, never cut at
    the edge), and wrap again when the width changes. Keeps the last `max_lines` lines."""

    def __init__(self, *, max_lines: int, id: str | None = None):
        super().__init__(max_lines=max_lines, wrap=True, min_width=1, markup=False, highlight=False,
                         auto_scroll=True, id=id)
        self._texts: deque[str] = deque(maxlen=max_lines)
        self._wrapped_at = 0

    def write_lines(self, lines: list[str]) -> None:
        for line in lines:
            self._texts.append(line)
            self.write(Text(line))

    def set_lines(self, lines: list[str]) -> None:
        self.clear()
        self._texts.clear()
        self.write_lines(lines)

    def on_resize(self, event: events.Resize) -> None:
        width = self.scrollable_content_region.width
        if self._size_known and self._texts and width != self._wrapped_at:
            self._wrapped_at = width
            texts = list(self._texts)
            self.clear()
            for line in texts:
                self.write(Text(line))
