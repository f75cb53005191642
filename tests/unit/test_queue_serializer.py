"""queue.db holds JSON, never pickles: what tunebench did not write is refused, and nothing runs from it."""

from __future__ import annotations

import datetime
import json
import logging
import os
import pickle
import shlex
import sqlite3

import pytest
from huey.registry import Message

from jobs.engine_process import Engine
from jobs.queue import QUEUE_NAME, JobQueue, JsonMessageSerializer, QueueMessageError
from jobs.store import open_store

PRESET = "kind: train\nname: demo\n"


class _Exploit:
    """Unpickling this runs a shell command: the attack a pickle-reading queue is open to."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def plant(ws, data: bytes, priority: float = 0.0) -> None:
    """Insert a row into queue.db's task table as Huey's SqliteStorage lays it out."""
    with sqlite3.connect(ws.queue_db) as conn:
        conn.execute("insert into task (queue, data, priority) values (?, ?, ?)", (QUEUE_NAME, data, priority))


def plant_mark(ws, key: str, data: bytes) -> None:
    """Insert a value into queue.db's kv table (where Huey keeps revocation marks)."""
    with sqlite3.connect(ws.queue_db) as conn:
        conn.execute("insert or replace into kv (queue, key, value) values (?, ?, ?)", (QUEUE_NAME, key, data))


def raw_rows(ws) -> list[bytes]:
    with sqlite3.connect(ws.queue_db) as conn:
        return [bytes(row[0]) for row in conn.execute("select data from task order by priority desc, id")]


@pytest.fixture
def exploit(tmp_path):
    marker = tmp_path / "pwned"
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(_Exploit(live)))
    assert live.exists()  # the payload works when unpickled: its absence below means it was never unpickled
    return marker, pickle.dumps(_Exploit(marker))


def task_message(**changes) -> dict:
    fields = {"kind": "task", "id": "9f0c", "name": "jobs.queue.run_job", "eta": None, "retries": 0,
              "retry_delay": 0, "priority": None, "args": ["r-1"], "kwargs": {}, "on_complete": None,
              "on_error": None, "expires": None, "expires_resolved": None, "timeout": None,
              "chord_config": None, "retry_backoff": 0}
    fields.update(changes)
    return fields


# --------------------------------------------------------------------------- round trip


def test_an_enqueued_message_is_json_and_reads_back_the_same(workspace):
    queue = JobQueue(workspace)
    queue.enqueue("r-260101-000000-aaaa", priority=4)
    [row] = raw_rows(workspace)
    payload = json.loads(row)
    assert payload["kind"] == "task" and payload["args"] == ["r-260101-000000-aaaa"] and payload["priority"] == 4
    assert set(payload) == {"kind", *Message._fields}

    message = queue.huey.serializer.deserialize(row)
    assert isinstance(message, Message)
    assert message.args == ("r-260101-000000-aaaa",) and message.priority == 4 and message.id == payload["id"]
    assert queue.huey.serializer.serialize(message) == row  # stable both ways
    task = queue.huey.dequeue()
    assert task.args == ("r-260101-000000-aaaa",) and task.priority == 4


def test_datetimes_and_revocation_marks_round_trip():
    serializer = JsonMessageSerializer()
    eta = datetime.datetime(2026, 1, 2, 3, 4, 5, 678)
    fields = {k: v for k, v in task_message(args=("r-1",)).items() if k != "kind"}
    message = Message(**{**fields, "eta": eta, "expires_resolved": eta})
    data = serializer.serialize(message)
    assert json.loads(data)["eta"] == "2026-01-02T03:04:05.000678"
    assert serializer.deserialize(data) == message
    for mark in ((None, True), (eta, False)):
        assert serializer.deserialize(serializer.serialize(mark)) == mark


def test_only_tasks_and_revocation_marks_are_written():
    with pytest.raises(TypeError):
        JsonMessageSerializer().serialize({"result": 1})


@pytest.mark.parametrize("payload, run_id", [
    (task_message(args=["r-1", "r-2"]), None),
    (task_message(args=[7]), None),
    (task_message(args=["../../etc"]), None),
    (task_message(kwargs={"cmd": "rm"}), "r-1"),
    (task_message(name="os.system"), "r-1"),
    (task_message(on_complete={"name": "x"}), "r-1"),
    (task_message(extra=1), "r-1"),
    ({k: v for k, v in task_message().items() if k != "timeout"}, "r-1"),
    (task_message(eta="yesterday"), "r-1"),
    (task_message(kind="result"), "r-1"),
    ({"kind": "revoke", "until": None, "once": "yes"}, None),
    ([1, 2], None),
])
def test_json_that_tunebench_did_not_write_is_refused(payload, run_id):
    with pytest.raises(QueueMessageError) as caught:
        JsonMessageSerializer("/ws/queue.db").deserialize(json.dumps(payload).encode())
    assert caught.value.run_id == run_id
    assert caught.value.message.startswith("/ws/queue.db: refused a queue entry")
    assert "chmod -R go-rwx /ws" in caught.value.advice


@pytest.mark.parametrize("data", [b"\x80\x04K\x01.", b"not json", b'{"kind": NaN}', b"\xff\xfe",
                                  b'{"kind":"revoke","until":null,"once":true,"once":false}', b"[" * 100_000])
def test_bytes_that_are_not_a_json_object_are_refused(data):
    with pytest.raises(QueueMessageError):
        JsonMessageSerializer().deserialize(data)


# --------------------------------------------------------------------------- planted pickles


def test_a_planted_pickle_is_never_unpickled_by_the_queue_readers(workspace, exploit, caplog):
    marker, payload = exploit
    queue = JobQueue(workspace)
    queue.enqueue("run-a")
    plant(workspace, payload, priority=10)  # first in line
    queue.enqueue("run-b")

    with caplog.at_level(logging.WARNING, logger="tunebench.queue"):
        assert queue.pending_run_ids() == ["run-a", "run-b"]  # what `cancel` and the engine's recovery read
        assert JobQueue(workspace).discard("run-a") == 1
        assert len(queue) == 1
    assert not marker.exists()
    assert f"{workspace.queue_db}: refused a queue entry that is not a tunebench JSON message (a pickle)" in caplog.text


def test_the_consumer_drops_a_planted_pickle_without_running_anything(workspace, exploit, caplog):
    marker, payload = exploit
    refused: list[QueueMessageError] = []
    ran: list[str] = []
    queue = JobQueue(workspace, executor=ran.append, on_refused=refused.append)
    queue.enqueue("run-a")
    plant(workspace, payload, priority=10)

    with caplog.at_level(logging.ERROR, logger="tunebench.queue"):
        assert queue.huey.dequeue() is None  # Huey's consumer loop calls this
    assert not marker.exists()
    assert [e.run_id for e in refused] == [None]
    assert "refused a queue entry" in caplog.text and "nothing was run" in caplog.text
    assert len(raw_rows(workspace)) == 1  # the pickle is gone from the queue; run-a remains
    task = queue.huey.dequeue()
    queue.huey.execute(task)
    assert ran == ["run-a"]


def test_a_planted_revocation_mark_is_not_unpickled_and_counts_as_none(workspace, exploit, caplog):
    marker, payload = exploit
    queue = JobQueue(workspace)
    queue.enqueue("run-a")
    [task] = queue._waiting()
    plant_mark(workspace, task.revoke_id, payload)
    with caplog.at_level(logging.ERROR, logger="tunebench.queue"):
        assert queue.pending_run_ids() == ["run-a"]  # the run store, not the mark, says whether it runs
    assert not marker.exists()
    assert "unreadable revocation mark" in caplog.text
    with sqlite3.connect(workspace.queue_db) as conn:
        assert conn.execute("select count(*) from kv").fetchone()[0] == 0  # the mark was removed


# --------------------------------------------------------------------------- the engine


def test_an_old_pickled_queue_is_reconciled_from_the_store_at_engine_start(workspace, caplog):
    """A queue.db written by an older tunebench (pickled Huey messages): its queued runs are enqueued
    again as JSON when the engine starts, and the pickled rows are dropped unread."""
    store = open_store(workspace)
    run = store.create_run("train", "demo", PRESET, run_id="r-260101-000000-aaaa")
    queue = JobQueue(workspace)
    old = Message(id="old", name="jobs.queue.run_job", args=(run.id,), kwargs={}, retries=0, retry_delay=0)
    plant(workspace, pickle.dumps(old))

    engine = Engine(workspace)
    engine.recover()
    assert engine.queue.pending_run_ids() == [run.id]
    assert engine.queue.huey.dequeue() is None  # the old row: refused; the run is already enqueued again
    task = engine.queue.huey.dequeue()
    assert task.args == (run.id,) and queue.huey.dequeue() is None


def test_a_refused_entry_does_not_leave_its_run_queued_for_ever(workspace):
    store = open_store(workspace)
    stranded = store.create_run("train", "demo", PRESET, run_id="r-260101-000000-aaaa")
    waiting = store.create_run("train", "demo", PRESET, run_id="r-260101-000000-bbbb")
    engine = Engine(workspace)
    engine.queue.enqueue(waiting.id)
    plant(workspace, json.dumps(task_message(args=[stranded.id], kwargs={"x": 1})).encode(), priority=10)

    assert engine.queue.huey.dequeue() is None
    assert engine.queue.pending_run_ids() == [waiting.id, stranded.id]  # enqueued again, once each
