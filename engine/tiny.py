"""The project's own tiny model: a small Llama-architecture model and a byte-level BPE tokenizer
trained on the spot, with a ChatML chat template. Fully offline, seconds on a CPU.

Tests and the demo use it instead of downloading anything.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.demo_data import SYSTEM_PROMPT, demo_rows, filler_text

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Small enough for CPU tests in seconds, large enough to memorise the demo dataset.
TINY_CONFIG = dict(
    hidden_size=128,
    # A multiple of 64, like real models' sizes: bitsandbytes' CPU 4-bit inference kernel repacks weights
    # in blocks of 64 input features and fails on other widths (QLoRA evaluation on the CPU).
    intermediate_size=384,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    # ~1/sqrt(hidden_size). At transformers' default 0.02 the frozen random lm_head and final norm cap
    # every logit near ±2.5, so no adapter on the linear layers can make a confident answer (LoRA stalls
    # at loss ~4.7); at this scale the demo's LoRA learns every training answer in ~150 steps.
    initializer_range=0.1,
)


def _corpus() -> list[str]:
    lines = []
    for row in demo_rows():
        lines += [row["instruction"], row["output"]]
    lines += filler_text()
    lines.append(SYSTEM_PROMPT)
    lines += ["user", "assistant", "system", "tool", "Hello! How can I help you today?"]
    return lines


def make_tokenizer(vocab_size: int = 1024):
    """Train a byte-level BPE tokenizer on the demo corpus and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
        model_max_length=TINY_CONFIG["max_position_embeddings"],
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def make_tiny_model(output_dir: str | Path, seed: int = 0, vocab_size: int = 1024) -> Path:
    """Write tokenizer + randomly initialised Llama model to `output_dir` (safetensors, fp32)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer(vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TINY_CONFIG,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    (output_dir / "tunebench_tiny.json").write_text(json.dumps({"seed": seed, "vocab_size": vocab_size}))
    return output_dir
