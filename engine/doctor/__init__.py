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
    # Which of its rule's findings this is, when the evidence's kind does not say it (finding_key).
    key: str | None = None
    # The preset change the advice suggests, where the rule knows one: key path → new value
    # (e.g. {"training.lr": 4e-05}); the dashboard's fix key applies it to a copy of the preset.
    change: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def finding_key(finding: Finding | dict) -> tuple[str, str]:
    """Reports with the same rule and key are one finding, which a later report updates: the key is
    the finding's own, else the kind of its evidence (the store keys stored findings with it too)."""
    if isinstance(finding, dict):
        rule, key, evidence = finding.get("rule"), finding.get("key"), finding.get("evidence")
    else:
        rule, key, evidence = finding.rule, finding.key, finding.evidence
    if key is None and isinstance(evidence, dict):
        key = evidence.get("kind")
    return str(rule or ""), "" if key is None else str(key)
