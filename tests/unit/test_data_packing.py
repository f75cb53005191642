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
        for start, end in zip(starts, starts[1:] + [len(positions)]):
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
    single = make_collator(tokenizer, packing=False, max_length=96)
    with torch.no_grad():
        # use_cache=False as in training (Trainer sets config.use_cache = args.use_cache, False by
        # default): with a cache, transformers skips the packed-sequence detection.
        packed_loss = model(**packed, use_cache=False).loss.item()
        total, count = 0.0, 0
        for sample in samples:
            batch = single([sample])
            n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            total += model(**batch, use_cache=False).loss.item() * n
            count += n
    assert packed_loss == pytest.approx(total / count, rel=1e-5, abs=1e-6)


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
