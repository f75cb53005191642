"""What the supervisor (engine.distributed.launcher) and the ranks (engine.dist_entry) tell each
other through the run folder: a stop request down, read by rank 0 at each step; how the job ended
up, written by rank 0 or by the first rank that fails.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from engine.artifacts import write_atomic

STOP_FILE = "stop-request"  # a stop reason written by the supervisor; rank 0 reads it at each step
RESULT_FILE = "dist-result.json"  # how a job ended, written by the ranks for launch() to read

# Stop reasons ordered by precedence: when ranks disagree in the same step, the highest wins.
# A cancel outranks an interrupt: the user asked for the run to end, not to be resumed.
STOP_REASONS = ("early_stop", "diverged", "nan", "interrupt", "cancel")


# --------------------------------------------------------------------------- stop requests


def request_stop(run_dir: str | os.PathLike, reason: str) -> None:
    """Ask every rank of the run in `run_dir` to stop at the next step boundary (checkpoint first)."""
    if reason not in STOP_REASONS:
        raise ValueError(f"unknown stop reason {reason!r}")
    path = Path(run_dir) / STOP_FILE
    current = read_stop_request(run_dir)
    if current is not None and STOP_REASONS.index(current) >= STOP_REASONS.index(reason):
        return
    write_atomic(path, reason + "\n")


def read_stop_request(run_dir: str | os.PathLike) -> str | None:
    try:
        reason = (Path(run_dir) / STOP_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return reason if reason in STOP_REASONS else None


# --------------------------------------------------------------------------- the result


def write_result(run_dir: str | os.PathLike, payload: dict[str, Any], *, first_only: bool = False) -> None:
    """Leave how the job ended for launch(). `first_only`: keep an earlier result (the first rank
    to fail names the cause; the others usually fail because it did)."""
    target = Path(run_dir) / RESULT_FILE
    text = json.dumps(payload, default=str, indent=2) + "\n"
    if not first_only:
        write_atomic(target, text)
        return
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    try:
        os.link(tmp, target)  # atomic, and refuses to replace an existing result
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def read_result(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    try:
        return json.loads((Path(run_dir) / RESULT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
