"""Checkpoints: listing with markers, keep, delete (folder and row together), crash repair, export."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from helpers.checkpoints import EVAL_LOSS, fake_trained_run, write_checkpoint

from jobs import checkpoints as ckpt
from jobs.store import open_store

REPO_ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.fixture
def trained(workspace):
    return workspace, open_store(workspace), fake_trained_run(workspace)


def _disk_steps(ws, run_id):
    from engine.artifacts import RunArtifacts

    return sorted(RunArtifacts(ws.run_dir(run_id)).checkpoints())


def _row_steps(store, run_id):
    return [row.step for row in store.list_checkpoints(run_id)]


def test_listing_shows_losses_sizes_and_markers(trained):
    ws, store, run_id = trained
    infos = ckpt.list_checkpoints(store, ws, run_id)
    assert [i.step for i in infos] == [10, 20, 30]
    assert [i.eval_loss for i in infos] == [EVAL_LOSS[s] for s in (10, 20, 30)]
    assert [i.train_loss for i in infos] == [2.4, 1.8, 1.2]
    assert [i.best for i in infos] == [False, True, False]  # lowest eval loss, not the last
    assert [i.latest for i in infos] == [False, False, True]
    assert all(i.size_bytes == 6000 and i.recorded and i.on_disk for i in infos)
    assert infos[1].protected and not infos[0].protected
    assert "★best" in infos[1].markers()


def test_a_folder_without_a_row_is_listed_from_its_trainer_state(trained):
    ws, store, run_id = trained
    write_checkpoint(ws.run_dir(run_id) / "checkpoints" / "checkpoint-40", 40, eval_loss=0.9, train_loss=0.8)
    info = ckpt.list_checkpoints(store, ws, run_id)[-1]
    assert (info.step, info.eval_loss, info.train_loss, info.recorded) == (40, 0.9, 0.8, False)
    assert info.best and info.latest and info.size_bytes > 0


def test_keep_writes_the_row_and_the_marker_the_engine_reads(trained):
    from engine.artifacts import KEEP_MARKER, RunArtifacts

    ws, store, run_id = trained
    info = ckpt.set_keep(store, ws, run_id, 10, True)
    assert info.keep and info.protected
    assert RunArtifacts(ws.run_dir(run_id)).is_kept(10)
    assert [r.keep for r in store.list_checkpoints(run_id)] == [True, False, False]
    ckpt.set_keep(store, ws, run_id, 10, False)
    assert not (ws.run_dir(run_id) / "checkpoints" / "checkpoint-10" / KEEP_MARKER).exists()
    assert not any(r.keep for r in store.list_checkpoints(run_id))
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint at step 15\n  → its checkpoints: 10, 20, 30"):
        ckpt.set_keep(store, ws, run_id, 15, True)


def test_delete_removes_folder_and_row_together(trained):
    ws, store, run_id = trained
    ckpt.delete_checkpoint(store, ws, run_id, 20)
    assert _disk_steps(ws, run_id) == _row_steps(store, run_id) == [10, 30]
    assert not list((ws.run_dir(run_id) / "checkpoints").glob(".deleting-*"))
    # The best moves to the best that is left.
    assert [i.step for i in ckpt.list_checkpoints(store, ws, run_id) if i.best] == [30]


def test_delete_of_an_unrecorded_folder(trained):
    ws, store, run_id = trained
    write_checkpoint(ws.run_dir(run_id) / "checkpoints" / "checkpoint-40", 40)
    ckpt.delete_checkpoint(store, ws, run_id, 40)
    assert _disk_steps(ws, run_id) == [10, 20, 30]


CRASH_SCRIPT = textwrap.dedent("""
    import os, sys
    import jobs.store as store_module
    from jobs import checkpoints as ckpt
    from jobs.store import open_store
    from jobs.workspace import Workspace

    ws = Workspace(__import__("pathlib").Path(sys.argv[1]))
    where = sys.argv[3]
    if where == "before-row":
        # The folder is renamed to its tombstone; the process dies before the row is deleted.
        original = store_module.Store._write
        def dying_write(self):
            os._exit(9)
        store_module.Store._write = dying_write
    else:
        # The row is gone; the process dies before the files are.
        store_module.shutil.rmtree = lambda *a, **k: os._exit(9)
    ckpt.delete_checkpoint(open_store(ws), ws, sys.argv[2], 20)
""")


@pytest.mark.parametrize("where", ["before-row", "before-files"])
def test_a_crash_during_delete_is_repaired_at_the_next_start(trained, where):
    ws, store, run_id = trained
    result = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(ws.root), run_id, where], cwd=REPO_ROOT)
    assert result.returncode == 9, "the delete was meant to die halfway"
    tombstones = list((ws.run_dir(run_id) / "checkpoints").glob(".deleting-checkpoint-20-*"))
    assert len(tombstones) == 1, "the folder is out of the checkpoint-N pattern: nothing loads it any more"
    assert 20 not in _disk_steps(ws, run_id)
    assert (20 in _row_steps(store, run_id)) == (where == "before-row")

    done = ckpt.repair_checkpoints(store, ws)
    assert any("finished deleting" in line for line in done)
    assert (where == "before-row") == any("forgot checkpoint 20" in line for line in done)
    assert _disk_steps(ws, run_id) == _row_steps(store, run_id) == [10, 30]
    assert not list((ws.run_dir(run_id) / "checkpoints").glob(".deleting-*"))
    assert ckpt.repair_checkpoints(store, ws) == [], "a second repair has nothing to do"


def test_repair_records_unreported_folders_and_forgets_vanished_ones(trained):
    import shutil

    ws, store, run_id = trained
    shutil.rmtree(ws.run_dir(run_id) / "checkpoints" / "checkpoint-10")  # removed by hand
    folder = write_checkpoint(ws.run_dir(run_id) / "checkpoints" / "checkpoint-40", 40, eval_loss=1.1)
    (folder / "tunebench-keep").write_text("")  # kept, but the job died before reporting the checkpoint
    done = ckpt.repair_checkpoints(store, ws, [run_id])
    assert len(done) == 2
    rows = store.list_checkpoints(run_id)
    assert [r.step for r in rows] == [20, 30, 40]
    assert rows[-1].metrics == {"eval_loss": 1.1} and rows[-1].keep


def test_repair_leaves_a_running_runs_new_folders_to_its_job(workspace):
    store = open_store(workspace)
    run_id = fake_trained_run(workspace, state="running", final=False)
    write_checkpoint(workspace.run_dir(run_id) / "checkpoints" / "checkpoint-40", 40)
    assert ckpt.repair_checkpoints(store, workspace) == []
    assert _row_steps(store, run_id) == [10, 20, 30]


def test_export_copies_the_adapter_without_trainer_state(trained, tmp_path):
    from jobs.targets import run_target

    ws, store, run_id = trained
    target = run_target(store, ws, run_id, 20)
    copied = ckpt.export_weights(target.weights_dir, tmp_path / "out")
    assert sorted(copied) == ["README.md", "adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(copied)
    # the model card says which checkpoint of which run this is
    assert f"of run {run_id}, checkpoint 20" in (tmp_path / "out" / "README.md").read_text()
    with pytest.raises(ckpt.CheckpointError, match="not empty"):
        ckpt.export_weights(target.weights_dir, tmp_path / "out")
