"""The keep policy during a real short run: keep the last N and the best by eval loss; the store's
rows follow the disk as the engine prunes (DbSink.checkpoint_removed), and nothing else is left."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("engine.train")

from jobs import checkpoints as ckpt  # noqa: E402
from jobs import control  # noqa: E402
from jobs.store import open_store  # noqa: E402
from jobs.worker import run_job  # noqa: E402

# A high learning rate on 6 rows makes the eval loss jump about, so the best is usually not the last
# checkpoint (on the CPU: best at step 10 of 12, and step 2 is kept as the best until step 10 beats it).
SHORT = [
    "method.name=full", "training.lr=2e-2", "training.scheduler=constant", "training.warmup_ratio=0",
    "training.max_steps=12", "training.logging_steps=2", "training.eval_steps=2", "training.save_steps=2",
    "data.val_ratio=0.25",
]


@pytest.mark.slow
@pytest.mark.parametrize("keep_last,keep_best", [(1, True), (2, False)])
def test_keep_last_n_and_best_prune_during_the_run(demo_workspace, keep_last, keep_best):
    from engine.artifacts import RunArtifacts
    from engine.demo_data import demo_rows

    ws = demo_workspace
    rows_file = ws.data_dir / "few_capitals.json"
    rows_file.write_text(json.dumps(demo_rows()[:8]))
    overrides = [f"data.train_files={rows_file}", *SHORT, f"training.keep_last={keep_last}", f"training.keep_best={keep_best}"]
    run = control.submit(ws, "demo", overrides=overrides, start=False)
    store = open_store(ws)
    assert store.set_state(run.id, "running", expect="queued")
    run_job(ws, run.id)
    assert store.get_run(run.id).state == "completed", store.get_run(run.id).error

    artifacts = RunArtifacts(ws.run_dir(run.id))
    records = [json.loads(line) for line in artifacts.metrics_file.read_text().splitlines()]
    saved = [r["step"] for r in records if r["type"] == "checkpoint"]
    removed = [r["step"] for r in records if r["type"] == "checkpoint_removed"]
    assert saved == [2, 4, 6, 8, 10, 12]
    assert removed, "checkpoints were pruned while the run went on, not only at the end"
    eval_losses = {r["step"]: r["eval_loss"] for r in records if r["type"] == "metrics" and "eval_loss" in r}
    best = min(eval_losses, key=lambda s: (eval_losses[s], s))
    expected = set(saved[-keep_last:]) | ({best} if keep_best else set())
    assert set(artifacts.checkpoints()) == expected
    assert {row.step for row in store.list_checkpoints(run.id)} == expected, "store rows follow the disk"
    assert sorted(removed) == sorted(set(saved) - expected)
    listed = ckpt.list_checkpoints(store, ws, run.id)
    assert [c.step for c in listed if c.best] == [min(expected, key=lambda s: (eval_losses[s], s))]
    assert ckpt.repair_checkpoints(store, ws) == [], "nothing for a repair to fix after a clean run"


@pytest.mark.slow
def test_a_checkpoint_the_user_keeps_mid_run_survives_the_keep_policy(demo_workspace):
    from engine.artifacts import RunArtifacts
    from engine.demo_data import demo_rows
    from engine.sink import MultiSink, Sink
    from engine.train import train
    from jobs.db_sink import DbSink
    from presets import load_preset_text

    ws = demo_workspace
    rows_file = ws.data_dir / "few_capitals.json"
    rows_file.write_text(json.dumps(demo_rows()[:8]))
    overrides = [f"data.train_files={rows_file}", *SHORT, "training.keep_last=1", "training.keep_best=false"]
    run = control.submit(ws, "demo", overrides=overrides, start=False)
    store = open_store(ws)
    assert store.set_state(run.id, "running", expect="queued")

    class UserKeepsTheFirst(Sink):
        """What a user does from the Checkpoints screen while the run trains: keep the first checkpoint."""

        def checkpoint(self, step, path, metrics):
            if step == 2:
                ckpt.set_keep(store, ws, run.id, step, True)

    db_sink = DbSink(store, run.id)
    try:
        result = train(load_preset_text(run.preset_yaml), ws.run_dir(run.id), MultiSink(db_sink, UserKeepsTheFirst()))
    finally:
        db_sink.close()
    assert result.status == "completed"
    assert set(RunArtifacts(ws.run_dir(run.id)).checkpoints()) == {2, 12}
    rows = store.list_checkpoints(run.id)
    assert [(r.step, r.keep) for r in rows] == [(2, True), (12, False)]
