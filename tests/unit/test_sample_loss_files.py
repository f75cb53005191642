"""Per-sample loss files (engine.sample_loss), their reading (jobs.samples) and `tunebench samples`,
on files written here: no model, no training."""

from __future__ import annotations

import json

import pytest

from engine.sample_loss import SampleLoss, read_losses, saved_steps, step_file, write_losses


def sample(index: int, loss: float, split: str = "val") -> SampleLoss:
    return SampleLoss(split, index, loss, 5, f"question {index} answer {index}", f"answer {index}")


# Base (step 0): sample 2 is easy for the base; after training it is the one whose loss rose.
BASE = [sample(0, 3.0), sample(1, 2.5), sample(2, 0.5), sample(0, 2.0, "train")]
STEP_4 = [sample(0, 1.0), sample(1, 2.9), sample(2, 1.5), sample(0, 0.2, "train")]
STEP_8 = [sample(0, 0.8), sample(1, 2.8), sample(2, 1.9), sample(0, 0.1, "train")]


def fill(run_dir):
    for step, losses in ((0, BASE), (4, STEP_4), (8, STEP_8)):
        write_losses(run_dir, step, losses)


def test_files_round_trip_and_list_their_steps(tmp_path):
    fill(tmp_path)
    assert saved_steps(tmp_path) == [0, 4, 8]
    assert read_losses(tmp_path, 4) == STEP_4
    assert saved_steps(tmp_path / "nothing") == []


def test_a_damaged_line_is_named(tmp_path):
    from engine.errors import EngineError

    fill(tmp_path)
    path = step_file(tmp_path, 4)
    path.write_text(path.read_text() + '{"split": "val"}\n')
    with pytest.raises(EngineError) as caught:
        read_losses(tmp_path, 4)
    assert f"{path}:5" in caught.value.message and caught.value.advice


def test_worst_and_rose_at_the_last_step_by_default(tmp_path):
    from jobs.samples import samples_view

    fill(tmp_path)
    view = samples_view(tmp_path, "r-1", worst=2, rose=2)
    assert view.step == 8 and view.steps == [0, 4, 8] and view.samples == 4 and view.has_base
    assert [(r.split, r.index) for r in view.worst] == [("val", 1), ("val", 2)]
    # val 2: 0.5 → 1.9 (+1.4); val 1: 2.5 → 2.8 (+0.3); the others fell.
    assert [(r.index, round(r.rise, 6)) for r in view.rose] == [(2, 1.4), (1, 0.3)]
    assert len(samples_view(tmp_path, "r-1", rose=10).rose) == 2  # the samples whose loss fell are not listed
    assert view.mean_loss == pytest.approx((0.8 + 2.8 + 1.9 + 0.1) / 4)


def test_an_earlier_step_and_the_mistakes(tmp_path):
    from jobs.samples import SamplesError, samples_view

    fill(tmp_path)
    assert [r.loss for r in samples_view(tmp_path, "r-1", step=4, worst=1).worst] == [2.9]
    with pytest.raises(SamplesError) as caught:
        samples_view(tmp_path, "r-1", step=5)
    assert "step 5" in caught.value.message and "0, 4, 8" in caught.value.advice
    with pytest.raises(SamplesError) as caught:
        samples_view(tmp_path / "empty", "r-2")
    assert "no per-sample losses yet" in caught.value.message and "val_ratio" in caught.value.advice


def test_without_base_losses_nothing_rose(tmp_path):
    from jobs.samples import samples_view

    write_losses(tmp_path, 4, STEP_4)
    view = samples_view(tmp_path, "r-1")
    assert not view.has_base and view.rose == [] and view.worst[0].base_loss is None


def _run_with_losses(workspace) -> str:
    from jobs.store import open_store

    run = open_store(workspace).create_run("train", "tuned", "name: tuned\n")
    fill(workspace.run_dir(run.id))
    return run.id


def test_cli_lists_both_tables(cli, workspace):
    run_id = _run_with_losses(workspace)
    code, out = cli("samples", "tuned", "--worst", "2", "--rose", "1")
    assert code == 0, out
    assert f"per-sample losses of run {run_id} at step 8: 4 samples" in out
    assert "hardest 2" in out and "val 1 2.8000 2.5000" in out
    assert "loss rose most since the base model (1)" in out and "val 2 +1.4000 0.5000 1.9000" in out


def test_cli_json(cli, workspace):
    _run_with_losses(workspace)
    code, out = cli("samples", "tuned", "--step", "4", "--worst", "1", "--rose", "0", "--json")
    assert code == 0, out
    data = json.loads(out)
    assert data["step"] == 4 and data["rose"] == [] and data["worst"][0]["loss"] == 2.9 and data["worst"][0]["base_loss"] == 2.5


def test_cli_says_what_to_do_without_losses(cli, workspace):
    from jobs.store import open_store

    open_store(workspace).create_run("train", "fresh", "name: fresh\n")
    code, out = cli("samples", "fresh")
    assert code != 0 and "no per-sample losses yet" in out and "Traceback" not in out


class FakeTrainer:
    def __init__(self):
        self.callbacks = []

    def add_callback(self, callback):
        self.callbacks.append(callback)


def _attach(stage: str, *, eval_rows: int, train_subset: int):
    from types import SimpleNamespace

    from datasets import Dataset

    from engine.sample_loss import attach_sample_losses
    from helpers.training import RecordingSink

    rows = Dataset.from_dict({"input_ids": [[1, 2, 3]] * 4, "labels": [[-100, 2, 3]] * 4})
    preset = SimpleNamespace(stage=stage, training=SimpleNamespace(sample_losses_train=train_subset, batch_size=2),
                             data=SimpleNamespace(max_length=16))
    bundle = SimpleNamespace(train=rows, eval=rows.select(range(eval_rows)) if eval_rows else None)
    trainer, sink = FakeTrainer(), RecordingSink()
    attach_sample_losses(trainer, preset, "run", sink, bundle, tokenizer=None)
    return trainer.callbacks


def test_attached_to_sft_runs_with_something_to_measure():
    (callback,) = _attach("sft", eval_rows=2, train_subset=3)
    assert [(split, index) for split, index, *_ in callback.samples.rows] == [("val", 0), ("val", 1), ("train", 0), ("train", 1), ("train", 2)]
    assert len(_attach("sft", eval_rows=0, train_subset=2)) == 1  # a training subset alone
    assert _attach("sft", eval_rows=0, train_subset=0) == []  # nothing to measure
    assert _attach("dpo", eval_rows=2, train_subset=2) == []  # preference stages score pairs, not samples


def test_the_setting_is_bounded():
    from presets import PresetError, load_preset

    with pytest.raises(PresetError) as caught:
        load_preset("demo", None, ["training.sample_losses_train=5000"])
    assert "training.sample_losses_train" in str(caught.value)
