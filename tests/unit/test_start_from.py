"""model.start_from through the jobs layer: a run named at submit is frozen to its id, the worker
turns it into the run's result folder, and what cannot work is refused with the key and what to do."""

from __future__ import annotations

import pytest

from helpers.checkpoints import fake_trained_run


def _dpo(ws, start_from: str, model_path: str | None = None):
    from presets import load_preset

    pairs = ws.data_dir / "pairs.jsonl"
    pairs.parent.mkdir(parents=True, exist_ok=True)
    pairs.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n')
    path = model_path or str(ws.models_dir / "tiny")
    return load_preset("dpo", ws.root, [f"model.path={path}", f"data.train_files={pairs}", f"model.start_from={start_from}"])


def test_a_run_named_at_submit_is_frozen_to_its_id_and_resolved_to_its_result(workspace):
    from jobs.control import freeze_preset
    from jobs.store import open_store
    from jobs.targets import resolve_train_preset

    (workspace.models_dir / "tiny").mkdir(parents=True)
    run_id = fake_trained_run(workspace, name="my-sft")
    store = open_store(workspace)
    frozen = freeze_preset(workspace, _dpo(workspace, "my-sft"), store=store)
    assert frozen.model.start_from == run_id
    resolved = resolve_train_preset(frozen, workspace, store=store)
    assert resolved.model.start_from == str(workspace.run_dir(run_id) / "final")
    # A folder stays as it is.
    folder = str(workspace.run_dir(run_id) / "checkpoints" / "checkpoint-20")
    assert resolve_train_preset(_dpo(workspace, folder), workspace, store=store).model.start_from == folder


def test_an_unknown_run_is_refused_at_submit_naming_the_key(workspace):
    from jobs.control import freeze_preset
    from jobs.store import open_store
    from presets import PresetError

    with pytest.raises(PresetError) as caught:
        freeze_preset(workspace, _dpo(workspace, "no-such-run"), store=open_store(workspace))
    assert "model.start_from" in str(caught.value) and "no-such-run" in str(caught.value)


def test_an_adapter_on_another_base_is_refused_when_the_job_starts(workspace):
    from jobs.store import open_store
    from jobs.targets import TargetError, resolve_train_preset

    run_id = fake_trained_run(workspace, name="my-sft")
    with pytest.raises(TargetError) as caught:
        resolve_train_preset(_dpo(workspace, run_id, model_path="org/another-model"), workspace, store=open_store(workspace))
    assert "an adapter only fits the base it was trained on" in str(caught.value)
