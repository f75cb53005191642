"""A merge job through the jobs path: `tunebench merge RUN` → worker → jobs.targets → run_merge."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from helpers.checkpoints import fake_trained_run  # noqa: E402

from jobs import control  # noqa: E402
from jobs.store import open_store  # noqa: E402
from jobs.targets import merge_preset_for_run, merged_models_for  # noqa: E402
from jobs.worker import run_job  # noqa: E402


def test_merge_job_folds_a_runs_adapter_into_its_base(demo_workspace):
    import shutil

    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ws = demo_workspace
    base_dir = ws.models_dir / "tiny"
    run_id = fake_trained_run(ws)
    final = ws.run_dir(run_id) / "final"
    shutil.rmtree(final)
    torch.manual_seed(2)
    adapter = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    adapter.save_pretrained(final)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(final)

    store = open_store(ws)
    preset = merge_preset_for_run(store, ws, run_id, dtype="fp32")
    job = control.submit(ws, preset, start=False)
    assert store.set_state(job.id, "running", expect="queued")
    run_job(ws, job.id)
    job = store.get_run(job.id)
    assert job.state == "completed", job.error

    out_dir = ws.run_dir(run_id) / "merged" / job.id
    assert job.info["out_dir"] == str(out_dir) and merged_models_for(ws, run_id) == [out_dir]
    report = json.loads((out_dir / "merge_report.json").read_text())
    assert report["max_abs_diff"] < 1e-4 and report["base_model"] == str(base_dir)
    merged = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), str(final))
    ids = torch.tensor([[5, 60, 70, 80, 90]])
    with torch.no_grad():
        assert float((merged(input_ids=ids).logits - reference(input_ids=ids).logits).abs().max()) < 1e-4
    assert store.metrics_since(job.id, names=["merge_max_abs_diff"])
