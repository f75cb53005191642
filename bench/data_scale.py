"""Data preparation at scale (issue 17): an OpenHermes-shaped dataset, prepared into the Arrow cache.

Generates multi-turn sharegpt rows by code (a system prompt in a third of them, 1-4 exchanges,
log-normal turn lengths around 30 words a question and 90 an answer: OpenHermes-2.5's few hundred
tokens a conversation, with a long tail), then measures, with the tiny tokenizer
(engine/tiny.py, made on the spot; nothing downloads):

- prep_rows_per_s: build_datasets into an empty cache (read, normalise, render, tokenise, mask,
  report), the default map processes;
- prep_vs_datasets_map: a plain batched `datasets.map` over the same rows (render each conversation
  once with the same template, tokenise; no mask, no report), same processes: its time over ours;
- prep_rss_growth_mb_10k / _100k: peak resident memory of the preparing process over its
  post-import baseline (each size in a fresh child process; the read and map workers, which hold one
  chunk or one batch each, not counted);
- cache_hit_ratio: the second preparation of the same data (a cache hit) over the first;
- packing_*: real training steps (tiny model, AdamW, batch 8; max_length 512 for alpaca, 2048 for
  the longer tool-call conversations) on the shared alpaca and sharegpt (tool-call) samples, per-batch and whole-dataset packing over right padding, in useful
  (non-padding) tokens per second; packing_useful_tokens_per_s_gain is whole-dataset packing on
  alpaca.

Run: nice python bench/data_scale.py [--rows 100000] [--steps 30]
The last lines are the headline figures, `name = value unit`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "datasets"
# Each at a max_length that leaves most of its samples whole (the tool-call conversations run to
# about 1,000 tokens of the tiny tokenizer: 97 % of them would be cut at 512, leaving no padding),
# and the share of --steps that keeps each file's part of the run about as long.
PACKING_FILES = {"alpaca_en_sample.json": (512, 1.0), "sharegpt_toolcall_sample.json": (2048, 0.3)}
MAX_LENGTH = 2048
WORDS = ("the model data train answer question system user value token layer weight learning rate batch "
         "gradient python function return list example because however therefore result number string "
         "file line error memory process thread cache report format template").split()


def _text(rng: random.Random, mean_words: float) -> str:
    n = max(1, int(rng.lognormvariate(math.log(mean_words), 0.9)))
    return " ".join(rng.choice(WORDS) for _ in range(min(n, 3000)))


def openhermes_rows(count: int, seed: int = 0):
    """OpenHermes-2.5-shaped rows: sharegpt conversations, system prompt in about a third."""
    rng = random.Random(seed)
    for _ in range(count):
        turns = []
        if rng.random() < 0.33:
            turns.append({"from": "system", "value": _text(rng, 15)})
        for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
            turns.append({"from": "human", "value": _text(rng, 20)})
            turns.append({"from": "gpt", "value": _text(rng, 60)})
        yield {"conversations": turns}


def write_rows(path: Path, count: int) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for row in openhermes_rows(count):
            handle.write(json.dumps(row) + "\n")
    return path


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def child_prepare(tokenizer_dir: str, path: str, cache: str) -> None:
    """In a fresh process: the post-import baseline, then the peak while preparing."""
    from transformers import AutoTokenizer

    import datasets  # noqa: F401  (imports counted in the baseline, as in a run)
    from engine.data import build_datasets
    from presets.schema import DataConfig

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    baseline = _rss_mb()
    started = time.perf_counter()
    bundle = build_datasets(DataConfig(train_files=[path], max_length=MAX_LENGTH), tokenizer, cache_dir=cache)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"growth_mb": peak - baseline, "seconds": seconds, "rows": len(bundle.train)}))


def _child(tokenizer_dir: Path, path: Path, cache: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(tokenizer_dir), str(path), str(cache)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def plain_map(tokenizer, path: Path, num_proc: int) -> float:
    """The baseline: rows → one rendering per conversation → tokens, through datasets.map."""
    from datasets import Dataset

    from engine.data.render import ChatRenderer, template_for

    template = template_for(tokenizer, None).text
    roles = {"system": "system", "human": "user", "gpt": "assistant"}

    def encode(batch):
        renderer = ChatRenderer(tokenizer, template)
        texts = [renderer.render([{"role": roles[t["from"]], "content": t["value"]} for t in turns], None,
                                 add_generation_prompt=False) for turns in batch["conversations"]]
        ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        return {"input_ids": [x[:MAX_LENGTH] for x in ids]}

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        rows = Dataset.from_json(str(path), cache_dir=tmp)
        rows.map(encode, batched=True, batch_size=1000, num_proc=num_proc if num_proc > 1 else None,
                 remove_columns=rows.column_names, cache_file_name=str(Path(tmp) / "plain.arrow"))
        return time.perf_counter() - started


LAYOUTS = {"padding": dict(packing=False), "batch packing": dict(packing=True, packing_strategy="batch"),
           "dataset packing": dict(packing=True, packing_strategy="dataset")}


def _shared_or_made(name: str) -> Path:
    """A shared sample, or rows of its shape made by code when the shared folder is absent."""
    path = SHARED / name
    if path.is_file():
        return path
    rng = random.Random(1)
    path = Path(tempfile.mkdtemp()) / name
    if name.startswith("alpaca"):
        rows = [{"instruction": _text(rng, 20), "input": "", "output": _text(rng, 120)} for _ in range(300)]
    else:
        rows = list(openhermes_rows(100, seed=1))
    path.write_text(json.dumps(rows))
    return path


def packing_rates(model_dir: Path, source: Path, steps: int, max_length: int, batch_size: int = 8) -> dict[str, float]:
    """Useful (non-padding) tokens per second of real training steps, per layout of the rows. The
    layouts take turns step by step, each with its own model and optimizer, so a change of load on
    the machine falls on all of them alike."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.data import build_datasets, make_collator
    from presets.schema import DataConfig

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    setups = {}
    for layout, settings in LAYOUTS.items():
        torch.manual_seed(0)
        data = DataConfig(train_files=[str(source)], max_length=max_length, **settings)
        rows = list(build_datasets(data, tokenizer).train)
        collate = make_collator(tokenizer, packing=data.packing, max_length=max_length)
        model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa", dtype=torch.float32)
        model.train()
        setups[layout] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4),
                          [collate(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)])
    useful = dict.fromkeys(setups, 0)
    seconds = dict.fromkeys(setups, 0.0)
    for step in range(steps + 2):
        for layout, (model, optimizer, batches) in setups.items():
            batch = batches[step % len(batches)]
            started = time.perf_counter()
            model(**batch, use_cache=False).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if step >= 2:  # two warm-up steps
                seconds[layout] += time.perf_counter() - started
                mask = batch["attention_mask"] if "attention_mask" in batch else batch["input_ids"] != tokenizer.pad_token_id
                useful[layout] += int(mask.sum())
    return {layout: useful[layout] / seconds[layout] for layout in setups}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=30, help="training steps per side of the packing measurement")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_prepare(*args.child)
        return 0

    from transformers import AutoTokenizer

    from engine.data import build_datasets
    from engine.data.build import default_processes
    from engine.tiny import make_tiny_model
    from presets.schema import DataConfig

    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = make_tiny_model(tmp / "tiny")
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        small = write_rows(tmp / "rows-10k.jsonl", min(10_000, args.rows))
        large = write_rows(tmp / f"rows-{args.rows}.jsonl", args.rows)
        procs = default_processes(args.rows)
        print(f"{args.rows:,} OpenHermes-shaped rows ({large.stat().st_size / 2**20:.0f} MiB of jsonl), "
              f"max_length {MAX_LENGTH}, {procs} map processes")

        # Memory: fresh processes, so the peak is this preparation's alone.
        rss_small = _child(model_dir, small, tmp / "cache-small")
        rss_large = _child(model_dir, large, tmp / "cache-rss")
        print(f"  child preparation: {min(10_000, args.rows):,} rows {rss_small['seconds']:.1f} s (+{rss_small['growth_mb']:.0f} MB), "
              f"{args.rows:,} rows {rss_large['seconds']:.1f} s (+{rss_large['growth_mb']:.0f} MB)")

        # The large child's preparation is the first one; this process's, on its cache, the second.
        data = DataConfig(train_files=[str(large)], max_length=MAX_LENGTH)
        first_s = rss_large["seconds"]
        started = time.perf_counter()
        second = build_datasets(data, tokenizer, cache_dir=tmp / "cache-rss")
        second_s = time.perf_counter() - started
        assert second.cache_hit and len(second.train) == rss_large["rows"]
        print(f"  prepared {rss_large['rows']:,} rows in {first_s:.1f} s; cache hit in {second_s:.2f} s")

        plain_s = plain_map(tokenizer, large, procs)
        print(f"  plain datasets.map (render once, tokenise, no mask, no report): {plain_s:.1f} s")

        gains = {}
        for name, (max_length, share) in PACKING_FILES.items():
            rates = packing_rates(model_dir, _shared_or_made(name), max(5, round(args.steps * share)), max_length)
            gains[name] = {layout: rate / rates["padding"] for layout, rate in rates.items()}
            print(f"  training at batch 8, max_length {max_length}, on {name}: " + ", ".join(
                f"{layout} {rate:,.0f} useful tokens/s ({gains[name][layout]:.2f} x)" for layout, rate in rates.items()))

    print(f"prep_rows_per_s = {args.rows / first_s:.0f} rows/s")
    print(f"prep_vs_datasets_map = {plain_s / first_s:.2f} x")
    print(f"prep_rss_growth_mb_{min(10_000, args.rows) // 1000}k = {rss_small['growth_mb']:.0f} MB")
    print(f"prep_rss_growth_mb_{args.rows // 1000}k = {rss_large['growth_mb']:.0f} MB")
    print(f"cache_hit_ratio = {second_s / first_s:.3f} x")
    alpaca, sharegpt = (gains[name] for name in PACKING_FILES)
    print(f"packing_batch_gain_sharegpt = {sharegpt['batch packing']:.2f} x")
    print(f"packing_dataset_gain_sharegpt = {sharegpt['dataset packing']:.2f} x")
    print(f"packing_batch_gain_alpaca = {alpaca['batch packing']:.2f} x")
    print(f"packing_useful_tokens_per_s_gain = {alpaca['dataset packing']:.2f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
