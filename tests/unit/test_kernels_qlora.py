"""QLoRA's preparation (engine.models.prepare_kbit_training): the frozen embeddings and output head
stay in the compute dtype instead of peft's fp32, norms are upcast as peft does, and the logits
stay those of peft's preparation. bitsandbytes 4-bit runs on the CPU, so this is the real path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from presets import load_preset

VOCAB = 32_000  # large against the tiny hidden size, as 150k is against a 0.5B model's


@pytest.fixture(scope="module")
def wide_vocab_model(tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from engine.tiny import TINY_CONFIG

    out = tmp_path_factory.mktemp("wide-vocab")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, **TINY_CONFIG)).save_pretrained(out)
    return out


def _load(path: Path, *overrides: str):
    from engine.models import load_model

    preset = load_preset("qlora", None, [f"model.path={path}", "model.quantization.compute_dtype=bf16", *overrides])
    return preset, load_model(preset.model, precision="bf16", for_training=True, device=torch.device("cpu"))


def _bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def test_frozen_embeddings_and_head_stay_in_the_compute_dtype(wide_vocab_model):
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    from engine.models import quantization_config

    preset, model = _load(wide_vocab_model)
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16
    assert model.get_output_embeddings().weight.dtype == torch.bfloat16
    assert model.model.norm.weight.dtype == torch.float32  # norms upcast as peft does
    assert not any(p.requires_grad for p in model.parameters())

    peft_way = AutoModelForCausalLM.from_pretrained(
        wide_vocab_model, dtype=torch.bfloat16, device_map={"": "cpu"},
        quantization_config=quantization_config(preset.model, "bf16"),
    )
    peft_way = prepare_model_for_kbit_training(peft_way, use_gradient_checkpointing=False)
    ours, peft_bytes = _bytes(model), _bytes(peft_way)
    print(f"\nQLoRA parameter bytes, vocab {VOCAB}: peft {peft_bytes:,} → ours {ours:,} ({ours / peft_bytes:.0%})")
    assert ours < 0.75 * peft_bytes  # the embedding and head dominate at this vocabulary

    # Without autocast too: the fp32 final norm's output is cast to the head's dtype.
    ids = torch.randint(0, VOCAB, (2, 16))
    with torch.no_grad():
        logits, reference = model(input_ids=ids).logits.float(), peft_way(input_ids=ids).logits.float()
    assert torch.isfinite(logits).all()
    assert (logits - reference).abs().max() < 0.05 * reference.abs().max()


def test_a_trained_head_is_trained_in_fp32(wide_vocab_model):
    from engine.methods import apply_method

    preset, model = _load(wide_vocab_model, "method.lora.modules_to_save=[lm_head]", "method.lora.target_modules=[q_proj,v_proj]")
    model = apply_method(model, preset, total_steps=1)
    trained = {name: p.dtype for name, p in model.named_parameters() if p.requires_grad}
    assert any("lm_head" in name for name in trained) and set(trained.values()) == {torch.float32}
    ids = torch.randint(0, VOCAB, (2, 16))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)
