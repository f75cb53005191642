"""Preparation progress as sentences: "preparing data 43 % (1,234 rows/s, ETA 12 s)".

The engine hands these to its sink as info events, so the run log, the dashboard and the headless
console all show a run that is preparing its data; `tunebench data` draws a bar from the same
callback instead.
"""

from __future__ import annotations

import time
from typing import Callable

STEPS = 10  # a line every tenth of the way


def progress_line(done: int, total: int, elapsed: float) -> str:
    share = done / total if total else 1.0
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else 0.0
    return f"preparing data {share * 100:.0f} % ({done:,}/{total:,} samples, {rate:,.0f} rows/s, ETA {eta:.0f} s)"


def progress_reporter(say: Callable[[str], None], *, clock: Callable[[], float] = time.monotonic):
    """A build_datasets progress callback that calls `say(line)` each time another tenth is done."""
    started = clock()
    reported = [-1]  # the last tenth reported

    def report(stage: str, done: int, total: int) -> None:
        tenth = done * STEPS // total if total else STEPS
        if tenth > reported[0]:
            reported[0] = tenth
            say(progress_line(done, total, clock() - started))

    return report
