"""Errors the engine raises for a human to read: what went wrong, and what to do about it."""

from __future__ import annotations

from presets.errors import TunebenchError


class EngineError(TunebenchError):
    """A run cannot go on. `advice` names the preset knobs or steps that fix it."""


class DataError(EngineError):
    """Bad training data: names the file, line, column or key."""
