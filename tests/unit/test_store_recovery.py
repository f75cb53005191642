"""A damaged, emptied or deleted tunebench.db loses no run: the run folders mirror the store, the
store refuses to hide them, and `store rebuild` brings them back (the pure parts; the engine and
real training are in tests/integration/test_store_recovery.py)."""

from __future__ import annotations

import json
import os
import signal

import pytest

from jobs.db_sink import DbSink
from jobs.rebuild import check_store, read_journal, rebuild_store
from jobs.store import Store, StoreError, open_store
from tui.cli import main

PRESET = "kind: train\nname: demo\n"


def _flat(text: str) -> str:
    return " ".join(text.split())  # rich wraps at the terminal's width


def _journal(ws, run_id) -> list[dict]:
    return [json.loads(line) for line in (ws.run_dir(run_id) / "history.jsonl").read_text().splitlines()]


def _record(ws, run_id) -> dict:
    return json.loads((ws.run_dir(run_id) / "run.json").read_text())


def _forget_store(ws) -> None:
    """Delete tunebench.db as a user would, and open it afresh as a new process would (a file made
    at the same path may reuse the inode, which open_store's cache keys on)."""
    from jobs import store as store_mod

    open_store(ws).close()
    store_mod._STORES.clear()
    for suffix in ("", "-wal", "-shm"):
        (ws.root / f"tunebench.db{suffix}").unlink(missing_ok=True)


def _create(store, ws, name, preset=PRESET, **kwargs):
    run = store.create_run(preset.split("kind: ")[1].split()[0], name, preset, **kwargs)
    (ws.run_dir(run.id) / "preset.yaml").write_text(preset)  # as jobs.control.submit freezes it
    return run


def _checkpoint(folder, step, *, keep=False):
    path = folder / "checkpoints" / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text(json.dumps(
        {"global_step": step, "log_history": [{"step": step, "loss": 1.0 / step}]}))
    if keep:
        (path / "tunebench-keep").write_text("")
    return path


# --------------------------------------------------------------------------- the mirror


def test_run_json_exists_from_creation_and_follows_every_state_change(workspace):
    store = open_store(workspace)
    run = store.create_run("train", "demo", PRESET, priority=2, info={"overrides": ["a=1"]})
    record = _record(workspace, run.id)
    assert (record["id"], record["state"], record["priority"], record["info"]) == (run.id, "queued", 2, {"overrides": ["a=1"]})
    store.set_state(run.id, "running")
    store.update_run(run.id, total_steps=8, info={"method": "lora"})
    assert _record(workspace, run.id)["state"] == "running"
    assert _record(workspace, run.id)["total_steps"] == 8
    store.add_metrics(run.id, [(4, "loss", 1.5, 1.0), (4, "eval_loss", float("nan"), 1.0), (8, "eval_loss", 1.2, 2.0)])
    store.set_state(run.id, "failed", error="boom", advice="fix it")
    record = _record(workspace, run.id)
    assert (record["state"], record["error"], record["advice"], record["step"], record["best_eval_loss"]) == \
        ("failed", "boom", "fix it", 8, 1.2)
    assert record["finished_at"] and record["active_seconds"] >= 0 and record["info"]["method"] == "lora"
    kinds = [r["type"] for r in _journal(workspace, run.id)]
    assert kinds.count("event") == len(store.events_since(run.id)) == 3
    assert kinds.count("metrics") == 2  # one record per step and time


def test_a_removed_runs_folder_is_not_made_again(workspace):
    store = open_store(workspace)
    run = store.create_run("train", "demo", PRESET)
    (workspace.run_dir(run.id) / "run.json").unlink()
    (workspace.run_dir(run.id) / "history.jsonl").unlink()
    workspace.run_dir(run.id).rmdir()
    store.set_state(run.id, "cancelled")
    store.add_event(run.id, "info", "late")
    assert not workspace.run_dir(run.id).exists()


def test_a_scratch_database_mirrors_nothing(tmp_path):
    store = Store(tmp_path / "scratch.db")
    store.create_run("train", "demo", PRESET)
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- refusing to hide the runs


@pytest.mark.parametrize("how", ["deleted", "emptied", "made anew"])
def test_a_new_or_empty_store_beside_run_folders_is_refused(workspace, how, capsys):
    store = open_store(workspace)
    for _ in range(3):
        store.create_run("train", "demo", PRESET)
    _forget_store(workspace)
    if how == "emptied":
        workspace.store_db.write_bytes(b"")
    elif how == "made anew":
        Store(workspace.store_db, runs_dir=None).close()  # an empty schema, as an older tunebench made it
    with pytest.raises(StoreError, match="holds 3 run folders") as raised:
        open_store(workspace)
    assert "tunebench store rebuild" in raised.value.advice
    assert (workspace.store_db.exists()) == (how != "deleted")  # refused before anything was made
    assert main(["-w", str(workspace.root), "ls"]) == 2
    err = _flat(capsys.readouterr().err)
    assert "holds 3 run folders" in err and "store rebuild" in err and "Traceback" not in err


def test_folders_that_are_not_runs_do_not_block_a_new_store(workspace):
    (workspace.runs_dir / "demo-20260101-000000").mkdir()  # headless `tunebench train`
    (workspace.runs_dir / "demo-20260101-000000" / "preset.yaml").write_text(PRESET)
    (workspace.runs_dir / ".deleting-r-260101-000000-aaaa-123abc").mkdir()  # a removal cut short
    assert open_store(workspace).list_runs() == []


def test_a_damaged_store_raises_store_error_naming_the_file(workspace):
    store = open_store(workspace)
    run = store.create_run("train", "demo", PRESET)
    store.close()
    workspace.store_db.write_bytes(os.urandom(8192))
    for suffix in ("-wal", "-shm"):
        (workspace.root / f"tunebench.db{suffix}").unlink(missing_ok=True)
    with pytest.raises(StoreError) as raised:
        store.get_run(run.id)  # an open Store whose file went bad under it
    assert str(workspace.store_db) in raised.value.message and "not a readable tunebench database" in raised.value.message
    assert "store check" in raised.value.advice and "store rebuild" in raised.value.advice
    with pytest.raises(StoreError, match="not a readable tunebench database"):
        Store(workspace.store_db)


def test_the_sink_keeps_recording_into_the_folder_when_the_store_is_lost(workspace):
    store = open_store(workspace)
    run = store.create_run("train", "demo", PRESET)
    store.set_state(run.id, "running")
    sink = DbSink(store, run.id, flush_interval=60)
    sink.metrics(1, {"loss": 2.0})
    sink.flush()
    store.close()
    workspace.store_db.write_bytes(os.urandom(8192))
    for suffix in ("-wal", "-shm"):
        (workspace.root / f"tunebench.db{suffix}").unlink(missing_ok=True)
    sink.metrics(2, {"loss": 1.5})
    sink.event("info", "still here", 2)
    sink.checkpoint(2, str(workspace.run_dir(run.id) / "checkpoints" / "checkpoint-2"), {"loss": 1.5})
    assert sink.lost is not None and sink.should_stop() == "interrupt"
    sink.close()
    history = read_journal(workspace.run_dir(run.id) / "history.jsonl")
    assert [(s, n, v) for s, n, v, _ in history.metrics] == [(1, "loss", 2.0), (2, "loss", 1.5)]
    assert history.events[-2][1] == "still here" and 2 in history.checkpoints


def test_engine_stops_when_its_store_is_deleted_or_replaced(workspace):
    from jobs.engine_process import Engine

    engine = Engine(workspace)
    assert engine.acquire()
    try:
        assert not engine.workspace_replaced()
        engine._replaced_checked = 0.0
        workspace.store_db.rename(workspace.root / "elsewhere.db")
        assert engine.workspace_replaced() and "was deleted" in engine.replaced
        engine._replaced_checked = 0.0
        (workspace.root / "elsewhere.db").rename(workspace.store_db)
        assert not engine.workspace_replaced()
        engine._replaced_checked = 0.0
        (workspace.root / "copy.db").write_bytes(workspace.store_db.read_bytes())
        os.replace(workspace.root / "copy.db", workspace.store_db)
        assert engine.workspace_replaced() and "was replaced" in engine.replaced
    finally:
        engine.release()


# --------------------------------------------------------------------------- check and rebuild


def _hand_made_workspace(workspace):
    """Three runs as the mirror leaves them, plus one folder from before run.json existed."""
    store = open_store(workspace)
    done = _create(store, workspace, "done")
    store.set_state(done.id, "running")
    store.add_metrics(done.id, [(1, "loss", 2.0, 1.0), (2, "loss", 1.0, 2.0), (2, "eval_loss", 1.4, 2.0),
                                (4, "loss", 0.5, 3.0), (4, "eval_loss", 1.1, 3.0)])
    for step, eval_loss in ((2, 1.4), (4, 1.1)):
        store.add_checkpoint(done.id, step, _checkpoint(workspace.run_dir(done.id), step, keep=step == 2),
                             {"eval_loss": eval_loss}, 1234)
    store.set_checkpoint_keep(done.id, 2, True)  # the row, beside the marker file jobs.checkpoints writes
    store.add_finding(done.id, {"rule": "memory", "severity": "info", "title": "peak"})
    store.set_state(done.id, "completed")
    resumed = _create(store, workspace, "resumed")
    store.set_state(resumed.id, "running")
    store.add_metrics(resumed.id, [(s, "loss", 3.0 - s / 10, float(s)) for s in range(1, 7)])
    store.add_checkpoint(resumed.id, 3, _checkpoint(workspace.run_dir(resumed.id), 3), {"loss": 2.7}, 10)
    store.set_state(resumed.id, "interrupted")
    store.delete_metrics_after(resumed.id, 3)  # a resume from step 3 drops what came after
    store.set_state(resumed.id, "queued")
    store.set_state(resumed.id, "running")
    store.add_metrics(resumed.id, [(4, "loss", 2.5, 10.0)])
    waiting = _create(store, workspace, "waiting", "kind: eval\nname: waiting\n", priority=5)
    legacy = workspace.run_dir("r-250101-000000-abcd")
    legacy.mkdir()
    (legacy / "preset.yaml").write_text("kind: train\nname: old\n")
    (legacy / "final").mkdir()
    return store, done, resumed, waiting


def _snapshot(store, run_id):
    run = store.get_run(run_id)
    return {
        "run": (run.kind, run.name, run.state, run.priority, run.step, run.last_loss, run.best_eval_loss,
                run.best_eval_step, run.attempt, run.findings, run.created_at),
        "metrics": [(m.step, m.name, m.value) for m in store.metrics_since(run_id)],
        "events": [(e.level, e.text, e.step) for e in store.events_since(run_id)],
        "checkpoints": [(c.step, c.metrics, c.size_bytes, c.keep, c.best) for c in store.list_checkpoints(run_id)],
    }


def test_rebuild_from_hand_made_folders_brings_every_run_back(workspace):
    store, done, resumed, waiting = _hand_made_workspace(workspace)
    before = {r.id: _snapshot(store, r.id) for r in (done, resumed, waiting)}
    _forget_store(workspace)
    check = check_store(workspace)
    assert not check.exists and check.folders == 4 and len(check.unknown_folders) == 4
    report = rebuild_store(workspace)
    assert report.run_count == 4 and report.interrupted == [resumed.id] and report.queued == [waiting.id]
    assert not report.kept_aside  # nothing was there to keep
    rebuilt = open_store(workspace)
    assert _snapshot(rebuilt, done.id) == before[done.id]
    assert _snapshot(rebuilt, waiting.id) == before[waiting.id]
    after = _snapshot(rebuilt, resumed.id)
    assert after["metrics"] == before[resumed.id]["metrics"] == [(s, "loss", pytest.approx(3.0 - s / 10)) for s in (1, 2, 3)] + [(4, "loss", 2.5)]
    assert after["events"][:-1] == before[resumed.id]["events"]
    assert after["run"][2] == "interrupted"
    run = rebuilt.get_run(resumed.id)
    assert "lost while this run was running" in run.error and f"resume {resumed.id}" in run.advice
    assert _record(workspace, resumed.id)["state"] == "interrupted"  # the folder agrees with the store
    assert rebuilt.findings(done.id)[0]["title"] == "peak"
    legacy = rebuilt.get_run("r-250101-000000-abcd")
    assert (legacy.kind, legacy.name, legacy.state) == ("train", "old", "completed")
    assert check_store(workspace).complete


def _climb(title: str, step_start: int, step_end: int, severity: str = "warning") -> dict:
    return {"rule": "divergence", "severity": severity, "title": title, "advice": "lower the learning rate",
            "step_start": step_start, "step_end": step_end, "evidence": {"kind": "rise"}, "key": "climb"}


def test_a_finding_updated_in_place_comes_back_from_a_rebuild_as_one(workspace):
    store = open_store(workspace)
    run = _create(store, workspace, "diverging")
    store.set_state(run.id, "running")
    sink = DbSink(store, run.id, flush_interval=60)
    sink.finding(_climb("22.5 now against its best 8", 16, 16))
    sink.finding({"rule": "spikes", "severity": "info", "title": "1 loss spike(s)", "step_start": 30, "step_end": 30})
    sink.finding(_climb("30 now against its best 8", 18, 80))
    sink.flush()
    store.close()
    # The store is lost mid-run: the last update reaches the folder only.
    workspace.store_db.write_bytes(os.urandom(8192))
    for suffix in ("-wal", "-shm"):
        (workspace.root / f"tunebench.db{suffix}").unlink(missing_ok=True)
    sink.finding(_climb("36 now against its best 8", 20, 144, "error"))
    assert sink.lost is not None
    sink.close()
    assert len([r for r in _journal(workspace, run.id) if r["type"] == "finding"]) == 4  # every report is kept

    _forget_store(workspace)
    rebuild_store(workspace)
    rebuilt = open_store(workspace)
    findings = rebuilt.findings(run.id)
    assert [(f["rule"], f["title"], f["severity"], f["step_start"], f["step_end"]) for f in findings] == [
        ("divergence", "36 now against its best 8", "error", 16, 144), ("spikes", "1 loss spike(s)", "info", 30, 30)]
    assert rebuilt.get_run(run.id).findings == 2
    # The rebuilt store goes on updating it.
    rebuilt.add_finding(run.id, _climb("40 now against its best 8", 22, 150, "error"))
    assert [f["title"] for f in rebuilt.findings(run.id)] == ["40 now against its best 8", "1 loss spike(s)"]
    assert rebuilt.get_run(run.id).findings == 2


def test_rebuild_keeps_a_damaged_file_aside_and_refuses_a_sound_one(workspace, capsys):
    store, done, resumed, waiting = _hand_made_workspace(workspace)
    store.close()
    workspace.store_db.write_bytes(os.urandom(8192))
    check = check_store(workspace)
    assert check.exists and not check.readable and "not a database" in check.error
    assert main(["-w", str(workspace.root), "store", "check"]) == 1
    assert "not a readable tunebench database" in _flat(capsys.readouterr().out)
    assert main(["-w", str(workspace.root), "store", "rebuild"]) == 0
    out = _flat(capsys.readouterr().out)
    assert "4 runs" in out and "kept aside" in out
    aside = sorted(workspace.root.glob("tunebench.db.damaged-*"))
    assert aside and aside[0].stat().st_size == 8192
    assert len(open_store(workspace).list_runs()) == 4
    assert main(["-w", str(workspace.root), "store", "rebuild"]) == 2  # sound and complete: nothing to do
    assert "nothing to rebuild" in _flat(capsys.readouterr().err)
    assert main(["-w", str(workspace.root), "store", "check"]) == 0


def test_a_store_lost_mid_run_ends_the_job_with_a_clear_line_and_the_outcome_in_its_folder(workspace, capsys):
    from jobs import worker
    from jobs.store import unreadable_store

    store = open_store(workspace)
    run = _create(store, workspace, "dry", info={"dry_run": True, "dry_run_seconds": 2.0})
    store.set_state(run.id, "running")
    writes = {"n": 0}
    real_add_metrics = store.add_metrics

    def breaking_add_metrics(run_id, rows):
        writes["n"] += 1
        if writes["n"] > 1:  # the first batch lands; then the file goes bad
            raise unreadable_store(store.path, Exception("file is not a database"))
        real_add_metrics(run_id, rows)

    store.add_metrics = breaking_add_metrics
    store.set_state = lambda *a, **k: (_ for _ in ()).throw(unreadable_store(store.path, Exception("gone")))
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        assert worker.run_job(workspace, run.id) == 1
    finally:  # run_job installs the job process's handlers
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    out = _flat(capsys.readouterr().out)
    assert "not a readable tunebench database" in out and "store rebuild" in out and "Traceback" not in out
    record = _record(workspace, run.id)
    assert record["state"] == "interrupted" and "became unreadable" in record["error"]
    history = read_journal(workspace.run_dir(run.id) / "history.jsonl")
    assert history.metrics and history.events[-1][1].startswith("running → interrupted")
