"""The job queue: Huey over SQLite (`queue.db` in the workspace).

Only run ids travel through it; the run itself (frozen preset, state) lives in the store. The one
task, `run_job(run_id)`, hands the id to the engine's executor; a submitting process builds the
same queue without an executor and only enqueues. Priorities are Huey's: higher runs first, equal
priorities in submission order.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from huey import SqliteHuey

from jobs.workspace import Workspace

QUEUE_NAME = "tunebench"
TASK_NAME = "run_job"
# Polling of an idle queue: start at 50 ms and back off to at most 250 ms, so a job submitted to
# an idle engine is picked up within a quarter of a second. An empty-queue poll is one indexed
# `select 1` on queue.db: cheap enough at 4 Hz.
POLL_INITIAL = 0.05
POLL_BACKOFF = 1.5
POLL_MAX = 0.25

log = logging.getLogger("tunebench.queue")


class JobQueue:
    """The workspace's queue. `executor(run_id)` runs a job; only the engine passes one."""

    def __init__(self, workspace: Workspace, executor: Callable[[str], None] | None = None):
        self.workspace = workspace
        Path(workspace.queue_db).parent.mkdir(parents=True, exist_ok=True)
        self.executor = executor
        self.huey = SqliteHuey(name=QUEUE_NAME, filename=str(workspace.queue_db), results=False,
                               store_none=False, utc=True, timeout=15)

        def run_job(run_id: str) -> None:
            if self.executor is None:
                raise RuntimeError("this queue has no executor: only the engine runs jobs")
            self.executor(run_id)

        # A fixed name (registered as "jobs.queue.run_job"): the engine and every submitter agree on it.
        self.run_job = self.huey.task(name=TASK_NAME)(run_job)

    def enqueue(self, run_id: str, priority: int = 0) -> None:
        self.huey.enqueue(self.run_job.s(run_id, priority=priority or None))

    def pending_run_ids(self) -> list[str]:
        """Run ids waiting in the queue, in the order they will be taken."""
        ids = []
        for task in self.huey.pending():
            args = task.args or ()
            if args:
                ids.append(args[0])
        return ids

    def discard(self, run_id: str) -> int:
        """Take a run's waiting tasks off the queue (a cancelled or re-prioritised run); how many went.

        Harmless if the engine takes one in the meantime: it finds the run no longer queued, or
        runs it once (the claim is atomic).
        """
        storage = self.huey.storage
        removed = 0
        for task_id, data in storage.sql("select id, data from task where queue = ?", (storage.name,), results=True):
            try:
                args = self.huey.deserialize_task(data).args or ()
            except Exception:
                continue  # not ours to judge
            if args and args[0] == run_id:
                storage.sql("delete from task where id = ?", (task_id,), commit=True)
                removed += 1
        return removed

    def __len__(self) -> int:
        return self.huey.pending_count()



def consumer_options(workers: int) -> dict:
    """Huey Consumer settings: one thread per GPU slot, fast polling (see POLL_*)."""
    return dict(workers=workers, worker_type="thread", initial_delay=POLL_INITIAL, backoff=POLL_BACKOFF,
                max_delay=POLL_MAX, periodic=False, check_worker_health=True, health_check_interval=5)
