"""A damaged, emptied or deleted tunebench.db loses no run: real jobs through a real engine, then the
store is lost, the CLI refuses to pretend the workspace is empty, and `store rebuild` brings back
every run with its state, metrics, events and checkpoints."""

from __future__ import annotations

import json
import os

import pytest

from jobs import control
from jobs import store as store_mod
from jobs.engine_process import engine_running, start_engine, stop_engine
from jobs.store import open_store
from helpers.engine_process import wait_for, wait_state
from tui.cli import main

pytest.importorskip("engine.train")

SHORT = ["training.logging_steps=1", "training.eval_steps=2", "training.save_steps=2", "training.keep_last=10"]


def _flat(text: str) -> str:
    return " ".join(text.split())  # rich wraps at the terminal's width


def _snapshot(ws) -> dict:
    store = open_store(ws)
    return {
        run.id: {
            "run": (run.kind, run.name, run.state, run.step, run.total_steps, run.last_loss, run.best_eval_loss,
                    run.best_eval_step, run.attempt, run.error),
            "metrics": [(m.step, m.name, m.value) for m in store.metrics_since(run.id) if m.value == m.value],
            "nan_metrics": sum(1 for m in store.metrics_since(run.id) if m.value != m.value),
            "events": len(store.events_since(run.id)),
            "checkpoints": [(c.step, c.path, c.metrics, c.keep, c.best) for c in store.list_checkpoints(run.id)],
        }
        for run in store.list_runs()
    }


def _assert_same(after: dict, before: dict) -> None:
    assert sorted(after) == sorted(before)
    for run_id, was in before.items():
        for key, value in was.items():
            assert after[run_id][key] == value, (run_id, key)


def _lose_the_store(ws, damage: bytes | None) -> None:
    """As a user would: delete tunebench.db (and its -wal/-shm), or write junk in its place."""
    open_store(ws).close()
    store_mod._STORES.clear()  # what a new process would see
    for suffix in ("", "-wal", "-shm"):
        (ws.root / f"tunebench.db{suffix}").unlink(missing_ok=True)
    if damage is not None:
        ws.store_db.write_bytes(damage)


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # rich wraps at the console width, even inside a path


def _cli(ws, capsys, *argv) -> tuple[int, str]:
    code = main(["-w", str(ws.root), *argv])
    captured = capsys.readouterr()
    return code, _flat(captured.out + captured.err)


@pytest.mark.slow
def test_a_deleted_store_is_refused_then_rebuilt_from_the_run_folders(ws, capsys):
    trained = control.submit(ws, "demo", overrides=["training.max_steps=4", *SHORT], start=False)
    start_engine(ws)
    done = wait_state(ws, trained.id, ("completed", "failed"), timeout=240)
    assert done.state == "completed", done.error
    stop_engine(ws, timeout=60)
    waiting = control.submit(ws, "demo", overrides=["training.max_steps=4", *SHORT], start=False)
    dropped = control.submit(ws, "demo", overrides=["training.max_steps=4", *SHORT], start=False)
    control.cancel(ws, dropped.id)
    before = _snapshot(ws)
    assert [before[r.id]["run"][2] for r in (trained, waiting, dropped)] == ["completed", "queued", "cancelled"]
    assert before[trained.id]["metrics"] and [c[0] for c in before[trained.id]["checkpoints"]] == [2, 4]
    record = json.loads((ws.run_dir(trained.id) / "run.json").read_text())
    assert (record["state"], record["step"], record["total_steps"]) == ("completed", 4, 4)

    _lose_the_store(ws, None)
    code, out = _cli(ws, capsys, "ls")
    assert code != 0 and "is missing" in out and "holds 3 run folders" in out and "store rebuild" in out
    assert "Traceback" not in out and not ws.store_db.exists()
    code, out = _cli(ws, capsys, "store", "rebuild")
    assert code == 0 and "3 runs" in out, out
    _assert_same(_snapshot(ws), before)
    code, out = _cli(ws, capsys, "ls")
    assert code == 0 and trained.id in out and waiting.id in out

    # The queued run still runs; then a store deleted under the engine stops the engine.
    start_engine(ws)
    assert wait_state(ws, waiting.id, ("completed", "failed"), timeout=240).state == "completed"
    for suffix in ("", "-wal", "-shm"):
        (ws.root / f"tunebench.db{suffix}").unlink(missing_ok=True)
    wait_for(lambda: not engine_running(ws), 30, "the engine to notice its store is gone")
    assert "tunebench.db was deleted" in ws.engine_log.read_text()
    store_mod._STORES.clear()
    code, out = _cli(ws, capsys, "store", "rebuild")
    assert code == 0 and "3 runs (1 cancelled, 2 completed)" in out, out


@pytest.mark.slow
def test_a_damaged_store_reads_as_a_clear_error_and_is_rebuilt(ws, capsys):
    run = control.submit(ws, "demo", dry_run=True, dry_run_seconds=0.3)
    done = wait_state(ws, run.id, ("completed", "failed"), timeout=60)
    assert done.state == "completed", done.error
    stop_engine(ws, timeout=60)
    before = _snapshot(ws)
    _lose_the_store(ws, os.urandom(8192))
    for argv in (["ls"], ["show", run.id], ["submit", "demo", "--no-engine"], ["engine", "status"],
                 ["engine", "start"]):
        code, out = _cli(ws, capsys, *argv)
        assert code != 0, argv
        assert str(ws.store_db) in out and "not a readable tunebench database" in out, (argv, out)
        assert "store check" in out and "store rebuild" in out and "Traceback" not in out, (argv, out)
    code, out = _cli(ws, capsys, "store", "check")
    assert code == 1 and "not a readable tunebench database" in out and run.id in out
    code, out = _cli(ws, capsys, "store", "rebuild")
    assert code == 0 and "kept aside" in out, out
    aside = list(ws.root.glob("tunebench.db.damaged-*"))
    assert len(aside) == 1 and aside[0].stat().st_size == 8192
    _assert_same(_snapshot(ws), before)
    assert _cli(ws, capsys, "store", "check")[0] == 0
