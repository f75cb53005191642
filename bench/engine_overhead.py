"""Wall-time of engine.train (callback, sink, metrics.jsonl, keep policy, final save) against a bare
HF Trainer doing the same work: the same tiny model, LoRA, data, collator, TrainingArguments and
steps, and the same final save. Runs alternate (engine first, then bare first) over several
repetitions, so that the two runs of a pair meet the same load on the machine. The headline is
the median of the per-pair wall-time ratios; above it, the ratio of the fastest runs and the ratio
of the median CPU times of this process (the engine's own cost, whatever else the machine runs).

    python bench/engine_overhead.py [--steps 100] [--reps 9] [--threads N]
"""

from __future__ import annotations

import argparse
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


def make_preset(model_dir: Path, data_file: Path, steps: int):
    from presets import load_preset

    return load_preset("lora", None, [
        f"model.path={model_dir}", f"data.train_files={data_file}", "data.val_ratio=0", "data.max_length=64",
        f"training.max_steps={steps}", "training.batch_size=8", "training.logging_steps=10",
        f"training.save_steps={steps}", "training.lr=5e-3",
    ])


def run_engine(preset, run_dir: Path) -> None:
    from engine.sink import Sink
    from engine.train import train

    result = train(preset, run_dir, Sink())
    assert result.status == "completed"


def run_bare(preset, run_dir: Path) -> None:
    """What engine.train does, written straight against transformers + peft, without our callback."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, Trainer, set_seed

    from engine.artifacts import RunArtifacts
    from engine.data import build_datasets, make_collator
    from engine.models import training_device
    from engine.train import training_arguments

    set_seed(preset.training.seed)
    tokenizer = AutoTokenizer.from_pretrained(preset.model.path)
    bundle = build_datasets(preset.data, tokenizer, seed=preset.data.shuffle_seed)
    model = AutoModelForCausalLM.from_pretrained(preset.model.path)
    model.config.use_cache = False
    lora = preset.method.lora
    model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules, task_type="CAUSAL_LM"))
    artifacts = RunArtifacts(run_dir)
    args = training_arguments(preset, artifacts, precision="fp32", device=training_device(), steps=preset.training.max_steps, has_eval=False)
    trainer = Trainer(
        model=model, args=args, train_dataset=bundle.train, data_collator=make_collator(tokenizer, packing=False, max_length=preset.data.max_length),
        processing_class=tokenizer,
    )
    trainer.remove_callback(PrinterCallback)  # the engine prints nothing either: compare training, not terminal output
    trainer.train()
    trainer.save_model(str(artifacts.final_dir))


def timed(runner, preset, run_dir: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one run."""
    wall, cpu = time.perf_counter(), time.process_time()
    runner(preset, run_dir)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--threads", type=int, help="torch intra-op threads for this process (on a crowded machine, 1 avoids spin-wait storms)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    import warnings

    from transformers.utils import logging as hf_logging

    from engine.demo_data import write_demo_dataset
    from engine.tiny import make_tiny_model

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # peft's own deprecation notice (the engine filters it too); it is not what is measured.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    root = Path(tempfile.mkdtemp(prefix="engine-overhead-"))
    try:
        model_dir = make_tiny_model(root / "tiny")
        data_file = write_demo_dataset(root / "demo.json")
        preset = make_preset(model_dir, data_file, args.steps)
        runners = {"engine": run_engine, "bare": run_bare}

        for name, runner in runners.items():  # warm-up: imports, allocator, file cache
            runner(preset, root / f"warmup-{name}")
        wall: dict[str, list[float]] = {"engine": [], "bare": []}
        cpu: dict[str, list[float]] = {"engine": [], "bare": []}
        ratios = []
        for rep in range(args.reps):
            order = ["engine", "bare"] if rep % 2 == 0 else ["bare", "engine"]
            for name in order:
                run_dir = root / f"{name}-{rep}"
                seconds, cpu_seconds = timed(runners[name], preset, run_dir)
                shutil.rmtree(run_dir, ignore_errors=True)
                wall[name].append(seconds)
                cpu[name].append(cpu_seconds)
            ratios.append(wall["engine"][-1] / wall["bare"][-1])
            print(f"rep {rep}: engine {wall['engine'][-1]:.2f} s, bare Trainer {wall['bare'][-1]:.2f} s, ratio {ratios[-1]:.3f}", flush=True)
        import torch

        print(f"steps per run = {args.steps}, repetitions = {args.reps}, tiny model + LoRA, {os.cpu_count()} CPU(s), {torch.get_num_threads()} torch thread(s)")
        print(f"engine_fastest_s = {min(wall['engine']):.2f} s")
        print(f"bare_trainer_fastest_s = {min(wall['bare']):.2f} s")
        print(f"engine_overhead_fastest_ratio = {min(wall['engine']) / min(wall['bare']):.3f} x")
        print(f"engine_overhead_cpu_ratio = {statistics.median(cpu['engine']) / statistics.median(cpu['bare']):.3f} x")
        print(f"engine_overhead_ratio = {statistics.median(ratios):.3f} x")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
