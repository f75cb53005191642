"""The dashboard's text panels: key figures and the doctor's findings."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.content import Content
from textual.widgets import Static

from tui import format as fmt


class KeyFigures(Static):
    """Trainable parameters, tokens seen, best eval loss and its step, peak memory, pace."""

    def on_mount(self) -> None:
        self.border_title = "key figures"

    def show(self, rows: list[tuple[str, str]]) -> None:
        width = max((len(label) for label, _ in rows), default=0)
        lines = [Content.from_markup("[$text-muted]$label[/] $value", label=label.ljust(width), value=value)
                 for label, value in rows]
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
            blocks.append(head + (Content.from_markup("\n  → $advice", advice=str(advice)) if advice else Content("")))
        self.update(Content("\n").join(blocks))
