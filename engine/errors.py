"""Errors the engine raises for a human to read: what went wrong, and what to do about it."""

from __future__ import annotations


class EngineError(Exception):
    """A run cannot go on. `advice` names the preset knobs or steps that fix it."""

    def __init__(self, message: str, advice: str | None = None):
        super().__init__(message)
        self.message = message
        self.advice = advice

    def __str__(self) -> str:
        return f"{self.message}\n  → {self.advice}" if self.advice else self.message


class DataError(EngineError):
    """Bad training data: names the file, line, column or key."""
