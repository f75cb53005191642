"""FSDP and DeepSpeed through `accelerate launch` on a GPU (skipped without CUDA): one process on
one GPU, the tiny model, LoRA and QLoRA. engine.distributed.launcher.launch() runs what the engine
runs."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from engine.distributed.launcher import launch
from presets.loader import load_preset_text

pytestmark = [pytest.mark.cuda, pytest.mark.slow]


def _preset(tiny_model_dir, demo_data_file, distributed: dict, **sections):
    data = {
        "name": "gpu-dist",
        "model": {"path": str(tiny_model_dir)},
        "method": {"name": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
        "data": {"train_files": [str(demo_data_file)], "format": "alpaca", "max_length": 64, "max_samples": 48},
        "training": {"max_steps": 6, "batch_size": 8, "lr": 5e-3, "logging_steps": 1, "save_steps": 3},
        "distributed": distributed,
    }
    data.update(sections)
    return load_preset_text(yaml.safe_dump(data), "gpu-dist.yaml")


def _run(preset, run_dir):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]}
    result = launch(preset, run_dir, env=env)
    assert result.status == "completed", (result.error, result.advice)
    losses = [r["loss"] for r in map(json.loads, open(run_dir / "metrics.jsonl")) if r.get("type") == "metrics" and "loss" in r]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert (run_dir / "final" / "adapter_config.json").is_file()
    return result


def test_fsdp_one_gpu_lora(tmp_path, tiny_model_dir, demo_data_file):
    preset = _preset(tiny_model_dir, demo_data_file, {"strategy": "fsdp", "num_processes": 1})
    _run(preset, tmp_path / "fsdp")
    written = yaml.safe_load((tmp_path / "fsdp" / "accelerate.yaml").read_text())
    assert written["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"


def test_fsdp_one_gpu_qlora(tmp_path, tiny_model_dir, demo_data_file):
    preset = _preset(
        tiny_model_dir, demo_data_file, {"strategy": "fsdp", "num_processes": 1},
        model={"path": str(tiny_model_dir), "quantization": {"mode": "4bit"}},
        method={"name": "qlora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
    )
    _run(preset, tmp_path / "fsdp-qlora")


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_one_gpu(tmp_path, tiny_model_dir, demo_data_file, stage):
    pytest.importorskip("deepspeed")
    preset = _preset(tiny_model_dir, demo_data_file, {"strategy": "deepspeed", "num_processes": 1, "zero_stage": stage})
    _run(preset, tmp_path / f"zero{stage}")
    assert json.loads((tmp_path / f"zero{stage}" / "deepspeed.json").read_text())["zero_optimization"]["stage"] == stage
