"""Probe prompts: a preset's probes.prompts followed by the prompts of its probes.file.

Read at preset load (presets/loader.py: a bad file is named with its line) and by the engine when
training starts (engine/probes.py). Pure Python: no tunebench import.
"""

from __future__ import annotations

import json
from pathlib import Path

PROBE_FILE_FORMATS = ".txt (one prompt a line), .json (a list of strings) or .jsonl (one JSON string a line)"


class ProbeFileError(ValueError):
    """A probe file that cannot be read; the message names the file and, where it helps, the line."""

    def __init__(self, path: str | Path, message: str, line: int | None = None):
        self.path, self.line = str(path), line
        super().__init__(f"{path}:{line}: {message}" if line else f"{path}: {message}")


def _kind(value) -> str:
    return "null" if value is None else {dict: "an object", list: "a list", bool: "true/false"}.get(type(value), f"a {type(value).__name__}")


def read_probe_file(path: str | Path) -> list[str]:
    """The prompts of a probe file; ProbeFileError naming the file (and line) of the first problem."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".json", ".jsonl"):
        raise ProbeFileError(path, f"a probe file is {PROBE_FILE_FORMATS}, not {suffix or 'a file without a suffix'}")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ProbeFileError(path, "no such file") from None
    except OSError as exc:
        raise ProbeFileError(path, f"cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ProbeFileError(path, "not UTF-8 text; save it as UTF-8", raw[: exc.start].count(b"\n") + 1) from None
    if suffix == ".txt":
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    elif suffix == ".jsonl":
        prompts = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ProbeFileError(path, f"not valid JSON ({exc.msg}); write one JSON string a line, e.g. \"Hello?\"", number) from None
            if not isinstance(value, str) or not value.strip():
                raise ProbeFileError(path, f"expected a JSON string (the prompt), got {_kind(value) if value != '' else 'an empty one'}", number)
            prompts.append(value)
    else:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProbeFileError(path, f"not valid JSON ({exc.msg})", exc.lineno) from None
        if not isinstance(value, list):
            raise ProbeFileError(path, f"expected a JSON list of strings, got {_kind(value)}")
        for number, item in enumerate(value, 1):
            if not isinstance(item, str) or not item.strip():
                raise ProbeFileError(path, f"item {number} of the list is {_kind(item) if item != '' else 'empty'}; every item is a prompt (a string)")
        prompts = list(value)
    if not prompts:
        raise ProbeFileError(path, f"holds no prompt; a probe file is {PROBE_FILE_FORMATS}")
    return prompts


def probe_prompts(probes) -> list[str]:
    """Every probe of a preset's probes section (ProbesConfig): its prompts, then its file's."""
    return list(probes.prompts) + (read_probe_file(probes.file) if probes.file else [])
