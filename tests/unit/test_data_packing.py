"""Collators: padding, packing, and the proof that packed samples do not see each other."""

from __future__ import annotations

import json

import pytest

from engine.data import IGNORE_INDEX, batch_efficiency, build_datasets, make_collator, plan_packs
from presets.schema import DataConfig


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def samples(tokenizer, tmp_path_factory):
    """Multi-turn conversations of varied lengths (8 to ~60 tokens), so packs need padding too."""
    words = "the model learns the question with care after the rain in the north".split()
    rows = []
    for i in range(10):
        turns = []
        for t in range(1 + i % 3):
            turns += [{"from": "human", "value": " ".join(words[: 2 + (i + t) % 7])},
                      {"from": "gpt", "value": " ".join(words[(i * t) % 5 : 4 + (i * 3 + t) % 9])}]
        rows.append({"conversations": turns})
    path = tmp_path_factory.mktemp("pack") / "conv.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    return list(build_datasets(DataConfig(train_files=[str(path)], max_length=128), tokenizer).train)  # rows as dicts


def test_plan_packs_fits_every_sample_once():
    lengths = [50, 10, 30, 64, 5, 40, 20]
    packs = plan_packs(lengths, 64)
    assert sorted(i for pack in packs for i in pack) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in pack) <= 64 for pack in packs)
    assert len(packs) == 4  # 219 tokens need at least 4 rows of 64


def test_batch_efficiency_counts_useful_tokens_over_slots():
    assert batch_efficiency([10, 30], batch_size=2, max_length=64, packing=False) == pytest.approx(40 / 60)
    assert batch_efficiency([10, 30], batch_size=2, max_length=64, packing=True) == pytest.approx(1.0)
    # Two rows: 50 | 40+20=60 → width 60, 110 / 120.
    assert batch_efficiency([50, 40, 20], batch_size=3, max_length=64, packing=True) == pytest.approx(110 / 120)


def test_padding_collator(tokenizer, samples):
    batch = make_collator(tokenizer, packing=False, max_length=128)(samples[:4])
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    lengths = [len(s["input_ids"]) for s in samples[:4]]
    assert batch["input_ids"].shape == (4, max(lengths))
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    for row, n in enumerate(lengths):
        assert batch["input_ids"][row, :n].tolist() == samples[row]["input_ids"]
        assert batch["labels"][row, :n].tolist() == samples[row]["labels"]
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert (batch["input_ids"][row, n:] == tokenizer.pad_token_id).all()


def test_packing_collator_restarts_positions_and_hides_boundaries(tokenizer, samples):
    max_length = 64
    batch = make_collator(tokenizer, packing=True, max_length=max_length)(samples)
    assert set(batch) == {"input_ids", "labels", "position_ids"}  # no attention_mask, on purpose
    assert batch["input_ids"].shape[0] < len(samples)  # several samples per row
    assert batch["input_ids"].shape[1] <= max_length
    packed_tokens = 0
    for row in range(batch["input_ids"].shape[0]):
        positions = batch["position_ids"][row].tolist()
        starts = [i for i, p in enumerate(positions) if p == 0]
        # Row-end padding repeats one position that neither starts nor continues a sample.
        end_of_row = next((i for i in range(starts[-1] + 1, len(positions)) if positions[i] != positions[i - 1] + 1), len(positions))
        assert len(set(positions[end_of_row:])) <= 1 and 0 not in positions[end_of_row:]
        assert (batch["labels"][row, end_of_row:] == IGNORE_INDEX).all()
        for start, end in zip(starts, starts[1:] + [end_of_row]):
            assert positions[start:end] == list(range(end - start))
            assert batch["labels"][row, start] == IGNORE_INDEX  # no prediction across a boundary
        packed_tokens += int((batch["labels"][row] != IGNORE_INDEX).sum())
    expected = sum(sum(1 for label in s["labels"][1:max_length] if label != IGNORE_INDEX) for s in samples)
    assert packed_tokens == expected


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packed_loss_equals_token_weighted_unpacked_loss(tokenizer, tiny_model_dir, samples, attn):
    """transformers reads sample boundaries from position_ids (masking_utils.find_packed_sequence_indices)
    when no attention_mask and no cache are given: no packed sample may attend to another."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn, dtype=torch.float32).eval()
    packed = make_collator(tokenizer, packing=True, max_length=96)(samples)
    # The test is only meaningful if rows hold several samples and some rows carry padding.
    assert packed["input_ids"].shape[0] < len(samples)
    assert (packed["input_ids"] == tokenizer.pad_token_id).any()
    with torch.no_grad():
        # use_cache=False as in training (Trainer sets config.use_cache = args.use_cache, False by
        # default): with a cache, transformers skips the packed-sequence detection.
        packed_loss = model(**packed, use_cache=False).loss.item()
    assert packed_loss == pytest.approx(_unpacked_loss(model, tokenizer, samples), rel=1e-5, abs=1e-6)


def _unpacked_loss(model, tokenizer, samples, max_length=96):
    """The token-weighted mean of each sample's loss, every sample alone in its batch."""
    import torch

    single = make_collator(tokenizer, packing=False, max_length=max_length)
    total, count = 0.0, 0
    with torch.no_grad():
        for sample in samples:
            batch = single([sample])
            n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            total += model(**batch, use_cache=False).loss.item() * n
            count += n
    return total / count


def test_flattened_batch_carries_each_samples_boundaries(tokenizer, samples):
    """Flash attention: the micro-batch in one row, cu_seq_lens at the samples' boundaries."""
    import torch

    batch = make_collator(tokenizer, packing=True, max_length=48, attn_implementation="flash_attention_2")(samples)
    lengths = [min(len(s["input_ids"]), 48) for s in samples]
    assert max(len(s["input_ids"]) for s in samples) > 48  # truncation is part of what is checked
    assert set(batch) == {"input_ids", "labels", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"}
    assert batch["input_ids"].shape == batch["position_ids"].shape == (1, sum(lengths))  # no padding at all
    bounds = [0, *torch.tensor(lengths).cumsum(0).tolist()]
    assert batch["cu_seq_lens_q"].tolist() == batch["cu_seq_lens_k"].tolist() == bounds
    assert batch["cu_seq_lens_q"].dtype == torch.int32  # what flash-attn's varlen kernels take
    assert batch["max_length_q"] == batch["max_length_k"] == max(lengths)
    for sample, start, end in zip(samples, bounds, bounds[1:]):
        assert batch["input_ids"][0, start:end].tolist() == sample["input_ids"][: end - start]
        assert batch["position_ids"][0, start:end].tolist() == list(range(end - start))
        assert batch["labels"][0, start] == IGNORE_INDEX
        assert batch["labels"][0, start + 1 : end].tolist() == sample["labels"][1 : end - start]
    # flex_attention reads the boundaries from the position ids alone.
    flex = make_collator(tokenizer, packing=True, max_length=48, attn_implementation="flex_attention")(samples)
    assert set(flex) == {"input_ids", "labels", "position_ids"} and torch.equal(flex["input_ids"], batch["input_ids"])
    # sdpa and eager keep rows with a block-diagonal mask.
    assert make_collator(tokenizer, packing=True, max_length=48, attn_implementation="sdpa")(samples)["input_ids"].shape[0] > 1


def test_rows_packed_ahead_are_flattened_at_their_samples_boundaries(tokenizer, samples):
    """data.packing_strategy: dataset: the rows are split back into their samples for cu_seq_lens."""
    from engine.data.collate import pack_rows

    rows = [pack_rows([(s["input_ids"], s["labels"]) for s in samples[i : i + 3]]) for i in range(0, len(samples), 3)]
    features = [{"input_ids": ids, "labels": labels, "position_ids": positions} for ids, labels, positions in rows]
    flat = make_collator(tokenizer, packing=True, max_length=512, attn_implementation="flash_attention_2")(features)
    plain = make_collator(tokenizer, packing=True, max_length=512, attn_implementation="flash_attention_2")(samples)
    for key in ("input_ids", "labels", "position_ids", "cu_seq_lens_q"):
        assert flat[key].tolist() == plain[key].tolist(), key


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_flattened_layout_gives_the_unpacked_loss(tokenizer, tiny_model_dir, samples, attn):
    """The flash layout's tokens, labels and position ids are right, whatever reads the boundaries:
    eager and sdpa read them from the position ids of the one row (the flash kwargs go unused)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn, dtype=torch.float32).eval()
    flat = make_collator(tokenizer, packing=True, max_length=96, attn_implementation="flash_attention_2")(samples)
    with torch.no_grad():
        loss = model(**flat, use_cache=False).loss.item()
    assert loss == pytest.approx(_unpacked_loss(model, tokenizer, samples), rel=1e-5, abs=1e-6)


def test_flex_attention_packed_loss_equals_unpacked_loss(tokenizer, tiny_model_dir, samples):
    """flex_attention's document mask (a BlockMask from the position ids) keeps packed samples apart.
    Forward only: torch has no CPU backward for flex_attention (it compiles, ~30 s on the CPU once)."""
    import torch
    from transformers import AutoModelForCausalLM

    flex = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="flex_attention", dtype=torch.float32).eval()
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager", dtype=torch.float32).eval()
    flat = make_collator(tokenizer, packing=True, max_length=96, attn_implementation="flex_attention")(samples)
    with torch.no_grad():
        loss = flex(**flat, use_cache=False).loss.item()
    assert loss == pytest.approx(_unpacked_loss(reference, tokenizer, samples), rel=1e-5, abs=1e-6)


def test_tokens_per_s_counts_only_real_tokens_of_packed_rows(tokenizer, samples, tmp_path):
    """The callback's token count (tokens_per_s, tokens_seen) leaves out the padding at row ends."""
    import torch

    from engine.callback import EngineCallback
    from presets.loader import load_preset_text

    preset = load_preset_text("name: t\nmodel: {path: /models/base}\ndata: {train_files: [/data/t.json]}\n", "t.yaml")
    lengths = [min(len(s["input_ids"]), 64) for s in samples]
    for attn in ("sdpa", "flash_attention_2"):
        batch = make_collator(tokenizer, packing=True, max_length=64, attn_implementation=attn)(samples)
        if attn == "sdpa":
            assert batch["input_ids"].numel() > sum(lengths)  # the rows carry padding
        callback = EngineCallback(preset, tmp_path, object(), device=torch.device("cpu"), run_info={})
        callback.count_batch(batch)
        assert (int(callback._tokens), int(callback._samples)) == (sum(lengths), len(samples)), attn


def test_one_token_sample_at_a_row_end_keeps_its_token(tokenizer, tmp_path):
    """Padding after a one-token sample (position 0) must not read as its continuation (1)."""
    import torch

    from engine.callback import EngineCallback
    from presets.loader import load_preset_text

    features = [{"input_ids": [5] * 6, "labels": [5] * 6}, {"input_ids": [7, 8, 9], "labels": [7, 8, 9]}, {"input_ids": [4], "labels": [4]}]
    batch = make_collator(tokenizer, packing=True, max_length=6, attn_implementation="sdpa")(features)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 0, 2, 2]]
    preset = load_preset_text("name: t\nmodel: {path: /models/base}\ndata: {train_files: [/data/t.json]}\n", "t.yaml")
    callback = EngineCallback(preset, tmp_path, object(), device=torch.device("cpu"), run_info={})
    callback.count_batch(batch)
    assert (int(callback._tokens), int(callback._samples)) == (10, 3)


@pytest.mark.cuda
@pytest.mark.parametrize("attn", ["flash_attention_2", "flex_attention"])
def test_padding_free_packing_on_cuda_gives_the_unpacked_loss(tokenizer, tiny_model_dir, samples, attn):
    """On the GPU kernel itself: one flattened row (with cu_seq_lens for flash) against each sample
    alone, forward and backward, in bf16 as runs use it."""
    import torch
    from transformers import AutoModelForCausalLM

    if attn == "flash_attention_2":
        pytest.importorskip("flash_attn")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn, dtype=torch.bfloat16).to("cuda")
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa", dtype=torch.bfloat16).to("cuda").eval()
    flat = make_collator(tokenizer, packing=True, max_length=96, attn_implementation=attn)(samples)
    flat = {k: v.to("cuda") if torch.is_tensor(v) else v for k, v in flat.items()}
    loss = model(**flat, use_cache=False).loss
    loss.backward()  # the padding-free path trains, not only evaluates
    single = make_collator(tokenizer, packing=False, max_length=96)
    total, count = 0.0, 0
    with torch.no_grad():
        for sample in samples:
            batch = {k: v.to("cuda") for k, v in single([sample]).items()}
            n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            total += reference(**batch, use_cache=False).loss.float().item() * n
            count += n
    assert loss.item() == pytest.approx(total / count, rel=2e-2)


def test_padded_batch_loss_matches_too(tokenizer, tiny_model_dir, samples):
    """Sanity check of the reference: a padded batch gives the same token-weighted loss."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()
    collate = make_collator(tokenizer, packing=False, max_length=96)
    with torch.no_grad():
        padded = model(**collate(samples), use_cache=False).loss.item()
        packed = model(**make_collator(tokenizer, packing=True, max_length=96)(samples), use_cache=False).loss.item()
    assert padded == pytest.approx(packed, rel=1e-5, abs=1e-6)


def test_best_fit_decreasing_fills_rows_most_tightly():
    from engine.data.collate import plan_packs_bfd

    lengths = [50, 10, 30, 64, 5, 40, 20, 14, 34]
    packs = plan_packs_bfd(lengths, 64)
    assert sorted(i for pack in packs for i in pack) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in pack) <= 64 for pack in packs)
    # 64 | 50+14 | 40+20 (best fit leaves the 24-room row, not the 14-room one, for 20) | 34+30 | 10+5
    assert sorted(sorted(lengths[i] for i in pack) for pack in packs) == [[5, 10], [14, 50], [20, 40], [30, 34], [64]]
    assert plan_packs_bfd([100, 3], 64) == [[0], [1]]  # longer than a row: a row of its own (cut by the collator)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_whole_dataset_packing_gives_the_unpacked_loss(tokenizer, tiny_model_dir, tmp_path, attn):
    """data.packing_strategy: dataset packs the prepared rows ahead of training; one batch of every
    packed row has the loss of one padded batch of every sample (same supervised tokens)."""
    import torch
    from transformers import AutoModelForCausalLM

    rows = [{"conversations": [{"from": "human", "value": "word " * (1 + i % 5)}, {"from": "gpt", "value": "ok " * (2 + i % 7)}]}
            for i in range(14)]
    path = tmp_path / "conv.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    plain = build_datasets(DataConfig(train_files=[str(path)], max_length=96), tokenizer)
    packed = build_datasets(DataConfig(train_files=[str(path)], max_length=96, packing=True), tokenizer)
    assert packed.train.column_names == ["input_ids", "labels", "position_ids"]
    assert len(packed.train) < len(plain.train) and max(len(r) for r in packed.train["input_ids"]) <= 96
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn, dtype=torch.float32).eval()
    with torch.no_grad():
        unpacked = model(**make_collator(tokenizer, packing=False, max_length=96)(list(plain.train)), use_cache=False).loss.item()
        whole = model(**make_collator(tokenizer, packing=True, max_length=96)(list(packed.train)), use_cache=False).loss.item()
    assert whole == pytest.approx(unpacked, rel=1e-5, abs=1e-6)
