"""DPO step time of engine.train against TRL's DPOTrainer alone doing the same work: the same tiny
model, LoRA, rendered pairs, arguments and steps. tunebench adds its callback (metrics, memory,
FLOPs, the doctor), its sink and metrics.jsonl, its token count and its disk checks; TRL holds the
loss in both. Runs alternate (engine first, then TRL first) over several repetitions, so the two
runs of a pair meet the same load on the machine.

A step's time is the interval between two consecutive steps' ends (the engine's sink is told of
every step, logging_steps 1; TRL's run has a callback), the first steps (warm-up) left out; a
run's figure is the median of its intervals. The headline is the median of the per-pair ratios.

    python bench/preference_overhead.py [--steps 40] [--reps 5] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WARMUP_STEPS = 3


def write_pairs(path: Path) -> Path:
    from engine.demo_data import demo_preference_rows

    train, val = demo_preference_rows()
    path.write_text("".join(json.dumps(row) + "\n" for row in train + val), encoding="utf-8")
    return path


def make_preset(model_dir: Path, data_file: Path, steps: int):
    from presets import load_preset

    return load_preset("dpo", None, [
        f"model.path={model_dir}", f"data.train_files={data_file}", "data.val_ratio=0", "data.max_length=64",
        f"training.max_steps={steps}", "training.batch_size=8", "training.grad_accum=1", "training.logging_steps=1",
        f"training.save_steps={steps}", "training.lr=5e-4", "training.warmup_ratio=0",
    ])


def step_intervals(ends: list[float]) -> float:
    intervals = [b - a for a, b in zip(ends, ends[1:])][WARMUP_STEPS:]
    return statistics.median(intervals)


def run_engine(preset, run_dir: Path) -> float:
    from engine.sink import Sink
    from engine.train import train

    ends: list[float] = []

    class StepClock(Sink):
        def metrics(self, step, values):
            if "loss" in values:
                ends.append(time.perf_counter())

    result = train(preset, run_dir, StepClock())
    assert result.status == "completed"
    return step_intervals(ends)


def run_trl(preset, run_dir: Path) -> float:
    """What engine.train does for a DPO LoRA run, written straight against TRL + peft."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback, set_seed
    from trl import DPOTrainer

    from engine.artifacts import RunArtifacts
    from engine.data.preference import build_preference_datasets
    from engine.models import training_device
    from engine.train import training_arguments

    ends: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

    tokenizer = AutoTokenizer.from_pretrained(preset.model.path)
    bundle = build_preference_datasets(preset, tokenizer, seed=preset.data.shuffle_seed)
    model = AutoModelForCausalLM.from_pretrained(preset.model.path)
    model.config.use_cache = False
    set_seed(preset.training.seed)
    lora = preset.method.lora
    model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                             target_modules=lora.target_modules, task_type="CAUSAL_LM"))
    artifacts = RunArtifacts(run_dir)
    args = training_arguments(preset, artifacts, precision="fp32", device=training_device(), steps=preset.training.max_steps, has_eval=False)
    trainer = DPOTrainer(model=model, args=args, train_dataset=bundle.train, processing_class=tokenizer, callbacks=[StepClock()])
    trainer.remove_callback(PrinterCallback)  # the engine prints nothing either
    trainer.train()
    trainer.save_model(str(artifacts.final_dir))
    return step_intervals(ends)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (on a crowded machine, 1 avoids spin-wait storms)")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import warnings

    from datasets.utils.logging import disable_progress_bar
    from transformers.utils import logging as hf_logging

    from engine.tiny import make_tiny_model

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    disable_progress_bar()
    warnings.filterwarnings("ignore")
    root = Path(tempfile.mkdtemp(prefix="preference-overhead-"))
    try:
        model_dir = make_tiny_model(root / "tiny")
        preset = make_preset(model_dir, write_pairs(root / "pairs.jsonl"), args.steps)
        runners = {"engine": run_engine, "trl": run_trl}
        for name, runner in runners.items():  # warm-up: imports, allocator, file cache
            runner(preset, root / f"warmup-{name}")
        steps: dict[str, list[float]] = {"engine": [], "trl": []}
        ratios = []
        for rep in range(args.reps):
            for name in (["engine", "trl"] if rep % 2 == 0 else ["trl", "engine"]):
                run_dir = root / f"{name}-{rep}"
                steps[name].append(runners[name](preset, run_dir))
                shutil.rmtree(run_dir, ignore_errors=True)
            ratios.append(steps["engine"][-1] / steps["trl"][-1])
            print(f"rep {rep}: engine {steps['engine'][-1] * 1e3:.1f} ms/step, TRL DPOTrainer {steps['trl'][-1] * 1e3:.1f} ms/step, "
                  f"ratio {ratios[-1]:.3f}", flush=True)
        print(f"steps per run = {args.steps}, repetitions = {args.reps}, tiny model + LoRA, batch 8 pairs, "
              f"{os.cpu_count()} CPU(s), {torch.get_num_threads()} torch thread(s)")
        print(f"engine_dpo_step_ms = {statistics.median(steps['engine']) * 1e3:.1f} ms")
        print(f"trl_dpo_step_ms = {statistics.median(steps['trl']) * 1e3:.1f} ms")
        print(f"dpo_overhead_ratio = {statistics.median(ratios):.3f} x")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
