"""The job queue: Huey, over SQLite (`queue.db` in the workspace) unless told otherwise.

Only run ids travel through it; the run itself (frozen preset, state) lives in the store. The one
task, `run_job(run_id)`, hands the id to the engine's executor; a submitting process builds the
same queue without an executor and only enqueues. Priorities are Huey's: higher runs first, equal
priorities in submission order.

Only Huey's public API is used (a storage class, a serializer, enqueue / dequeue / revoke, the
Consumer's constructor), and the storage is chosen in one place, `QUEUE_STORAGES`: a queue shared by
several GPU boxes (Redis, say) is one more entry there, not a rewrite.

Entries are JSON, never pickles (`JsonMessageSerializer`): Huey's default serializer unpickles every
row it reads, so whoever could write queue.db would run code in the engine and in `cancel`. An entry
that is not exactly what tunebench writes (a task carrying one run id, or a revocation mark) is
refused: `QueueMessageError`, logged, and nothing runs from it.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
from pathlib import Path
from typing import Any, Callable

from huey import Huey
from huey.api import Task
from huey.registry import Message
from huey.serializer import Serializer
from huey.storage import SqliteStorage

from jobs.workspace import PRIVATE_DIR_MODE, Workspace, fix_permissions_command
from presets.errors import TunebenchError

QUEUE_NAME = "tunebench"
TASK_NAME = "run_job"
# Polling of an idle queue: start at 50 ms and back off to at most 250 ms, so a job submitted to
# an idle engine is picked up within a quarter of a second. An empty-queue poll is one indexed
# `select 1` on queue.db: cheap enough at 4 Hz.
POLL_INITIAL = 0.05
POLL_BACKOFF = 1.5
POLL_MAX = 0.25

log = logging.getLogger("tunebench.queue")


# --------------------------------------------------------------------------- the JSON serializer

# The name Huey registers our one task under (module + TASK_NAME): no other task may be read back.
TASK_STRING = f"{__name__}.{TASK_NAME}"
# Run ids are made by jobs.store.new_run_id ("r-…"); anything outside this alphabet was not.
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_ENTRY_BYTES = 64 * 1024  # an entry is a few hundred bytes: a larger one is refused unread


class QueueMessageError(TunebenchError):
    """An entry of queue.db that tunebench did not write; nothing is run from it.

    `run_id`: the run it names, when it is JSON that names one; else None.
    """

    def __init__(self, source: str, why: str, run_id: str | None = None):
        super().__init__(f"{source}: refused a queue entry that is not a tunebench JSON message ({why})",
                         "nothing was run from it. A queue.db written by an older tunebench holds such entries: "
                         "the engine enqueues its queued runs again when it starts. Otherwise someone else can "
                         f"write this file: `{fix_permissions_command(Path(source).parent)}` makes the workspace "
                         "private")
        self.run_id = run_id


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and value == value  # no NaN


def _is_run_id_args(value: Any) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == 1 and isinstance(value[0], str)
            and RUN_ID_PATTERN.fullmatch(value[0]) is not None)


def _encode_time(value: datetime.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _decode_time(value: Any, field: str) -> datetime.datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{field} is not an ISO date")
    return datetime.datetime.fromisoformat(value)


# What each field of Huey's Message may hold in a tunebench task: (check of the decoded JSON value,
# JSON → Python). Datetimes travel as ISO strings. Fields tunebench never uses (callbacks, chords)
# must be empty. A Huey whose Message has a field not listed here cannot write to the queue at all
# (see JsonMessageSerializer._serialize), so an upgrade shows up in the tests, not in production.
_TASK_FIELDS: dict[str, tuple[Callable[[Any], bool], Callable[[Any, str], Any]]] = {
    "id": (lambda v: isinstance(v, str) and 0 < len(v) <= 64, lambda v, f: v),
    "name": (lambda v: v == TASK_STRING, lambda v, f: v),
    "eta": (lambda v: v is None or isinstance(v, str), _decode_time),
    "retries": (lambda v: _is_int(v) and v >= 0, lambda v, f: v),
    "retry_delay": (lambda v: _is_number(v) and v >= 0, lambda v, f: v),
    "priority": (lambda v: v is None or _is_int(v), lambda v, f: v),
    "args": (_is_run_id_args, lambda v, f: tuple(v)),
    "kwargs": (lambda v: v is None or v == {}, lambda v, f: {}),
    "on_complete": (lambda v: v is None, lambda v, f: None),
    "on_error": (lambda v: v is None, lambda v, f: None),
    "expires": (lambda v: v is None or _is_number(v), lambda v, f: v),
    "expires_resolved": (lambda v: v is None or isinstance(v, str), _decode_time),
    "timeout": (lambda v: v is None or _is_number(v), lambda v, f: v),
    "chord_config": (lambda v: v is None, lambda v, f: None),
    "retry_backoff": (lambda v: v is None or _is_number(v), lambda v, f: v),
}
_TIME_FIELDS = ("eta", "expires_resolved")


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a value tunebench writes")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("a key appears twice")
    return result


class JsonMessageSerializer(Serializer):
    """Huey's serializer for tunebench's queue: JSON objects in, JSON objects out, never pickle.

    Two kinds of value go through it: a task (Huey's Message of `run_job(run_id)`) and a revocation
    mark (`(revoke_until, revoke_once)`, written by `revoke`). Reading anything else — a pickle, an
    unknown field, another task, args that are not one run id — raises QueueMessageError.
    """

    def __init__(self, source: str = "queue.db"):
        super().__init__()
        self.source = source  # named in every refusal

    def serialize(self, data) -> bytes:  # no compression: entries are tiny
        return self._serialize(data)

    def deserialize(self, data):
        return self._deserialize(data)

    def _serialize(self, data) -> bytes:
        if isinstance(data, Message):
            unknown = set(Message._fields) - set(_TASK_FIELDS)
            if unknown:
                raise TypeError(f"Huey's Message has fields tunebench does not know: {sorted(unknown)}")
            fields = data._asdict()
            for name in _TIME_FIELDS:
                fields[name] = _encode_time(fields[name])
            fields["args"] = list(fields["args"] or ())
            payload = {"kind": "task", **fields}
            self._check_task(payload)  # what we cannot read back, we do not write
        elif isinstance(data, tuple) and len(data) == 2 and isinstance(data[1], bool):
            until, once = data
            payload = {"kind": "revoke", "until": _encode_time(until), "once": once}
        else:
            raise TypeError(f"tunebench's queue carries tasks and revocation marks only, not {type(data).__name__}")
        return json.dumps(payload, separators=(",", ":")).encode()

    def _deserialize(self, data):
        if isinstance(data, (memoryview, bytearray)):
            data = bytes(data)
        if not isinstance(data, bytes):
            raise QueueMessageError(self.source, f"a {type(data).__name__}, not bytes")
        if len(data) > MAX_ENTRY_BYTES:
            raise QueueMessageError(self.source, f"{len(data)} bytes, more than any tunebench entry")
        try:
            payload = json.loads(data.decode("utf-8"), object_pairs_hook=_unique_keys,
                                 parse_constant=_refuse_constant)
        except (UnicodeDecodeError, ValueError, RecursionError):
            kind = "a pickle" if data[:1] == b"\x80" else "not JSON"
            raise QueueMessageError(self.source, kind) from None
        if not isinstance(payload, dict):
            raise QueueMessageError(self.source, "not a JSON object")
        kind = payload.get("kind")
        try:
            if kind == "task":
                return self._task(payload)
            if kind == "revoke":
                return self._revocation(payload)
        except (TypeError, ValueError) as exc:
            raise QueueMessageError(self.source, str(exc), _run_id_in(payload)) from None
        raise QueueMessageError(self.source, f"unknown kind {kind!r}", _run_id_in(payload))

    def _check_task(self, payload: dict) -> None:
        fields = set(payload) - {"kind"}
        if fields != set(_TASK_FIELDS):
            extra, missing = sorted(fields - set(_TASK_FIELDS)), sorted(set(_TASK_FIELDS) - fields)
            raise ValueError(f"unknown fields {extra}" if extra else f"missing fields {missing}")
        for name, (check, _) in _TASK_FIELDS.items():
            if not check(payload[name]):
                raise ValueError(f"{name} = {payload[name]!r} is not what tunebench writes")

    def _task(self, payload: dict) -> Message:
        self._check_task(payload)
        return Message(**{name: decode(payload[name], name) for name, (_, decode) in _TASK_FIELDS.items()})

    @staticmethod
    def _revocation(payload: dict) -> tuple[datetime.datetime | None, bool]:
        if set(payload) != {"kind", "until", "once"} or not isinstance(payload["once"], bool):
            raise ValueError("not a revocation mark")
        return _decode_time(payload["until"], "until"), payload["once"]


def _run_id_in(payload: dict) -> str | None:
    """The run a refused JSON entry names, if it names one plainly."""
    args = payload.get("args")
    return args[0] if _is_run_id_args(args) else None


class TunebenchHuey(Huey):
    """Huey over JsonMessageSerializer, whose readers survive a refused entry.

    The consumer's `dequeue` takes an entry off the queue before it is read; a refused one is
    logged, reported to `on_refused` (the engine looks for a run it leaves stranded) and nothing
    runs. A revocation mark that cannot be read counts as no mark: the run store, not the queue,
    decides whether a run still runs (a cancelled run is skipped by the engine anyway).
    """

    on_refused: Callable[[QueueMessageError], None] | None = None

    def deserialize_task(self, data) -> Task:
        try:
            return super().deserialize_task(data)
        except QueueMessageError:
            raise
        except Exception as exc:  # JSON of the wrong kind here, e.g. a revocation mark in the task table
            raise QueueMessageError(str(self.serializer.source), f"not a task: {exc}") from None

    def dequeue(self) -> Task | None:
        try:
            return super().dequeue()
        except QueueMessageError as exc:
            log.error("%s", exc)
            if self.on_refused is not None:
                self.on_refused(exc)
            return None

    def is_revoked(self, task, timestamp=None, peek=True) -> bool:
        try:
            return super().is_revoked(task, timestamp, peek)
        except (QueueMessageError, TypeError, ValueError) as exc:
            log.error("%s: an unreadable revocation mark for task %s was removed (%s)",
                      self.serializer.source, getattr(task, "id", task), exc)
            if isinstance(task, Task):
                self.restore(task)
                self.restore_all(type(task))
            return False


# --------------------------------------------------------------------------- the queue


def _sqlite_storage(workspace: Workspace) -> tuple[type, dict]:
    Path(workspace.queue_db).parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    return SqliteStorage, {"filename": str(workspace.queue_db), "timeout": 15}


# Where the queue lives: name → (Huey storage class, its options) for a workspace.
QUEUE_STORAGES: dict[str, Callable[[Workspace], tuple[type, dict]]] = {"sqlite": _sqlite_storage}
DEFAULT_STORAGE = "sqlite"


def create_huey(workspace: Workspace, storage: str = DEFAULT_STORAGE) -> Huey:
    """The workspace's Huey: the one place that chooses the queue's storage."""
    storage_class, options = QUEUE_STORAGES[storage](workspace)
    return TunebenchHuey(QUEUE_NAME, results=False, store_none=False, utc=True, storage_class=storage_class,
                         serializer=JsonMessageSerializer(str(workspace.queue_db)), **options)


class JobQueue:
    """The workspace's queue. `executor(run_id)` runs a job; only the engine passes one."""

    def __init__(self, workspace: Workspace, executor: Callable[[str], None] | None = None,
                 on_refused: Callable[[QueueMessageError], None] | None = None):
        self.workspace = workspace
        self.executor = executor
        self.huey = create_huey(workspace)
        self.huey.on_refused = on_refused

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
        """Our tasks still in the queue and not revoked, in the order they will be taken.

        An entry that is refused is skipped with one log line (Huey's own `pending()` would log a
        traceback); it stays in the queue until the engine's consumer takes it off and drops it.
        """
        tasks = []
        for data in self.huey.storage.enqueued_items():
            try:
                task = self.huey.deserialize_task(data)
            except QueueMessageError as exc:
                log.warning("%s", exc)
                continue
            if task.args and not self.huey.is_revoked(task):
                tasks.append(task)
        return tasks

    def __len__(self) -> int:
        return len(self._waiting())


def consumer_options(workers: int, shutdown_timeout: float) -> dict:
    """Huey Consumer settings: one thread per GPU slot, fast polling (see POLL_*), and how long a
    graceful stop waits for the running jobs."""
    return dict(workers=workers, worker_type="thread", initial_delay=POLL_INITIAL, backoff=POLL_BACKOFF,
                max_delay=POLL_MAX, periodic=False, shutdown_timeout=shutdown_timeout)
