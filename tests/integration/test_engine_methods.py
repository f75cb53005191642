"""Every method trains a few steps on the tiny model (CPU): only the intended parameters change, the
trainable count is peft's, and the saved result reloads with plain transformers/peft to the same logits."""

from __future__ import annotations

import pytest
import torch

from helpers.training import RecordingSink, jsonl_records, logits, tiny_preset
from presets.methods import METHODS as METHODS_TABLE

METHODS = ["full", "freeze", "lora", "qlora", "dora", "rslora", "ia3", "adalora", "prompt_tuning", "prefix_tuning", "p_tuning"]
EXTRA = {
    # Two of the tiny model's four layers, so that some layers stay frozen.
    "freeze": ["method.freeze.trainable_layers=2"],
    # The built-in schedule (tinit 50, tfinal 100) needs a longer run than three steps.
    "adalora": ["method.adalora.tinit=0", "method.adalora.tfinal=0", "method.adalora.delta_t=1"],
}
# What a trainable parameter's name says about the method that made it.
TRAINABLE_MARK = {
    "lora": "lora_", "qlora": "lora_", "dora": "lora_", "rslora": "lora_", "adalora": "lora_",
    "ia3": "ia3_", "prompt_tuning": "prompt_encoder", "prefix_tuning": "prompt_encoder", "p_tuning": "prompt_encoder",
}


def _initial_model(preset, steps):
    """The model exactly as train() builds it before the first step (same seeds, same order)."""
    from transformers import set_seed

    from engine.methods import apply_method
    from engine.models import load_model

    set_seed(preset.training.seed)
    model = load_model(preset.model, precision="fp32", for_training=True, trains_base_weights=METHODS_TABLE[preset.method.name].trains_base_weights)
    set_seed(preset.training.seed)
    return apply_method(model, preset, total_steps=steps)


def _reloaded(preset, final_dir, tiny_model_dir):
    """The result loaded with nothing of ours: plain transformers (+ peft for adapters)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if not METHODS_TABLE[preset.method.name].is_adapter:
        assert not (final_dir / "adapter_config.json").exists()
        assert (final_dir / "model.safetensors").is_file()
        return AutoModelForCausalLM.from_pretrained(final_dir)
    kwargs = {}
    if preset.method.name == "qlora":
        kwargs = dict(
            quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32),
            device_map={"": "cpu"},
        )
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, **kwargs)
    return PeftModel.from_pretrained(base, final_dir)


@pytest.mark.parametrize("method", METHODS)
def test_method_trains_only_its_parameters_and_reloads(method, tiny_model_dir, demo_data_file, tmp_path):
    from transformers import AutoTokenizer

    from engine.methods import trainable_parameters
    from engine.train import train

    preset = tiny_preset(method, tiny_model_dir, demo_data_file, *EXTRA.get(method, []))
    before = {name: p.detach().clone() for name, p in _initial_model(preset, 3).named_parameters()}

    sink = RecordingSink()
    result = train(preset, tmp_path / "run", sink)
    assert result.status == "completed" and result.global_step == 3

    model = result.model
    after = dict(model.named_parameters())
    assert set(after) == set(before)
    trainable = {name for name, p in after.items() if p.requires_grad}
    assert trainable, "nothing was trained"
    for name, param in after.items():
        changed = not torch.equal(param.detach(), before[name])
        assert changed == (name in trainable), f"{name}: changed={changed}, trainable={name in trainable}"
    if method in TRAINABLE_MARK:
        assert all(TRAINABLE_MARK[method] in name for name in trainable), sorted(trainable)
    elif method == "freeze":
        assert all(".layers.2." in name or ".layers.3." in name for name in trainable), sorted(trainable)
    else:
        assert trainable == set(after)

    # The count is peft's own (print_trainable_parameters) and it is what the run recorded.
    counted = model.get_nb_trainable_parameters() if hasattr(model, "get_nb_trainable_parameters") else None
    if counted is not None:
        assert (result.trainable_params, result.total_params) == counted
    assert result.trainable_params == sum(p.numel() for name, p in after.items() if name in trainable)
    assert trainable_parameters(model) == (result.trainable_params, result.total_params)
    started = sink.of("run_started")[0][0]
    assert (started["trainable_params"], started["total_params"]) == (result.trainable_params, result.total_params)
    assert jsonl_records(result.run_dir, "run_started")[0]["trainable_params"] == result.trainable_params

    # Plain transformers/peft load the result to the same logits as the model in memory.
    tokenizer = AutoTokenizer.from_pretrained(result.final_dir)
    assert tokenizer.chat_template
    input_ids = torch.tensor([tokenizer("What is the capital of France?")["input_ids"]])
    reloaded = _reloaded(preset, result.final_dir, tiny_model_dir)
    torch.testing.assert_close(logits(reloaded, input_ids), logits(model, input_ids), atol=1e-4, rtol=1e-4)
