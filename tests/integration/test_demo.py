"""The demo learns: after the `demo` preset's run, greedy decoding answers >= 90 % of the training
questions exactly, while the untrained base answers <= 10 %. The result is loaded with plain
transformers + peft, as any user would load it."""

from __future__ import annotations

import time

import pytest
import torch


def greedy_answers(model, tokenizer, examples, max_new_tokens: int = 32) -> list[str]:
    """Batched greedy decoding (left padding) of each example's prompt, cut at the end-of-turn token."""
    from engine.data import prompt_ids

    prompts = [prompt_ids(tokenizer, example.messages) for example in examples]
    width = max(map(len, prompts))
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    model.eval()
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens, do_sample=False,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=pad,
        )
    return [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]


def exact_share(answers: list[str], examples) -> float:
    return sum(a == e.reference.strip() for a, e in zip(answers, examples)) / len(examples)


@pytest.mark.slow
def test_demo_learns_the_training_questions(demo_workspace, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.data import build_datasets
    from engine.sink import Sink
    from engine.train import train
    from presets import load_preset, resolve_paths

    preset = resolve_paths(load_preset("demo", demo_workspace.root), demo_workspace.root)
    base_dir = preset.model.path
    tokenizer = AutoTokenizer.from_pretrained(base_dir)

    # Every row as the pipeline renders it (the data file as its own validation file), minus the
    # rows the run holds out for validation: the training questions.
    split = build_datasets(preset.data, tokenizer, seed=preset.data.shuffle_seed)
    held_out = {str(e.messages) for e in split.eval_examples}
    every_row = preset.data.model_copy(update={"val_ratio": 0.0, "val_files": preset.data.train_files})
    examples = [e for e in build_datasets(every_row, tokenizer).eval_examples if str(e.messages) not in held_out]
    assert len(examples) >= 45

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    base_share = exact_share(greedy_answers(base, tokenizer, examples), examples)

    started = time.perf_counter()
    result = train(preset, demo_workspace.run_dir("demo"), Sink())
    seconds = time.perf_counter() - started
    assert result.status == "completed"

    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), result.final_dir)
    tuned_tokenizer = AutoTokenizer.from_pretrained(result.final_dir)
    answers = greedy_answers(tuned, tuned_tokenizer, examples)
    tuned_share = exact_share(answers, examples)
    with capsys.disabled():
        print(f"\ndemo: {result.global_step} steps in {seconds:.1f} s; exact on {len(examples)} training questions: "
              f"base {base_share:.0%}, fine-tuned {tuned_share:.0%}")
    assert base_share <= 0.10
    misses = [(e.reference, a) for e, a in zip(examples, answers) if a != e.reference.strip()]
    assert tuned_share >= 0.90, misses[:5]
