"""How a job ended: the one type that training, evaluation, merging and a distributed launch return.

The jobs layer turns it into the run's final state without guessing: `status` says how it ended,
`stop_reason` why it ended early, `error` and `advice` what went wrong and what to do, `details` what
the job reports (an evaluation's results, a merge's summary, rank 0's training figures).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["completed", "cancelled", "interrupted", "stopped", "failed"]
# A stop asked for through the sink ends a job in the state of the same name; a full disk
# (disk_full) ends it interrupted too, resumable from its last whole checkpoint once there is room;
# any other reason (the doctor's nan / diverged, early_stop) ends it "stopped".
STATUS_BY_REASON: dict[str, Status] = {"cancel": "cancelled", "interrupt": "interrupted", "disk_full": "interrupted"}


@dataclass
class JobOutcome:
    status: Status
    stop_reason: str | None = None  # cancel, interrupt, early_stop, nan, … when the job ended early
    error: str | None = None  # for failed jobs: what happened
    advice: str | None = None  # and what to do about it
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def stopped(cls, reason: str, **details: Any) -> "JobOutcome":
        """A job that stopped early at the sink's or the doctor's request."""
        return cls(STATUS_BY_REASON.get(reason, "stopped"), stop_reason=reason, details=details)


class JobStopped(Exception):
    """Unwinds a job's work when the sink asks it to stop; the job returns JobOutcome.stopped(reason)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class DiskFull(JobStopped):
    """A checkpoint does not fit on its filesystem: the job stops, nothing partial left behind.

    `message` names the filesystem and its free space beside what a checkpoint needs; `advice` what to do.
    """

    def __init__(self, message: str, advice: str):
        super().__init__("disk_full")
        self.message = message
        self.advice = advice

    def __str__(self) -> str:
        return self.message
