"""Run → paths resolution (jobs.targets) and the `checkpoints / eval / merge / export` verbs."""

from __future__ import annotations

import pytest
from helpers.checkpoints import fake_trained_run

from jobs import targets
from jobs.store import open_store
from presets import load_preset_text
from presets.schema import EvalPreset, MergePreset
from tui.cli import main


def flat(text: str) -> str:
    """Rich wraps long messages at the console width; compare words, not line breaks."""
    return " ".join(text.split())


def cli(ws, *args) -> int:
    return main(["-w", str(ws.root), *args])


# --------------------------------------------------------------------------- targets


def test_run_target_points_at_final_or_a_checkpoint(workspace):
    store = open_store(workspace)
    run_id = fake_trained_run(workspace)
    final = targets.run_target(store, workspace, "trained")  # by name
    assert final.weights_dir == workspace.run_dir(run_id) / "final" and final.is_adapter
    assert final.base_model.path == str(workspace.models_dir / "tiny")
    assert final.data.val_ratio == 0.1
    step = targets.run_target(store, workspace, run_id[:12], 20)  # by id prefix
    assert step.weights_dir == workspace.run_dir(run_id) / "checkpoints" / "checkpoint-20"
    with pytest.raises(targets.TargetError, match="no checkpoint at step 25; its checkpoints: 10, 20, 30"):
        targets.run_target(store, workspace, run_id, 25)
    with pytest.raises(targets.TargetError, match="no run matches 'nope'"):
        targets.run_target(store, workspace, "nope")


def test_an_unfinished_run_names_its_checkpoints(workspace):
    store = open_store(workspace)
    run_id = fake_trained_run(workspace, final=False, state="interrupted")
    with pytest.raises(targets.TargetError, match=r"no final result .* --checkpoint STEP \(its checkpoints: 10, 20, 30\)"):
        targets.run_target(store, workspace, run_id)


def test_resolve_eval_preset_fills_model_adapter_and_data(workspace):
    store = open_store(workspace)
    run_id = fake_trained_run(workspace)
    preset = EvalPreset(name="e", run="trained", checkpoint=10, num_samples=3)
    resolved = targets.resolve_eval_preset(preset, workspace, store=store)
    # jobs/worker.py calls it as resolver(preset, workspace): the same result.
    assert targets.resolve_eval_preset(preset, workspace) == resolved  # opens the store itself
    assert resolved.run == run_id
    assert resolved.adapter == str(workspace.run_dir(run_id) / "checkpoints" / "checkpoint-10")
    assert resolved.model.path == str(workspace.models_dir / "tiny")
    assert resolved.data.val_ratio == 0.1 and resolved.num_samples == 3
    explicit = targets.resolve_eval_preset(preset.model_copy(update={"adapter": "/x"}), workspace, store=store)
    assert explicit.adapter == "/x", "a field the preset sets wins over the run's"
    no_run = EvalPreset(name="e", model={"path": "/m"}, adapter="/a")
    assert targets.resolve_eval_preset(no_run, workspace, store=store) is no_run


def test_resolve_merge_preset_and_what_cannot_be_merged(workspace):
    store = open_store(workspace)
    run_id = fake_trained_run(workspace)
    resolved = targets.resolve_merge_preset(MergePreset(name="m", run=run_id), workspace, store=store)
    assert resolved.adapter == str(workspace.run_dir(run_id) / "final")
    assert resolved.base_model == str(workspace.models_dir / "tiny")
    full = fake_trained_run(workspace, method="full", name="full")
    with pytest.raises(targets.TargetError, match="full model, there is no adapter to merge"):
        targets.resolve_merge_preset(MergePreset(name="m", run=full), workspace, store=store)


def test_default_output_folders(workspace):
    preset = EvalPreset(name="e", run="r-1", model=None)
    assert targets.eval_output_dir(workspace, preset, "r-2") == workspace.run_dir("r-1") / "evals" / "r-2"
    merge = MergePreset(name="m", run="r-1")
    assert targets.merge_output_dir(workspace, merge, "r-3") == workspace.run_dir("r-1") / "merged" / "r-3"
    assert targets.merge_output_dir(workspace, merge.model_copy(update={"output": "/out"}), "r-3").as_posix() == "/out"


def test_eval_results_are_found_from_the_evaluated_run(workspace):
    store = open_store(workspace)
    run_id = fake_trained_run(workspace)
    job = store.create_run("eval", "eval-trained", "name: x\n")
    store.add_eval_result(job.id, {"target_run": run_id, "result": {"status": "completed"}})
    store.add_eval_result(run_id, {"result": {"status": "completed"}})
    store.add_eval_result(job.id, {"target_run": "someone-else"})
    assert len(targets.eval_results_for(store, run_id)) == 2


# --------------------------------------------------------------------------- verbs


def test_checkpoints_verb_lists_with_markers(workspace, capsys):
    run_id = fake_trained_run(workspace)
    assert cli(workspace, "checkpoints", "trained") == 0
    out = capsys.readouterr().out
    assert run_id in out and "★ best" in out and "latest" in out
    lines = [line for line in out.splitlines() if "│" in line and line.split("│")[1].strip() in ("10", "20", "30")]
    assert [line.split("│")[1].strip() for line in lines] == ["10", "20", "30"]
    assert "★ best" in lines[1] and "1.5" in lines[1] and "5.9 KiB" in lines[1]


def test_keep_unkeep_and_delete_verbs(workspace, capsys, monkeypatch):
    store = open_store(workspace)
    run_id = fake_trained_run(workspace)
    assert cli(workspace, "checkpoints", run_id, "--keep", "10") == 0
    assert store.list_checkpoints(run_id)[0].keep
    # Not a terminal and no --yes: refused, with the way out named.
    assert cli(workspace, "checkpoints", run_id, "--delete", "30") == 2
    assert "pass --yes" in flat(capsys.readouterr().err)
    # A kept checkpoint asks twice; declining the second question keeps it.
    answers = iter([True, False])
    questions = []

    def fake_confirm(question, assume_yes):
        questions.append(question)
        return next(answers)

    monkeypatch.setattr("tui.commands.ckpt_cmd.confirm", fake_confirm)
    assert cli(workspace, "checkpoints", run_id, "--delete", "10") == 1
    assert len(questions) == 2 and "kept" in questions[1]
    assert [r.step for r in store.list_checkpoints(run_id)] == [10, 20, 30]
    # An ordinary checkpoint asks once.
    answers, questions[:] = iter([True]), []
    assert cli(workspace, "checkpoints", run_id, "--delete", "30") == 0
    assert len(questions) == 1
    assert [r.step for r in store.list_checkpoints(run_id)] == [10, 20]
    assert not (workspace.run_dir(run_id) / "checkpoints" / "checkpoint-30").exists()
    monkeypatch.undo()
    assert cli(workspace, "checkpoints", run_id, "--unkeep", "10") == 0
    assert cli(workspace, "checkpoints", run_id, "--delete", "10", "--yes") == 0
    assert [r.step for r in store.list_checkpoints(run_id)] == [20]
    assert cli(workspace, "checkpoints", run_id, "--delete", "99", "--yes") == 2
    assert "no checkpoint at step 99" in flat(capsys.readouterr().err)


def test_eval_and_merge_verbs_queue_jobs_built_from_the_run(workspace, capsys, tmp_path):
    store = open_store(workspace)
    run_id = fake_trained_run(workspace)
    data = tmp_path / "rows.json"
    data.write_text("[]")
    assert cli(workspace, "eval", "trained", "--checkpoint", "20", "--samples", "7", "--data", str(data), "--no-engine") == 0
    assert cli(workspace, "merge", run_id, "--dtype", "fp16", "--no-engine") == 0
    eval_run = next(r for r in store.list_runs(kind="eval"))
    merge_run = next(r for r in store.list_runs(kind="merge"))
    frozen_eval = load_preset_text(eval_run.preset_yaml)
    assert (frozen_eval.run, frozen_eval.checkpoint, frozen_eval.num_samples) == (run_id, 20, 7)
    assert frozen_eval.data.train_files == [str(data)] and frozen_eval.data.val_ratio == 0
    frozen_merge = load_preset_text(merge_run.preset_yaml)
    assert (frozen_merge.method, frozen_merge.run, frozen_merge.dtype) == ("adapter", run_id, "fp16")
    assert eval_run.state == merge_run.state == "queued"
    assert "queued eval run" in capsys.readouterr().out


def test_eval_and_merge_verbs_explain_bad_targets(workspace, capsys):
    fake_trained_run(workspace, final=False, state="interrupted")
    assert cli(workspace, "eval", "trained", "--no-engine") == 2
    assert "pick a checkpoint with --checkpoint STEP" in flat(capsys.readouterr().err)
    assert cli(workspace, "merge", "demo", "--no-engine") == 2  # a train preset, no run by that name
    assert "it is a train preset" in flat(capsys.readouterr().err)
    full = fake_trained_run(workspace, method="full", name="full")
    assert cli(workspace, "merge", full, "--no-engine") == 2
    assert "no adapter to merge" in flat(capsys.readouterr().err)


def test_eval_verb_takes_an_eval_preset(workspace, capsys):
    run_id = fake_trained_run(workspace)
    (workspace.presets_dir / "my-eval.yaml").write_text(f"kind: eval\nname: my-eval\nrun: {run_id}\nnum_samples: 4\n")
    assert cli(workspace, "eval", "my-eval", "--no-engine", "--set", "max_new_tokens=16") == 0
    frozen = load_preset_text(open_store(workspace).list_runs(kind="eval")[0].preset_yaml)
    assert (frozen.run, frozen.num_samples, frozen.max_new_tokens) == (run_id, 4, 16)


def test_export_verb(workspace, capsys, tmp_path):
    fake_trained_run(workspace)
    assert cli(workspace, "export", "trained", str(tmp_path / "exp"), "--checkpoint", "10") == 0
    assert (tmp_path / "exp" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "exp" / "optimizer.pt").exists()
    assert "exported the adapter" in capsys.readouterr().out
    assert cli(workspace, "export", "trained", str(tmp_path / "exp")) == 2
    assert "not empty" in flat(capsys.readouterr().err)
