"""The training doctor: findings on the metric stream, on the data, and on memory."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Severity = Literal["info", "warning", "error"]


@dataclass
class Finding:
    rule: str  # e.g. "nan", "divergence", "plateau"
    severity: Severity
    title: str  # one line: what is wrong
    advice: str  # the concrete next step
    step_start: int | None = None
    step_end: int | None = None
    evidence: dict[str, Any] = field(default_factory=dict)  # the numbers that triggered it
    stop: bool = False  # the preset asks to stop the run on this finding

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
