"""Model cards (engine/card.py): the Hugging Face metadata and the sections a result folder's
README.md carries, read from the run folder's own records."""

from __future__ import annotations

import json

import pytest
import yaml

from engine.card import model_card, result_origin, write_model_card


@pytest.fixture
def run_dir(tmp_path):
    from presets import dump_preset, load_preset

    run = tmp_path / "runs" / "r-1"
    preset = load_preset("lora", None, ["model.path=Qwen/Qwen2.5-0.5B-Instruct", "data.train_files=data/mine.json",
                                        "method.lora.r=16", "training.lr=1e-4"])
    (run / "final").mkdir(parents=True)
    (run / "preset.yaml").write_text(dump_preset(preset))
    (run / "final" / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "base_model_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct"}))
    records = [
        {"type": "run_started", "train_samples": 900, "eval_samples": 100, "trainable_params": 4096, "total_params": 500000},
        {"type": "metrics", "step": 10, "loss": 2.5, "epoch": 0.5},
        {"type": "metrics", "step": 10, "eval_loss": 2.25},
        {"type": "metrics", "step": 20, "loss": 1.75, "epoch": 1.0},
        {"type": "metrics", "step": 20, "eval_loss": 2.375},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"type": "metr')
    results = {
        "status": "completed", "target": {"run": "r-1", "checkpoint": None},
        "dataset": {"files": ["data/mine.json"], "split": "validation", "rows": 100},
        "sides": ["base", "finetuned"],
        "loss": {"base": {"eval_loss": 3.0, "perplexity": 20.1}, "finetuned": {"eval_loss": 2.25, "perplexity": 9.49}},
        "generation": {"base": {"exact_match": 0.1, "rouge_l": 0.2}, "finetuned": {"exact_match": 0.6, "rouge_l": 0.7}},
    }
    (run / "evals" / "e-1").mkdir(parents=True)
    (run / "evals" / "e-1" / "results.json").write_text(json.dumps(results))
    return run


def _metadata(card_text: str) -> dict:
    assert card_text.startswith("---\n")
    return yaml.safe_load(card_text.split("---\n")[1])


def test_final_adapter_card_has_metadata_method_data_figures_evals_and_loading(run_dir):
    path = write_model_card(run_dir / "final", **result_origin(run_dir / "final"))
    text = path.read_text()
    meta = _metadata(text)
    assert path.name == "README.md"
    assert meta["base_model"] == "Qwen/Qwen2.5-0.5B-Instruct"
    assert meta["library_name"] == "peft"
    assert {"tunebench", "lora", "peft"} <= set(meta["tags"])
    metrics = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics["eval_loss"] == 2.25 and metrics["exact_match"] == 0.6  # the fine-tune's, not the base's
    assert "| r | 16 |" in text and "| lr | 0.0001 |" in text  # method parameters
    assert "`data/mine.json`" in text and "900 training samples, 100 validation samples" in text
    assert "| optimizer steps | 20 |" in text and "| final train loss | 1.75 |" in text
    assert "| best eval loss | 2.25 (step 10) |" in text  # the best, not the last
    assert "| exact match | 0.1 | 0.6 |" in text
    assert "PeftModel.from_pretrained(base" in text and 'from_pretrained("Qwen/Qwen2.5-0.5B-Instruct")' in text
    # huggingface_hub reads it back
    from huggingface_hub import ModelCard

    assert ModelCard.load(path).data.base_model == "Qwen/Qwen2.5-0.5B-Instruct"


def test_full_model_card_loads_with_transformers_and_a_local_base_is_not_claimed_as_a_hub_id(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    text = str(model_card(folder, merge={"method": "adapter", "base_model": str(tmp_path), "dtype": "bf16"}))
    meta = _metadata(text)
    assert meta["library_name"] == "transformers" and "base_model" not in meta
    assert "merge" in meta["tags"] and "AutoModelForCausalLM.from_pretrained" in text and "PeftModel" not in text
    assert "| dtype | bf16 |" in text


def test_checkpoint_results_are_found_from_their_folder(run_dir):
    checkpoint = run_dir / "checkpoints" / "checkpoint-10"
    checkpoint.mkdir(parents=True)
    assert result_origin(checkpoint) == {"run_dir": run_dir.resolve(), "checkpoint": 10}
    text = str(model_card(checkpoint, **result_origin(checkpoint)))
    assert "checkpoint 10" in text and "model-index" not in text  # the final result's evaluation is not this one's
