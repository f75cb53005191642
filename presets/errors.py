"""The one base of every error tunebench shows a user: what went wrong, and what to do about it.

It lives in presets/ because that is the package every other one may import (DESIGN.md). The CLI
prints it and the TUI shows it the same way (tui/format.py's error_text); anything else that
reaches them is a bug, shown with its traceback in the log.
"""

from __future__ import annotations


class TunebenchError(Exception):
    """`message`: what went wrong, naming the file, line, key or run; `advice`: what to do about it.
    `exit_code`: the CLI's exit status when the error ends a command."""

    exit_code = 2

    def __init__(self, message: str, advice: str | None = None):
        super().__init__(message)
        self.message = message
        self.advice = advice

    def __str__(self) -> str:
        return f"{self.message}\n  → {self.advice}" if self.advice else self.message
