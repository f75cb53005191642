"""Helpers for the chat tests (test_chat*.py): adapters made on the spot and run folders.

Adapters with random (non-zero) weights need no training, so most chat tests run in seconds: they
make the fine-tuned side answer differently from the base. Only the tests that need a model that
has learnt the demo (exact answers, probe scores) train one, once per test process.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

# Trains the demo preset to memorisation in few steps: the full batch each step, and the output head
# trained with the adapter (method.lora.modules_to_save), which also makes the chat's base/fine-tuned
# switch swap a whole module copy, not only LoRA layers. The validation split is the training file
# itself, so the probe set asks questions the run has learnt (a held-out capital cannot be guessed).
DEMO_OVERRIDES = [
    "method.lora.modules_to_save=[lm_head]",
    "training.batch_size=56",
    "training.max_steps=80",
    "training.lr=3e-3",
    "training.warmup_ratio=0",
    "training.logging_steps=10",
    "training.save_steps=40",
    "training.eval_steps=40",
    "data.val_ratio=0",
    'data.val_files=["{workspace}/data/demo_capitals.json"]',
]


def make_adapter(base_dir: Path, out_dir: Path, kind: str = "lora", seed: int = 0) -> Path:
    """An untrained adapter whose weights are random, so it changes the model's answers."""
    import torch
    from peft import (IA3Config, LoraConfig, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig,
                      TaskType, get_peft_model)
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = {
        # lm_head trained in full too, as the demo does: switching must swap that copy as well
        "lora": lambda: LoraConfig(task_type=TaskType.CAUSAL_LM, r=8, lora_alpha=32, target_modules="all-linear",
                                   init_lora_weights=False, modules_to_save=["lm_head"]),
        "dora": lambda: LoraConfig(task_type=TaskType.CAUSAL_LM, r=8, lora_alpha=32, target_modules="all-linear",
                                   init_lora_weights=False, use_dora=True),
        "ia3": lambda: IA3Config(task_type=TaskType.CAUSAL_LM, target_modules=["q_proj", "v_proj", "down_proj"],
                                 feedforward_modules=["down_proj"], init_ia3_weights=False),
        "prompt_tuning": lambda: PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=6),
        "prefix_tuning": lambda: PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=6),
        "p_tuning": lambda: PromptEncoderConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=6, encoder_hidden_size=32),
    }[kind]()
    peft_model = get_peft_model(model, config)
    if kind == "ia3":
        with torch.no_grad():  # IA3's "random" init is still near 1: push it well away from identity
            for name, param in peft_model.named_parameters():
                if "ia3_l" in name:
                    param.uniform_(0.0, 3.0)
    if kind == "lora":
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "modules_to_save" in name:
                    param.add_(torch.randn_like(param) * 0.05)
    if kind == "prompt_tuning":
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "prompt_encoder" in name:
                    param.normal_(0, 1.0)
    peft_model.save_pretrained(out_dir)
    return Path(out_dir)


def greedy_without_cache(model, ids: list[int], n: int) -> list[int]:
    """The definition of greedy decoding: the whole sequence through the model's forward at every step,
    no KV cache. The ground truth for any cached token loop; transformers' generate() is not one for
    prompt learning (it is wrong there with transformers 5.24 and peft 0.21, see engine/generation.py)."""
    import torch

    sequence = list(ids)
    with torch.no_grad():
        for _ in range(n):
            out = model(input_ids=torch.tensor([sequence]), attention_mask=torch.ones(1, len(sequence), dtype=torch.long),
                        use_cache=False)
            sequence.append(int(out.logits[0, -1].argmax()))
    return sequence[len(ids):]


def make_full_model(base_dir: Path, out_dir: Path, seed: int = 1) -> Path:
    """A 'full fine-tune': the base with perturbed weights, saved as a model folder with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out_dir)
    return Path(out_dir)


def fake_run(ws, adapter_dir: Path, *, name: str = "demo", checkpoints=(5, 10), final: bool = True,
             state: str = "completed", overrides: list[str] | None = None) -> str:
    """A train run in the store with the demo preset frozen in its folder, `adapter_dir` as its final
    result and as each checkpoint (trainer_state.json marks a checkpoint complete). No training."""
    from engine.artifacts import RunArtifacts
    from jobs.store import open_store
    from presets import dump_preset, load_preset, resolve_paths

    preset = resolve_paths(load_preset("demo", ws.root, overrides or []), ws.root)
    text = dump_preset(preset)
    store = open_store(ws)
    run = store.create_run("train", name, text)
    artifacts = RunArtifacts(ws.run_dir(run.id))
    artifacts.run_dir.mkdir(parents=True, exist_ok=True)
    artifacts.preset_file.write_text(text)
    for step in checkpoints:
        folder = artifacts.checkpoint_dir(step)
        shutil.copytree(adapter_dir, folder)
        (folder / "trainer_state.json").write_text('{"global_step": %d}' % step)
    if final:
        shutil.copytree(adapter_dir, artifacts.final_dir)
    if state != "queued":
        store.set_state(run.id, "running")
        if state != "running":
            store.set_state(run.id, state)
    return run.id


@functools.cache
def trained_demo_run(root: Path) -> tuple[Path, str]:
    """A workspace under `root` holding one completed demo run trained by engine.train (once per
    process). Returns (workspace root, run id)."""
    from engine.demo_data import write_demo_dataset
    from engine.sink import Sink
    from engine.tiny import make_tiny_model
    from engine.train import train
    from jobs.store import open_store
    from jobs.workspace import Workspace
    from presets import dump_preset, load_preset, resolve_paths

    ws = Workspace(root).ensure()
    make_tiny_model(ws.models_dir / "tiny")
    write_demo_dataset(ws.data_dir / "demo_capitals.json")
    preset = resolve_paths(load_preset("demo", ws.root, DEMO_OVERRIDES), ws.root)
    store = open_store(ws)
    run = store.create_run("train", "demo", dump_preset(preset))
    store.set_state(run.id, "running")
    result = train(preset, ws.run_dir(run.id), Sink())
    assert result.status == "completed", result
    store.set_state(run.id, "completed")
    return ws.root, run.id
