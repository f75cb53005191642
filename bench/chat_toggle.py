"""How much the chat pane's one-base design costs: switching base ↔ fine-tuned on a loaded LoRA model,
and the tokens/s each side streams at when both answer at once (engine.chat interleaves them and
switches the adapter before every token).

Two models, made on the spot (nothing downloads):
  tiny   the project's tiny Llama (4 layers, 28 LoRA modules)
  deep   a Llama with a 7B model's layer count (32 layers, 224 LoRA modules) at a small width:
         the switch walks every adapter layer, so its cost follows the layer count, not the width

The headline figures (last lines) are the deep model's.
    python bench/chat_toggle.py [--switches 300] [--tokens 96] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEEP_CONFIG = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=32, num_attention_heads=8,
                   num_key_value_heads=8, max_position_embeddings=2048)
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def make_deep_model(out_dir: Path, tiny_dir: Path) -> Path:
    """The tiny model's tokenizer on a 32-layer Llama."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None, tie_word_embeddings=False, **DEEP_CONFIG)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def make_lora(base_dir: Path, out_dir: Path) -> Path:
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(task_type=TaskType.CAUSAL_LM, r=16, lora_alpha=32, target_modules="all-linear",
                                      init_lora_weights=False))
    model.save_pretrained(out_dir)
    return out_dir


def measure(name: str, base_dir: Path, adapter_dir: Path, *, switches: int, tokens: int, device: str | None) -> dict:
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    from engine.chat import ChatSession, GenerationSettings

    session = ChatSession.load(base_dir, adapter_dir, device=device)
    adapter_layers = sum(1 for m in session._peft.modules() if isinstance(m, BaseTunerLayer))

    # one switch = putting the shared model in the other side's state (what happens before each token)
    times = []
    for i in range(switches):
        side = i % 2
        started = time.perf_counter()
        session.activate(side)
        if device and device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    toggle_ms = statistics.median(times[2:]) * 1000

    # both sides at once, greedy, exactly `tokens` tokens each (no EOS stop: the random models would
    # end at different lengths, and short answers are dominated by the other side's prefill)
    session.stop_token_ids = set()
    settings = GenerationSettings(max_new_tokens=tokens)
    session.compare(QUESTION, GenerationSettings(max_new_tokens=4))  # warm-up
    runs = [session.compare(QUESTION, settings) for _ in range(3)]
    rates = [[a.stats.tokens_per_s or 0.0 for a in answers] for answers in runs]
    base_rate = statistics.median(r[0] for r in rates)
    tuned_rate = statistics.median(r[1] for r in rates)
    step_ms = 1000 / (base_rate + tuned_rate) if base_rate + tuned_rate else float("nan")
    session.close()
    print(f"{name}: {adapter_layers} LoRA layers, switch median {toggle_ms:.3f} ms over {switches} switches; "
          f"both sides streaming at once: {base_rate:.1f} tok/s base, {tuned_rate:.1f} tok/s fine-tuned "
          f"(one side's step ≈ {step_ms:.2f} ms incl. its switch, which is {toggle_ms / step_ms:.1%} of it)")
    return {"toggle_ms": toggle_ms, "base": base_rate, "tuned": tuned_rate}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--switches", type=int, default=300)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    import logging

    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    from engine.tiny import make_tiny_model

    with tempfile.TemporaryDirectory(prefix="chat-toggle-") as tmp:
        root = Path(tmp)
        tiny = make_tiny_model(root / "tiny")
        deep = make_deep_model(root / "deep", tiny)
        results = {}
        for name, base in (("tiny", tiny), ("deep", deep)):
            results[name] = measure(name, base, make_lora(base, root / f"{name}-lora"), switches=args.switches,
                                    tokens=args.tokens, device=args.device)
    deep = results["deep"]
    print(f"deep/tiny switch cost ratio = {deep['toggle_ms'] / results['tiny']['toggle_ms']:.1f}x (target: the deep switch < 50 ms)")
    print(f"adapter_toggle_median = {deep['toggle_ms']:.3f} ms")
    print(f"tokens_per_s_base = {deep['base']:.1f} tok/s")
    print(f"tokens_per_s_finetuned = {deep['tuned']:.1f} tok/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
