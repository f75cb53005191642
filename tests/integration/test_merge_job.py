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
    card = (out_dir / "README.md").read_text()  # the merged model carries its model card
    assert "library_name: transformers" in card and "- merge" in card and f"of run {run_id}" in card
    merged = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), str(final))
    ids = torch.tensor([[5, 60, 70, 80, 90]])
    with torch.no_grad():
        assert float((merged(input_ids=ids).logits - reference(input_ids=ids).logits).abs().max()) < 1e-4
    assert store.metrics_since(job.id, names=["merge_max_abs_diff"])


def test_merge_job_runs_a_mergekit_yaml_as_it_is(demo_workspace, tmp_path):
    """`tunebench merge recipe.yml` → the worker → mergekit: a passthrough of two layer ranges of one model."""
    pytest.importorskip("mergekit")
    from presets.importers import import_config
    from transformers import AutoConfig

    ws = demo_workspace
    recipe = tmp_path / "recipe.yml"
    model = ws.models_dir / "tiny"
    recipe.write_text(
        "slices:\n"
        f"  - sources: [{{model: {model}, layer_range: [0, 3]}}]\n"
        f"  - sources: [{{model: {model}, layer_range: [1, 4]}}]\n"
        "merge_method: passthrough\ndtype: float32\n"
    )
    store = open_store(ws)
    job = control.submit(ws, import_config(recipe).preset, start=False)
    assert store.set_state(job.id, "running", expect="queued")
    run_job(ws, job.id)
    job = store.get_run(job.id)
    assert job.state == "completed", job.error
    out_dir = ws.run_dir(job.id) / "merged"
    assert AutoConfig.from_pretrained(out_dir).num_hidden_layers == 6
    report = json.loads((out_dir / "merge_report.json").read_text())
    assert (report["method"], report["merge_method"]) == ("mergekit", "passthrough")
    assert (out_dir / "mergekit_config.yml").is_file() and "- merge" in (out_dir / "README.md").read_text()
    assert store.metrics_since(job.id, names=["tensors_done"])
