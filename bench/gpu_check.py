"""The GPU check (issue 18): one prepared script for a machine with one NVIDIA GPU, under 8 minutes.

Models are built from their published configurations with random weights (nothing is downloaded):
a Qwen2.5-0.5B-shaped model in bf16 and a Llama-3-8B-shaped model in 4-bit (QLoRA), both trained
with LoRA on synthetic rows of up to 2k tokens (the project's tiny tokenizer makes the token ids;
with random weights, which ids they are does not change the arithmetic). For the 0.5B shape it
compares, in tokens of real data per second after a few warm-up steps:

- the engine (engine.train: packing, the attention kernel and loss path it picks, fused AdamW);
- a bare HF Trainer with sdpa attention and right-padded batches (what most scripts do);
- a bare HF Trainer with padding-free attention (transformers' DataCollatorWithFlattening, flash
  attention 2 when flash-attn is installed, else flex attention);

and prints MFU (engine.flops), the measured peak memory against the doctor's estimate
(engine.doctor.memory), and the difference between the loss of a packed batch and of the same
samples padded, on the kernel the engine picks. The Llama-3-8B shape gets the engine's figures.
The last lines are the figures, one a line, `name = value unit`.

Targets on a GPU (issue 18): engine_vs_padding_free >= 1.0 x, mfu >= 35 % on the 0.5B shape,
peak_vs_estimate within 0.8-1.2 x.

    python bench/gpu_check.py            # on the GPU machine
    python bench/gpu_check.py --smoke    # the same code on the tiny model on the CPU (a test runs it)

On the CPU (--smoke) the peak is the process's peak RSS (libraries included), so its ratio to the
estimate means nothing, and MFU is against a nominal 1 TFLOP/s (--peak-tflops): the figures show
that the code runs, not how fast anything is.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The published config.json values of Qwen/Qwen2.5-0.5B and meta-llama/Meta-Llama-3-8B (the shape only).
QWEN25_05B = {
    "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
    "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": True, "hidden_act": "silu",
}
LLAMA3_8B = {
    "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False, "hidden_act": "silu",
}


@dataclass(frozen=True)
class Case:
    name: str  # prefix of the printed figures
    config: dict | None  # None: the project's tiny model (engine.tiny)
    preset: str  # the built-in preset it starts from (lora, qlora)
    max_length: int
    batch_size: int  # rows per step (the engine's packed rows; the bare Trainers' samples)
    warmup: int  # steps before the measurement (compilation, allocator, autotuning)
    measured: int  # steps measured
    baselines: bool  # also the bare Trainers and the packed-vs-unpacked loss


GPU_CASES = [
    Case("qwen05b", QWEN25_05B, "lora", 2048, 8, 4, 12, baselines=True),
    Case("llama8b", LLAMA3_8B, "qlora", 2048, 2, 3, 6, baselines=False),
]
SMOKE_CASES = [Case("tiny", None, "lora", 128, 2, 1, 2, baselines=True)]


# --------------------------------------------------------------------------- inputs


def make_model_dir(root: Path, case: Case, *, cuda: bool) -> Path:
    """The case's model on disk, as the engine loads any model: config, random bf16 weights, tokenizer."""
    from engine.tiny import make_tiny_model, make_tokenizer

    if case.config is None:
        return make_tiny_model(root / case.name)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = root / case.name
    config = AutoConfig.for_model(**case.config)
    torch.manual_seed(0)
    # Initialised on the GPU: an 8B model's random init on the CPU alone takes minutes.
    with torch.device("cuda" if cuda else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    del model
    if cuda:
        torch.cuda.empty_cache()
    make_tokenizer().save_pretrained(folder)
    return folder


def write_rows(path: Path, count: int, max_length: int, seed: int = 0) -> Path:
    """Alpaca rows of very different lengths, from a tenth of max_length to about 90 % of it in tokens (the
    tiny tokenizer makes ~1.3 tokens of a word, the template ~30 more), as real data has: packing has work
    to do, truncation little."""
    from engine.demo_data import demo_rows

    rng = random.Random(seed)
    words = " ".join(r["output"] for r in demo_rows()).split()
    most = int(max_length * 0.5)
    rows = [{"instruction": f"Write note {i}.", "input": "",
             "output": " ".join(rng.choice(words) for _ in range(rng.randint(most // 8, most)))}
            for i in range(count)]
    path.write_text(json.dumps(rows))
    return path


def make_preset(case: Case, model_dir: Path, data: Path, out: Path):
    from presets import load_preset

    return load_preset(case.preset, None, [
        f"model.path={model_dir}", f"data.train_files={data}", "data.val_ratio=0", f"data.max_length={case.max_length}",
        "data.packing=true", f"training.batch_size={case.batch_size}", "training.grad_accum=1",
        f"training.max_steps={case.warmup + case.measured}", f"training.logging_steps={case.warmup}",
        "training.save_steps=100000", "training.warmup_steps=0",
    ])


# --------------------------------------------------------------------------- measurements


class Interval:
    """Tokens per second between the end of step `start` and the end of step `end`, on synchronised clocks."""

    def __init__(self, start: int, end: int):
        self.start, self.end = start, end
        self.times: dict[int, float] = {}

    def mark(self, step: int) -> None:
        if step in (self.start, self.end):
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times[step] = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.times[self.end] - self.times[self.start]


def run_engine(case: Case, preset, run_dir: Path) -> dict:
    """engine.train as a run does it; its own metrics give tokens/s over the measured steps and the peak."""
    from engine.sink import Sink
    from engine.train import train

    class Recorder(Sink):
        def __init__(self):
            self.metrics_seen: list[tuple[int, dict]] = []
            self.events_seen: list[str] = []

        def metrics(self, step, values):
            self.metrics_seen.append((step, dict(values)))

        def event(self, level, text, step=None):
            self.events_seen.append(text)

    sink = Recorder()
    result = train(preset, run_dir, sink)
    if result.status != "completed":
        raise SystemExit(f"{case.name}: the engine run ended {result.status}: {result.error}")
    logs = [(step, values) for step, values in sink.metrics_seen if "tokens_per_s" in values]
    after = [(s, v) for s, v in logs if s > case.warmup]  # the logging intervals after the warm-up
    first = next(v for s, v in logs if s == case.warmup)
    tokens = after[-1][1]["tokens_seen"] - first["tokens_seen"]
    seconds = sum((v["tokens_seen"] - prev["tokens_seen"]) / v["tokens_per_s"]
                  for (_, prev), (_, v) in zip([(case.warmup, first)] + after[:-1], after))
    peak = max((v.get("mem_peak_reserved", 0.0) for _, v in logs), default=0.0)
    last = after[-1][1]
    # The mean sample's length (the context a token attends within, for the FLOPs of attention).
    sample_tokens = last["tokens_per_s"] / last["samples_per_s"] if last.get("samples_per_s") else preset.data.max_length
    # What the engine chose and said so: "attention: KERNEL (why)", "loss: PATH (why)".
    chosen = {text.split(": ", 1)[0]: text.split(": ", 1)[1].split(" ", 1)[0]
              for text in sink.events_seen if text.startswith(("attention: ", "loss: "))}
    return dict(tokens_per_s=tokens / seconds, tokens=tokens, seconds=seconds, peak=peak, sample_tokens=sample_tokens,
                trainable=result.trainable_params, total=result.total_params, attention=chosen["attention"],
                loss=chosen["loss"])


def _bare_model(model_dir: Path, attention: str, preset, cuda: bool):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if cuda else torch.float32,
                                                 attn_implementation=attention, device_map={"": "cuda" if cuda else "cpu"})
    model.config.use_cache = False
    lora = preset.method.lora
    return get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                            target_modules=lora.target_modules, task_type="CAUSAL_LM"))


def run_bare(case: Case, preset, model_dir: Path, rows, tokenizer, *, attention: str, flatten: bool, out: Path, cuda: bool) -> dict:
    """A bare HF Trainer as a script would write it: the same rows, LoRA and batch size; the library's
    collators (padded, or flattened padding-free) and TrainingArguments' defaults otherwise."""
    from transformers import (
        DataCollatorForSeq2Seq, DataCollatorWithFlattening, PrinterCallback, Trainer, TrainerCallback, TrainingArguments,
    )

    from engine.train import _checkpointing_arguments

    model = _bare_model(model_dir, attention, preset, cuda)
    if flatten:
        library = DataCollatorWithFlattening(return_flash_attn_kwargs=attention.startswith("flash"))
    else:
        library = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    counts: list[int] = []

    def collate(features):
        features = [{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features]
        counts.append(sum(len(f["input_ids"]) for f in features))  # the real tokens of the batch, in step order
        return library(features)

    interval = Interval(case.warmup, case.warmup + case.measured)

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            interval.mark(state.global_step)

    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=case.batch_size, max_steps=case.warmup + case.measured,
        learning_rate=preset.training.lr, bf16=cuda, use_cpu=not cuda, logging_steps=case.warmup, save_strategy="no",
        report_to="none", disable_tqdm=True, remove_unused_columns=False, seed=preset.training.seed,
        **_checkpointing_arguments(preset.training.gradient_checkpointing),
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate, callbacks=[Clock()])
    trainer.remove_callback(PrinterCallback)  # the figures come last, one a line
    trainer.train()
    tokens = sum(counts[case.warmup: case.warmup + case.measured])
    del trainer, model
    _release(cuda)
    return dict(tokens_per_s=tokens / interval.seconds)


def padding_free_kernel(cuda: bool) -> str:
    """flash attention 2 where flash-attn is installed, else flex attention (in torch); on the CPU, which
    has no flex backward, sdpa with the block-diagonal mask transformers builds from the position ids."""
    from presets.extras import is_installed

    if not cuda:
        return "sdpa"
    return "flash_attention_2" if is_installed("flash_attn") else "flex_attention"


def packed_loss_difference(preset, model_dir: Path, rows, tokenizer, *, attention: str, cuda: bool) -> float:
    """|loss of the samples packed by the engine's collator − loss of the same samples padded|, one
    forward pass each on the same model and kernel (no dropout)."""
    import torch

    from engine.data import make_collator

    model = _bare_model(model_dir, attention, preset, cuda).eval()
    features = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows.select(range(min(8, len(rows))))]
    losses = []
    for packing in (True, False):
        # The batch laid out for the kernel as the engine lays it out (flattened for flash and flex).
        batch = make_collator(tokenizer, packing=packing, max_length=preset.data.max_length, attn_implementation=attention)(features)
        device = "cuda" if cuda else "cpu"
        batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
            losses.append(float(model(**batch).loss))
    del model
    _release(cuda)
    return abs(losses[0] - losses[1])


def _release(cuda: bool) -> None:
    import gc

    gc.collect()
    if cuda:
        import torch

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_rss_bytes() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0  # kilobytes on Linux


def check_case(case: Case, root: Path, *, cuda: bool, peak_tflops: float | None) -> list[tuple[str, float, str]]:
    import torch
    from transformers import AutoConfig

    from engine.data import build_datasets
    from engine.doctor.memory import GiB, estimate_memory, load_model_config
    from engine.flops import flops_per_token, mfu, peak_flops
    from engine.models import load_tokenizer

    started = time.perf_counter()
    model_dir = make_model_dir(root, case, cuda=cuda)
    _release(cuda)  # the random init's bf16 copy on the GPU is not the run's peak
    # Enough rows for every run (packed rows hold about two samples).
    data = write_rows(root / f"{case.name}.json", count=case.batch_size * (case.warmup + case.measured) * 3,
                      max_length=case.max_length)
    preset = make_preset(case, model_dir, data, root)
    config = load_model_config(str(model_dir))

    engine = run_engine(case, preset, root / f"{case.name}-run")
    _release(cuda)
    attention, loss = engine["attention"], engine["loss"]
    print(f"{case.name}: engine {engine['tokens_per_s']:.0f} tokens/s with {attention} attention and the {loss} loss "
          f"({time.perf_counter() - started:.0f} s so far)", flush=True)
    figures: list[tuple[str, float, str]] = [(f"{case.name}_engine_tokens_per_s", engine["tokens_per_s"], "tokens/s")]

    # MFU from engine.flops: the model's FLOPs per token (its trainable/frozen split, the mean sample's attention).
    hf_config = AutoConfig.from_pretrained(model_dir)
    per_token = flops_per_token(hf_config, trainable_params=engine["trainable"], total_params=engine["total"],
                                seq_len=int(engine["sample_tokens"]))
    peak = peak_tflops * 1e12 if peak_tflops else (peak_flops(torch.cuda.get_device_name(), "bf16") if cuda else None)
    achieved = engine["tokens_per_s"] * per_token
    figures.append((f"{case.name}_tflops", achieved / 1e12, "TFLOP/s"))
    figures.append((f"{case.name}_mfu", 100 * mfu(engine["tokens_per_s"], per_token, peak) if peak else float("nan"), "%"))

    estimate = estimate_memory(preset, config, seq_len=case.max_length, device="cuda" if cuda else "cpu",
                               attention=attention, loss=loss, suggest=False)
    measured = engine["peak"] if cuda else peak_rss_bytes()
    figures += [
        (f"{case.name}_peak_memory", measured / GiB, "GiB"),
        (f"{case.name}_estimate_memory", estimate.torch_bytes / GiB, "GiB"),
        (f"{case.name}_peak_vs_estimate", measured / estimate.torch_bytes, "x"),
    ]

    if case.baselines:
        tokenizer = load_tokenizer(preset.model)
        unpacked = preset.data.model_copy(update={"packing": False})
        rows = build_datasets(unpacked, tokenizer, seed=preset.data.shuffle_seed).train
        padded = run_bare(case, preset, model_dir, rows, tokenizer, attention="sdpa", flatten=False, out=root / "bare-sdpa", cuda=cuda)
        free_kernel = padding_free_kernel(cuda)
        free = run_bare(case, preset, model_dir, rows, tokenizer, attention=free_kernel, flatten=True, out=root / "bare-free", cuda=cuda)
        print(f"{case.name}: bare sdpa+padding {padded['tokens_per_s']:.0f}, bare {free_kernel} padding-free "
              f"{free['tokens_per_s']:.0f} tokens/s ({time.perf_counter() - started:.0f} s so far)", flush=True)
        difference = packed_loss_difference(preset, model_dir, rows, tokenizer, attention=attention, cuda=cuda)
        figures += [
            (f"{case.name}_bare_sdpa_padded_tokens_per_s", padded["tokens_per_s"], "tokens/s"),
            (f"{case.name}_bare_padding_free_tokens_per_s", free["tokens_per_s"], "tokens/s"),
            (f"{case.name}_engine_vs_sdpa_padded", engine["tokens_per_s"] / padded["tokens_per_s"], "x"),
            (f"{case.name}_engine_vs_padding_free", engine["tokens_per_s"] / free["tokens_per_s"], "x"),
            (f"{case.name}_packed_vs_unpacked_loss_diff", difference, "nats"),
        ]
    shutil.rmtree(model_dir, ignore_errors=True)  # the 8B shape's bf16 weights take 16 GB of disk
    print(f"{case.name}: done in {time.perf_counter() - started:.0f} s", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="the tiny model on the CPU, under a minute")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense peak for MFU (default: engine.flops' table; 1 with --smoke)")
    parser.add_argument("--only", choices=[c.name for c in GPU_CASES], help="run only this shape")
    args = parser.parse_args()

    if args.smoke:
        # The smoke run is the CPU's, even where a GPU is visible (set before torch is imported).
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import warnings

    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        raise SystemExit("no CUDA GPU here: run with --smoke for the CPU run of the same code")
    cases = SMOKE_CASES if args.smoke else [c for c in GPU_CASES if args.only in (None, c.name)]
    peak_tflops = args.peak_tflops or (1.0 if args.smoke else None)
    root = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    started = time.perf_counter()
    try:
        figures = []
        for case in cases:
            figures += check_case(case, root, cuda=cuda, peak_tflops=peak_tflops)
        device = torch.cuda.get_device_name() if cuda else "CPU"
        print(f"gpu check on {device}, torch {torch.__version__}, {time.perf_counter() - started:.0f} s in all")
        for name, value, unit in figures:
            print(f"{name} = {value:.4g} {unit}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
