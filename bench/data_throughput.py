"""Data pipeline throughput and batch efficiency, measured side by side in one run.

1. Tokenization + assistant-only masking (build_datasets: render every prefix, tokenize, mask,
   truncate) in samples/s on ../shared/datasets/alpaca_en_sample.json, next to the plain baseline
   of rendering each conversation once and tokenizing it without a mask.
2. Useful tokens / token slots of the batches the real collators build at max length 512:
   packed vs right-padded, same samples, same batch size.

Run: python bench/data_throughput.py [--repeats 5] [--batch-size 8]
The last lines are the headline figures, `name = value unit`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATASET = REPO.parent / "shared" / "datasets" / "alpaca_en_sample.json"
MAX_LENGTH = 512


def _time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dataset", type=Path, default=DATASET)
    args = parser.parse_args()
    if not args.dataset.is_file():
        print(f"{args.dataset} is absent: nothing to measure", file=sys.stderr)
        return 1

    import json

    from engine.data import IGNORE_INDEX, build_datasets, make_collator
    from engine.data.render import ChatRenderer, resolve_chat_template, tokenize_many
    from engine.tiny import make_tiny_model
    from presets.schema import DataConfig
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        # The tiny tokenizer, made on the spot (as the tests do): nothing downloads.
        tokenizer = AutoTokenizer.from_pretrained(make_tiny_model(Path(tmp) / "tiny"))
    data = DataConfig(train_files=[str(args.dataset)], max_length=MAX_LENGTH)
    rows = json.loads(args.dataset.read_text(encoding="utf-8"))

    # --- 1. tokenization + masking vs plain tokenization
    build_datasets(data, tokenizer)  # warm-up: template compilation, caches
    masked_s = _time(lambda: build_datasets(data, tokenizer), args.repeats)
    renderer = ChatRenderer(tokenizer, resolve_chat_template(tokenizer, data))
    conversations = [
        [{"role": "user", "content": "\n".join(p for p in (r["instruction"], r.get("input", "")) if p)},
         {"role": "assistant", "content": r["output"]}]
        for r in rows
    ]

    def plain():
        texts = [renderer.render(c, None, add_generation_prompt=False) for c in conversations]
        return [ids[:MAX_LENGTH] for ids in tokenize_many(tokenizer, texts)]

    plain_s = _time(plain, args.repeats)
    masked_rate = len(rows) / masked_s
    plain_rate = len(rows) / plain_s
    print(f"{len(rows)} samples of {args.dataset.name}, median of {args.repeats} runs")
    print(f"  build_datasets (load, render prefixes, tokenize, mask, truncate): {masked_s * 1000:.1f} ms")
    print(f"  baseline (render once, tokenize, no mask):                       {plain_s * 1000:.1f} ms")

    # --- 2. batch efficiency of the real collators
    bundle = build_datasets(data, tokenizer)
    samples = list(bundle.train)  # rows as dicts (bundle.train is an Arrow dataset)
    useful = sum(len(s["input_ids"]) for s in samples)
    slots = {}
    supervised = {}
    for packing in (False, True):
        collate = make_collator(tokenizer, packing=packing, max_length=MAX_LENGTH)
        total = labels = 0
        for start in range(0, len(samples), args.batch_size):
            batch = collate(samples[start : start + args.batch_size])
            total += batch["input_ids"].numel()
            labels += int((batch["labels"] != IGNORE_INDEX).sum())
        slots[packing] = total
        supervised[packing] = labels
    packed_eff = useful / slots[True]
    padded_eff = useful / slots[False]
    print(f"  batches of {args.batch_size} samples, max length {MAX_LENGTH}: {useful} useful tokens; "
          f"padded {slots[False]} slots, packed {slots[True]} slots")
    print(f"  supervised tokens in batches: padded {supervised[False]}, packed {supervised[True]} "
          "(packing unlabels each sample's first token, which no loss uses)")

    print(f"tokenize_mask_throughput = {masked_rate:.0f} samples/s")
    print(f"tokenize_plain_throughput = {plain_rate:.0f} samples/s")
    print(f"masking_cost = {plain_rate / masked_rate:.2f} x")
    print(f"packing_efficiency_packed = {packed_eff:.3f} ratio")
    print(f"packing_efficiency_padded = {padded_eff:.3f} ratio")
    print(f"packing_gain = {packed_eff / padded_eff:.2f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
