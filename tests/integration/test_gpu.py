"""The engine on a CUDA GPU: bf16 (or fp16 with loss scaling), QLoRA, and the memory metrics.
Skipped without a GPU (tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch

from helpers.training import RecordingSink, jsonl_records, logits, tiny_preset

MEMORY_METRICS = ("mem_allocated", "mem_peak_allocated", "mem_peak_reserved")


@pytest.mark.cuda
def test_auto_precision_trains_in_bf16_where_the_gpu_has_it(tiny_model_dir, demo_data_file, tmp_path):
    from engine.train import train

    sink = RecordingSink()
    result = train(tiny_preset("lora", tiny_model_dir, demo_data_file, "training.max_steps=4"), tmp_path / "run", sink)
    started = sink.of("run_started")[0][0]
    expected = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    assert result.status == "completed" and started["precision"] == expected and started["device"].startswith("cuda")
    # The frozen base is loaded in the training precision; the adapter weights stay fp32.
    base_weight = result.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
    assert base_weight.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[expected]
    assert all(p.dtype == torch.float32 for p in result.model.parameters() if p.requires_grad)


@pytest.mark.cuda
def test_qlora_on_the_gpu_reloads_to_the_same_logits(tiny_model_dir, demo_data_file, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from engine.train import train

    preset = tiny_preset("qlora", tiny_model_dir, demo_data_file, "training.max_steps=4", "model.quantization.compute_dtype=bf16")
    result = train(preset, tmp_path / "run", RecordingSink())
    assert result.status == "completed"
    q_proj = result.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert type(q_proj).__name__ == "Linear4bit" and q_proj.weight.device.type == "cuda"

    base = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir,
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16),
        device_map={"": "cuda:0"},
    )
    reloaded = PeftModel.from_pretrained(base, result.final_dir)
    input_ids = torch.tensor([[5, 17, 42, 99, 3, 7]], device="cuda:0")
    torch.testing.assert_close(logits(reloaded, input_ids), logits(result.model, input_ids), atol=2e-2, rtol=2e-2)


@pytest.mark.cuda
def test_memory_metrics_are_reported_at_logging_steps(tiny_model_dir, demo_data_file, tmp_path):
    from engine.train import train

    sink = RecordingSink()
    result = train(tiny_preset("full", tiny_model_dir, demo_data_file, "training.max_steps=3", "training.optimizer=adamw_8bit"), tmp_path / "run", sink)
    assert result.status == "completed"
    logged = [values for _, values in sink.of("metrics") if "loss" in values]
    assert logged
    for values in logged:
        for name in MEMORY_METRICS:
            assert values[name] > 0, name
        assert values["mem_peak_allocated"] >= values["mem_allocated"]
        assert values["mem_peak_reserved"] >= values["mem_peak_allocated"]
        if "gpu_mem_total" in values:  # NVML can be absent (containers without the library)
            assert 0 < values["gpu_mem_used"] <= values["gpu_mem_total"]
    records = [r for r in jsonl_records(result.run_dir, "metrics") if "loss" in r]
    assert all("mem_peak_allocated" in r for r in records)
