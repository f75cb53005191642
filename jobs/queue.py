"""The job queue: Huey, over SQLite (`queue.db` in the workspace) unless told otherwise.

Only run ids travel through it; the run itself (frozen preset, state) lives in the store. The one
task, `run_job(run_id)`, hands the id to the engine's executor; a submitting process builds the
same queue without an executor and only enqueues. Priorities are Huey's: higher runs first, equal
priorities in submission order.

Only Huey's public API is used (a storage class, enqueue / pending / revoke, the Consumer's
constructor), and the storage is chosen in one place, `QUEUE_STORAGES`: a queue shared by several
GPU boxes (Redis, say) is one more entry there, not a rewrite.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from huey import Huey
from huey.storage import SqliteStorage

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


def _sqlite_storage(workspace: Workspace) -> tuple[type, dict]:
    Path(workspace.queue_db).parent.mkdir(parents=True, exist_ok=True)
    return SqliteStorage, {"filename": str(workspace.queue_db), "timeout": 15}


# Where the queue lives: name → (Huey storage class, its options) for a workspace.
QUEUE_STORAGES: dict[str, Callable[[Workspace], tuple[type, dict]]] = {"sqlite": _sqlite_storage}
DEFAULT_STORAGE = "sqlite"


def create_huey(workspace: Workspace, storage: str = DEFAULT_STORAGE) -> Huey:
    """The workspace's Huey: the one place that chooses the queue's storage."""
    storage_class, options = QUEUE_STORAGES[storage](workspace)
    return Huey(QUEUE_NAME, results=False, store_none=False, utc=True, storage_class=storage_class, **options)


class JobQueue:
    """The workspace's queue. `executor(run_id)` runs a job; only the engine passes one."""

    def __init__(self, workspace: Workspace, executor: Callable[[str], None] | None = None):
        self.workspace = workspace
        self.executor = executor
        self.huey = create_huey(workspace)

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
        return [task.args[0] for task in self._waiting()]

    def discard(self, run_id: str) -> int:
        """Take a run's waiting tasks off the queue (a cancelled or re-prioritised run); how many went.

        Revoked, in Huey's terms: the consumer skips such a task when it comes to it. Harmless if the
        engine takes one in the meantime: it finds the run no longer queued, or runs it once (the
        claim is atomic).
        """
        tasks = [task for task in self._waiting() if task.args[0] == run_id]
        for task in tasks:
            self.huey.revoke(task, revoke_once=True)  # once: the consumer drops the mark as it skips the task
        return len(tasks)

    def _waiting(self) -> list:
        """Our tasks still in the queue and not revoked, in the order they will be taken."""
        return [task for task in self.huey.pending() if task.args and not self.huey.is_revoked(task)]

    def __len__(self) -> int:
        return len(self._waiting())


def consumer_options(workers: int, shutdown_timeout: float) -> dict:
    """Huey Consumer settings: one thread per GPU slot, fast polling (see POLL_*), and how long a
    graceful stop waits for the running jobs."""
    return dict(workers=workers, worker_type="thread", initial_delay=POLL_INITIAL, backoff=POLL_BACKOFF,
                max_delay=POLL_MAX, periodic=False, shutdown_timeout=shutdown_timeout)
