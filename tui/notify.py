"""Being told: which runs ended and which doctor findings are new since the last poll, said once.

`Notifier.check` is plain (no Textual): the app calls it from its poll worker with each Overview and
emits what it returns as a toast, the terminal bell and a desktop notification (an OSC escape the
terminal turns into a system notification; it reaches a laptop through SSH in the terminals that
support it). What was said is kept in the workspace's notified.json, so a run is announced once
even across restarts of the TUI; a run that ended while no TUI was open is announced at the next
start. The first start on a workspace announces nothing of what is already there.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from jobs.workspace import Workspace

SEEN_FILE = "notified.json"
ENDED_STATES = ("completed", "failed", "cancelled", "interrupted")
TOLD_SEVERITIES = ("warning", "error")
# More news than this in one poll (runs that ended while no TUI was open) is said as one summary.
MAX_SEPARATE = 3

_OUTCOME = {
    "completed": ("completed", "information"),
    "failed": ("failed", "error"),
    "cancelled": ("was cancelled", "warning"),
    "interrupted": ("was interrupted (resumable)", "warning"),
}


@dataclass(frozen=True)
class Notice:
    key: str  # what makes it "the same news": said at most once per key
    title: str
    body: str
    severity: str  # Textual's toast severity: information, warning, error
    run_id: str | None = None


def run_notice(run) -> Notice:
    outcome, severity = _OUTCOME.get(run.state, (run.state, "information"))
    body = f"{run.name} {outcome}"
    if run.total_steps:
        body += f" at step {run.step}/{run.total_steps}"
    if run.state == "failed" and run.error:
        body += f": {run.error.splitlines()[0]}"
    return Notice(f"run:{run.id}:{run.attempt}", f"tunebench: run {run.state}", body, severity, run.id)


def finding_notice(run, finding: dict) -> Notice:
    from engine.doctor import finding_key  # plain Python, no torch: safe in the TUI

    rule, key = finding_key(finding)
    severity = str(finding.get("severity"))
    return Notice(f"finding:{run.id}:{rule}:{key}:{severity}", f"tunebench: doctor {severity}",
                  f"{run.name}: {finding.get('title', rule)}", "error" if severity == "error" else "warning", run.id)


def summary_notice(notices: list[Notice]) -> Notice:
    worst = "error" if any(n.severity == "error" for n in notices) else (
        "warning" if any(n.severity == "warning" for n in notices) else "information")
    shown = "; ".join(n.body for n in notices[:MAX_SEPARATE])
    more = len(notices) - MAX_SEPARATE
    body = shown + (f"; and {more} more (Runs screen)" if more > 0 else "")
    return Notice("summary", f"tunebench: {len(notices)} news", body, worst)


class Notifier:
    """Decides what is news. Not thread-safe: the app calls it from one poll worker at a time."""

    def __init__(self, workspace: Workspace):
        self.path: Path = workspace.root / SEEN_FILE
        self.seen: set[str] | None = self._load()  # None: first start on this workspace
        self._signatures: dict[str, tuple] = {}  # run id → what its findings were read at

    def _load(self) -> set[str] | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return set()  # unreadable: better to say something twice than to stay silent for good
        seen = data.get("seen") if isinstance(data, dict) else None
        return {str(k) for k in seen} if isinstance(seen, list) else set()

    def _save(self, keys: Iterable[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"seen": sorted(keys)}, indent=0), encoding="utf-8")
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def check(self, runs: list, findings_of: Callable[[str], list[dict]]) -> list[Notice]:
        """The news in this poll's runs (an Overview's), each said once; many at once become one summary."""
        news: list[Notice] = []
        for run in runs:
            if run.state in ENDED_STATES:
                news.append(run_notice(run))
            if run.findings and self._findings_may_have_changed(run):
                for finding in findings_of(run.id):
                    if finding.get("severity") in TOLD_SEVERITIES:
                        news.append(finding_notice(run, finding))
        first_start = self.seen is None
        seen = self.seen or set()
        fresh = [n for n in news if n.key not in seen]
        if not fresh and not first_start:
            return []
        # Keep only the keys of runs still in the store: the file does not grow with deleted runs.
        alive = {run.id for run in runs}
        self.seen = {k for k in seen if k.split(":")[1] in alive} | {n.key for n in fresh}
        try:
            self._save(self.seen)
        except OSError:
            pass  # a read-only workspace: still said once per session
        if first_start:
            return []  # what is already there when tunebench first opens a workspace is no news
        return [summary_notice(fresh)] if len(fresh) > MAX_SEPARATE else fresh

    def _findings_may_have_changed(self, run) -> bool:
        """Findings are read for live runs, and for others when their count or state moved since the last read."""
        signature = (run.findings, run.state, run.attempt)
        if run.state == "running" or self._signatures.get(run.id) != signature:
            self._signatures[run.id] = signature
            return True
        return False


# --------------------------------------------------------------------------- the terminal


def _clean(text: str) -> str:
    """No control characters inside an escape sequence (a BEL or ESC would end it early)."""
    return "".join(ch if ch.isprintable() else " " for ch in text)


def desktop_sequence(notice: Notice, mode: str, *, tmux: bool = False) -> str:
    """The escape that asks the terminal for a desktop notification: OSC 9 (iTerm2, kitty, WezTerm,
    Ghostty, Windows Terminal) or OSC 777 (rxvt, foot, WezTerm, Ghostty); "" when off. Inside tmux
    the sequence is wrapped for passthrough (tmux needs `set -g allow-passthrough on`)."""
    if mode == "osc9":
        # "tunebench: …" never starts with a digit, which some terminals read as an OSC 9 sub-command.
        sequence = f"\x1b]9;{_clean(notice.title)}: {_clean(notice.body)}\x07"
    elif mode == "osc777":
        sequence = f"\x1b]777;notify;{_clean(notice.title).replace(';', ',')};{_clean(notice.body)}\x07"
    else:
        return ""
    if tmux:
        sequence = "\x1bPtmux;" + sequence.replace("\x1b", "\x1b\x1b") + "\x1b\\"
    return sequence
