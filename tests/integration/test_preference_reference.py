"""The reference of an adapter's preference run is the loaded base with the adapter switched off:
TRL's copy of a fresh adapter is dropped, and the reference log-probs TRL computes then equal the
base model's own, while the adapter itself has moved away from them."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("trl")

PAIRS = [
    {"prompt": "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
     "chosen": "The capital of France is Paris.<|im_end|>\n", "rejected": "The capital of France is Rome.<|im_end|>\n"},
    {"prompt": "<|im_start|>user\nWhat is the capital of Japan?<|im_end|>\n<|im_start|>assistant\n",
     "chosen": "The capital of Japan is Tokyo.<|im_end|>\n", "rejected": "The capital of Japan is Lima.<|im_end|>\n"},
]


def _lora_model(path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))


def _trainer(model, tokenizer, tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=1, report_to="none",
                     use_cpu=True, max_length=64, disable_tqdm=True)
    return DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(PAIRS), processing_class=tokenizer)


def test_a_fresh_adapters_reference_is_the_base_with_the_adapter_off(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.stages import drop_reference_copy

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = _lora_model(tiny_model_dir)
    trainer = _trainer(model, tokenizer, tmp_path)
    assert "ref" in model.peft_config  # TRL copied the adapter
    assert drop_reference_copy(trainer, adapter_is_fresh=True)
    assert set(model.peft_config) == {"default"} and model.active_adapter == "default"
    # Move the adapter, so that "adapter on" and "adapter off" differ.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)

    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(PAIRS))])
    ref_chosen, ref_rejected = trainer.compute_ref_log_probs(model, batch)

    # The base model's log-probs, computed by TRL the same way: a DPO trainer on the plain base
    # builds its reference as a fresh copy of it.
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    base_trainer = _trainer(base, tokenizer, tmp_path / "base")
    assert base_trainer.ref_model is not None
    base_chosen, base_rejected = base_trainer.compute_ref_log_probs(base, batch)
    torch.testing.assert_close(torch.cat([ref_chosen, ref_rejected]), torch.cat([base_chosen, base_rejected]), atol=1e-5, rtol=1e-6)
    # ... and the adapter, switched on, is somewhere else.
    model.eval()
    with torch.no_grad():
        tuned = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        with model.disable_adapter():
            off = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert (tuned - off).abs().max() > 1e-2


def test_an_adapter_that_started_elsewhere_keeps_trls_copy(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from engine.stages import drop_reference_copy

    model = _lora_model(tiny_model_dir)
    trainer = _trainer(model, AutoTokenizer.from_pretrained(tiny_model_dir), tmp_path)
    assert not drop_reference_copy(trainer, adapter_is_fresh=False)
    assert "ref" in model.peft_config
