"""The run store: schema versioning, runs and their states, metrics/events read incrementally."""

from __future__ import annotations

import math
import sqlite3
import subprocess
import sys
import threading
from types import SimpleNamespace

import pytest

from jobs import store as store_mod
from jobs.store import InvalidTransition, RunNotFound, Store, StoreError, new_run_id

PRESET = "kind: train\nname: demo\n"


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "tunebench.db")


def test_new_database_is_at_latest_version_in_wal_mode(store):
    assert store.schema_version() == store_mod.SCHEMA_VERSION
    conn = sqlite3.connect(store.path)
    assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
    assert {"runs", "metrics", "events", "checkpoints", "findings", "transcripts", "eval_results",
            "schema_version"} <= tables


def test_migrations_apply_in_order_and_only_once(tmp_path, monkeypatch):
    path = tmp_path / "db.sqlite"
    Store(path).create_run("train", "old", PRESET)
    extra = [["alter table runs add column scratch text"], ["update runs set scratch = 'migrated'"]]
    monkeypatch.setattr(store_mod, "MIGRATIONS", store_mod.MIGRATIONS + extra)
    upgraded = Store(path)
    assert upgraded.schema_version() == len(store_mod.MIGRATIONS)
    assert upgraded._read("select scratch from runs") == [("migrated",)]
    # Opening again applies nothing twice (a second 'add column' would fail).
    Store(path)
    versions = [v for (v,) in upgraded._read("select version from schema_version order by version")]
    assert versions == list(range(1, len(store_mod.MIGRATIONS) + 1))


def test_newer_database_is_refused(tmp_path):
    path = tmp_path / "db.sqlite"
    Store(path)
    conn = sqlite3.connect(path)
    conn.execute("insert into schema_version values (?, 0)", (store_mod.SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        Store(path)


def test_run_ids_are_unique_and_sort_by_time():
    ids = {new_run_id(1_700_000_000) for _ in range(200)}
    assert len(ids) > 190  # a same-second collision is retried by create_run
    assert new_run_id(1_700_000_000) < new_run_id(1_700_000_060)


def test_create_and_resolve_runs(store):
    a = store.create_run("train", "demo", PRESET, priority=3, run_id="r-260101-000000-aaaa")
    b = store.create_run("train", "demo", PRESET, run_id="r-260101-000000-bbbb")
    assert (a.state, a.priority, a.name) == ("queued", 3, "demo")
    assert b.name == "demo-2"  # names stay unique references
    assert store.resolve_run(a.id).id == a.id
    assert store.resolve_run("demo-2").id == b.id
    assert store.resolve_run("r-260101-000000-b").id == b.id
    assert store.resolve_run("260101-000000-a").id == a.id  # the "r-" may be left out
    with pytest.raises(RunNotFound, match="no run matches"):
        store.resolve_run("nothing-like-it")
    with pytest.raises(RunNotFound, match="matches 2 runs"):
        store.resolve_run("r-")
    assert {r.id for r in store.list_runs()} == {a.id, b.id}
    assert [r.id for r in store.queued_runs()] == [a.id, b.id]  # priority first


def test_state_transitions_are_events(store):
    run = store.create_run("train", "demo", PRESET)
    assert store.set_state(run.id, "running")
    assert store.get_run(run.id).started_at is not None
    store.set_state(run.id, "failed", error="boom", advice="lower the lr")
    failed = store.get_run(run.id)
    assert (failed.state, failed.error, failed.advice) == ("failed", "boom", "lower the lr")
    assert failed.finished_at is not None
    with pytest.raises(InvalidTransition):
        store.set_state(run.id, "completed")
    store.set_state(run.id, "queued")
    again = store.get_run(run.id)
    assert (again.error, again.attempt) == (None, 2)
    texts = [e.text for e in store.events_since(run.id)]
    assert texts[0].startswith("queued")
    assert texts[1:] == ["queued → running", "running → failed: boom\n  → lower the lr", "failed → queued"]
    levels = [e.level for e in store.events_since(run.id)]
    assert levels[2] == "error"


def test_conditional_claim_loses_to_cancel(store):
    run = store.create_run("train", "demo", PRESET)
    assert store.set_state(run.id, "cancelled", expect="queued")
    assert not store.set_state(run.id, "running", expect="queued")
    assert store.get_run(run.id).state == "cancelled"


def test_stop_request_is_cleared_when_the_run_starts(store):
    run = store.create_run("train", "demo", PRESET)
    store.request_stop(run.id, "cancel")
    assert store.stop_requested(run.id) == "cancel"
    store.set_state(run.id, "running")
    assert store.stop_requested(run.id) is None


def test_metrics_since_and_summary_columns(store):
    run = store.create_run("train", "demo", PRESET)
    store.add_metrics(run.id, [(5, "loss", 2.0, 1.0), (5, "lr", 1e-3, 1.0)])
    first = store.metrics_since(run.id)
    assert [(m.step, m.name, m.value) for m in first] == [(5, "loss", 2.0), (5, "lr", 1e-3)]
    store.add_metrics(run.id, [(10, "loss", 1.5, 2.0), (10, "eval_loss", 1.7, 2.0), (20, "eval_loss", 1.9, 3.0),
                               (20, "loss", float("nan"), 3.0)])
    newer = store.metrics_since(run.id, after_id=first[-1].id)
    assert [m.step for m in newer] == [10, 10, 20, 20]
    assert math.isnan(newer[-1].value)
    assert [m.value for m in store.metrics_since(run.id, names=["eval_loss"])] == [1.7, 1.9]
    summary = store.get_run(run.id)
    assert (summary.step, summary.best_eval_loss, summary.best_eval_step) == (20, 1.7, 10)
    assert summary.last_loss is None  # the last loss was NaN
    store.delete_metrics_after(run.id, 10)
    trimmed = store.get_run(run.id)
    assert (trimmed.step, trimmed.last_loss, trimmed.best_eval_loss) == (10, 1.5, 1.7)


def test_checkpoints_keep_best_and_crash_safe_delete(store, tmp_path):
    run = store.create_run("train", "demo", PRESET)
    paths = {}
    for step, loss in ((10, 1.2), (20, 0.9), (30, 1.0)):
        path = tmp_path / "checkpoints" / f"checkpoint-{step}"
        path.mkdir(parents=True)
        (path / "weights.bin").write_bytes(b"x" * step)
        paths[step] = path
        store.add_checkpoint(run.id, step, path, {"eval_loss": loss}, size_bytes=step)
    rows = store.list_checkpoints(run.id)
    assert [(r.step, r.best) for r in rows] == [(10, False), (20, True), (30, False)]
    store.set_checkpoint_keep(run.id, 10, True)
    assert store.list_checkpoints(run.id)[0].keep
    store.delete_checkpoint(run.id, 20)
    assert not paths[20].exists()
    assert [r.step for r in store.list_checkpoints(run.id)] == [10, 30]
    assert not list((tmp_path / "checkpoints").glob(".deleting-*"))


def test_findings_transcripts_eval_results(store):
    run = store.create_run("train", "demo", PRESET)
    store.add_finding(run.id, {"rule": "lr_too_high", "severity": "warning", "title": "loss spikes"})
    assert store.findings(run.id)[0]["rule"] == "lr_too_high"
    assert store.get_run(run.id).findings == 1
    store.add_transcript(run.id, "chat", {"turns": [{"role": "user", "content": "hi"}]})
    store.add_transcript(None, "probe", {"prompt": "x"})
    assert [t.kind for t in store.transcripts(run.id)] == ["chat"]
    assert len(store.transcripts(None)) == 2
    store.add_eval_result(run.id, {"rougeL": 0.5})
    assert store.eval_results(run.id)[0].payload == {"rougeL": 0.5}
    store.delete_run(run.id)
    assert store.get_run(run.id) is None
    assert store.findings(run.id) == [] and store.eval_results(run.id) == []


def _divergence(title: str, step_start: int, step_end: int, severity: str = "warning", kind: str = "rise") -> dict:
    return {"rule": "divergence", "severity": severity, "title": title, "advice": "lower the learning rate",
            "step_start": step_start, "step_end": step_end, "evidence": {"kind": kind, "current_loss": step_end / 10}}


def test_a_finding_reported_again_updates_the_stored_one(store):
    run = store.create_run("train", "demo", PRESET)
    other = store.create_run("train", "other", PRESET)
    assert store.add_finding(run.id, _divergence("22.5 now against its best 8", 16, 16)) is None  # new
    first = store.findings(run.id)[0]
    previous = store.add_finding(run.id, _divergence("36 now against its best 8", 18, 144, "error"))
    assert previous["title"] == "22.5 now against its best 8"
    [finding] = store.findings(run.id)
    assert finding["title"] == "36 now against its best 8" and finding["severity"] == "error"
    assert finding["step_start"] == 16 and finding["step_end"] == 144  # where it began, where it is now
    assert finding["evidence"]["current_loss"] == 14.4
    assert finding["reported_at"] >= first["reported_at"]
    assert store.findings_updated_at(run.id) == finding["reported_at"]  # what a poller compares
    assert store.get_run(run.id).findings == 1
    assert store._read("select severity from findings where run_id = ?", (run.id,)) == [("error",)]
    # Another rule, another kind of the same rule, another run: findings of their own.
    store.add_finding(run.id, {"rule": "spikes", "severity": "info", "title": "1 loss spike(s)", "evidence": {"count": 1}})
    store.add_finding(run.id, _divergence("the loss trends up", 20, 30, kind="trend"))
    store.add_finding(other.id, _divergence("3 now against its best 2", 10, 12))
    assert [f["rule"] for f in store.findings(run.id)] == ["divergence", "spikes", "divergence"]
    assert store.get_run(run.id).findings == 3 and store.get_run(other.id).findings == 1
    # An explicit key wins over the evidence's kind: the trend and the jump of one climb are one finding.
    climb = store.create_run("train", "climb", PRESET)
    store.add_finding(climb.id, {**_divergence("trends up", 36, 58, kind="trend"), "key": "climb"})
    store.add_finding(climb.id, {**_divergence("diverges", 40, 86, "error"), "key": "climb"})
    assert [(f["title"], f["step_start"]) for f in store.findings(climb.id)] == [("diverges", 36)]
    assert store.get_run(climb.id).findings == 1


def test_the_migration_folds_findings_stored_once_per_report(tmp_path, monkeypatch):
    path = tmp_path / "db.sqlite"
    monkeypatch.setattr(store_mod, "MIGRATIONS", store_mod.MIGRATIONS[:2])  # the schema before issue 15
    old = Store(path)
    # A raw insert: create_run reads the run back with today's columns, which the old schema lacks.
    with old._write() as conn:
        conn.execute("insert into runs (id, kind, name, state, preset_yaml, created_at) "
                     "values ('r-old', 'train', 'old', 'queued', ?, 1.0)", (PRESET,))
    run = SimpleNamespace(id="r-old")
    rows = [_divergence("22.5 now", 16, 16), {"rule": "nan", "severity": "error", "title": "nan", "evidence": {}},
            _divergence("30 now", 18, 80), _divergence("36 now", 20, 144, "error")]
    with old._write() as conn:
        for number, finding in enumerate(rows):
            conn.execute("insert into findings (run_id, rule, severity, payload, time) values (?, ?, ?, ?, ?)",
                         (run.id, finding["rule"], finding["severity"], store_mod._dumps(finding), 100.0 + number))
        conn.execute("update runs set findings = ? where id = ?", (len(rows), run.id))
    old.close()
    monkeypatch.undo()
    upgraded = Store(path)
    assert upgraded.schema_version() == store_mod.SCHEMA_VERSION
    findings = upgraded.findings(run.id)
    assert [(f["rule"], f["title"], f["severity"], f.get("step_start"), f.get("step_end")) for f in findings] == [
        ("divergence", "36 now", "error", 16, 144), ("nan", "nan", "error", None, None)]
    assert upgraded.get_run(run.id).findings == 2
    assert upgraded._read("select severity, time, updated_at from findings order by id") == [("error", 100.0, 103.0),
                                                                                             ("error", 101.0, 101.0)]
    upgraded.add_finding(run.id, _divergence("40 now", 22, 150, "error"))  # and it goes on updating
    assert [f["title"] for f in upgraded.findings(run.id)] == ["40 now", "nan"]


def test_threads_share_a_store(store):
    run = store.create_run("train", "demo", PRESET)
    errors = []

    def write(offset):
        try:
            for i in range(50):
                store.add_metrics(run.id, [(offset + i, "loss", 1.0, 0.0)])
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n * 1000,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.metrics_since(run.id)) == 200


def test_another_process_reads_rows_the_writer_committed(store):
    run = store.create_run("train", "demo", PRESET)
    store.add_metrics(run.id, [(1, "loss", 3.0, 0.0)])
    code = (
        "import sys; from jobs.store import Store; s = Store(sys.argv[1]);"
        "print(len(s.metrics_since(sys.argv[2])), s.get_run(sys.argv[2]).last_loss)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(store.path), run.id], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["1", "3.0"]


def test_open_store_is_shared_until_the_workspace_is_replaced(tmp_path):
    import shutil

    from jobs.store import open_store

    root = tmp_path / "ws"
    first = open_store(root)
    assert open_store(root) is first
    first.create_run("train", "old", PRESET)
    shutil.rmtree(root)
    fresh = open_store(root)  # a new workspace at the same path: not the deleted database
    assert fresh is not first and fresh.list_runs() == []


def test_running_time_sums_attempts_and_leaves_out_waiting(store, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(store_mod.time, "time", lambda: clock[0])

    def at(seconds: float, state: str) -> None:
        clock[0] = seconds
        store.set_state("r1", state)

    store.create_run("train", "demo", PRESET, run_id="r1")
    assert store.get_run("r1").running_time(now=50.0) is None  # never ran
    at(100.0, "running")
    assert store.get_run("r1").running_time(now=130.0) == 30.0
    at(196.0, "cancelled")
    at(300.0, "queued")
    assert store.get_run("r1").running_time(now=800.0) == 96.0  # waiting in the queue does not count
    at(900.0, "running")
    assert store.get_run("r1").running_time(now=950.0) == 146.0
    at(1000.0, "completed")
    assert store.get_run("r1").running_time(now=5000.0) == 196.0


def test_runs_from_before_running_time_was_kept_read_their_last_attempt(store):
    store.create_run("train", "old", PRESET, run_id="r-old")
    store.set_state("r-old", "running")
    store.set_state("r-old", "completed")
    store.update_run("r-old", started_at=10.0, finished_at=70.0, active_seconds=0.0)  # as migrated rows are
    assert store.get_run("r-old").running_time() == 60.0
