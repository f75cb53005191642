"""Submit, retry and resume are all or nothing (issue 16): a queue that cannot take the run leaves no
run behind `queued` in no queue, and the user reads a sentence naming queue.db, never a traceback.
A full disk where the workspace is written names the filesystem instead."""

from __future__ import annotations

import os
import sqlite3

import pytest

from jobs.queue import JobQueue
from jobs.store import open_store

PRESET = """\
name: atomic
model:
  path: some/model
data:
  train_files: {data}
training:
  epochs: 1
"""


@pytest.fixture
def cli(cli, monkeypatch):
    """conftest's in-process CLI, where nothing may start a real engine, whatever happens."""
    monkeypatch.setattr("jobs.control.ensure_engine", lambda ws: None)
    return cli


@pytest.fixture
def preset_file(tmp_path):
    data = tmp_path / "data.json"
    data.write_text('[{"instruction": "hi", "output": "hello"}]')
    path = tmp_path / "atomic.yaml"
    path.write_text(PRESET.format(data=data))
    return path


def broken_enqueue(self, run_id, priority=0):
    raise sqlite3.DatabaseError("database disk image is malformed")


def damage_queue(workspace) -> None:
    workspace.queue_db.write_bytes(os.urandom(8192))


def run_folders(workspace) -> list[str]:
    return sorted(p.name for p in workspace.runs_dir.iterdir()) if workspace.runs_dir.exists() else []


def assert_refused_naming_queue(code: int, output: str) -> None:
    assert code != 0, output
    assert "Traceback" not in output
    assert "queue.db" in output and "move" in output, output


def ended_run(workspace, state: str, **info):
    store = open_store(workspace)
    run = store.create_run("train", "old", PRESET.format(data="/nowhere.json"), info=info or None)
    store.set_state(run.id, "running")
    store.set_state(run.id, state)
    workspace.run_dir(run.id).mkdir(parents=True, exist_ok=True)
    return store.get_run(run.id)


# --------------------------------------------------------------------------- submit


def test_submit_whose_enqueue_fails_leaves_no_run_and_no_folder(cli, workspace, preset_file, monkeypatch):
    monkeypatch.setattr(JobQueue, "enqueue", broken_enqueue)
    code, output = cli("submit", str(preset_file), "--no-engine")
    assert_refused_naming_queue(code, output)
    assert "malformed" in output and "nothing was submitted" in output
    assert open_store(workspace).list_runs() == []
    assert run_folders(workspace) == []


def test_submit_into_a_damaged_queue_db_leaves_no_run_and_no_folder(cli, workspace, preset_file):
    damage_queue(workspace)
    code, output = cli("submit", str(preset_file), "--no-engine")
    assert_refused_naming_queue(code, output)
    assert open_store(workspace).list_runs() == []
    assert run_folders(workspace) == []


def test_submit_works_again_once_the_damaged_queue_db_is_moved_aside(cli, workspace, preset_file):
    damage_queue(workspace)
    assert cli("submit", str(preset_file), "--no-engine")[0] != 0
    os.replace(workspace.queue_db, workspace.queue_db.with_name("queue.db.broken"))
    code, output = cli("submit", str(preset_file), "--no-engine")
    assert code == 0, output
    [run] = open_store(workspace).list_runs()
    assert run.state == "queued" and JobQueue(workspace).pending_run_ids() == [run.id]


def test_submit_on_a_full_disk_names_the_workspace_filesystem(cli, workspace, preset_file, monkeypatch):
    from jobs.store import Store

    def full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Store, "create_run", full)
    code, output = cli("submit", str(preset_file), "--no-engine")
    assert code != 0, output
    assert "Traceback" not in output and "OperationalError" not in output
    assert "disk is full" in output and "free" in output and "mounted at" in output
    assert str(workspace.root) in output
    assert run_folders(workspace) == []


# --------------------------------------------------------------------------- retry and resume


def test_retry_whose_enqueue_fails_makes_no_new_run(cli, workspace, monkeypatch):
    old = ended_run(workspace, "failed")
    monkeypatch.setattr(JobQueue, "enqueue", broken_enqueue)
    code, output = cli("retry", old.id)
    assert_refused_naming_queue(code, output)
    assert [run.id for run in open_store(workspace).list_runs()] == [old.id]
    assert run_folders(workspace) == [old.id]


def test_retry_into_a_damaged_queue_db_makes_no_new_run(cli, workspace):
    old = ended_run(workspace, "failed")
    damage_queue(workspace)
    code, output = cli("retry", old.id)
    assert_refused_naming_queue(code, output)
    assert [run.id for run in open_store(workspace).list_runs()] == [old.id]
    assert run_folders(workspace) == [old.id]


def test_resume_into_a_damaged_queue_db_changes_nothing(cli, workspace):
    old = ended_run(workspace, "interrupted", dry_run=True)
    damage_queue(workspace)
    code, output = cli("resume", old.id)
    assert_refused_naming_queue(code, output)
    run = open_store(workspace).get_run(old.id)
    assert run.state == "interrupted" and run.attempt == old.attempt


def test_resume_whose_enqueue_fails_is_not_left_queued(cli, workspace, monkeypatch):
    old = ended_run(workspace, "interrupted", dry_run=True)
    monkeypatch.setattr(JobQueue, "enqueue", broken_enqueue)
    code, output = cli("resume", old.id)
    assert_refused_naming_queue(code, output)
    run = open_store(workspace).get_run(old.id)
    assert run.state == "cancelled" and "queue.db" in (run.error or "")  # still resumable, and says why
