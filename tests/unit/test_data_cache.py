"""Issue 17: the prepared data as Arrow files, the cache, and one preparation among concurrent callers.

The reference digests below were taken from the in-memory pipeline this replaced (commit e168475,
lists of ints built in one process) on the shared datasets, with the tiny tokenizer (its factory
is deterministic): the Arrow pass must give every sample the same tokens and labels, in the same
order, with one map process or several.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from engine.data import build_datasets
from engine.data.cache import cache_dir_for, clear, list_entries
from presets.schema import DataConfig

# (file, settings) → sha256 of [[input_ids, labels] of every train row, then every eval row][:16]
REFERENCE = {
    ("alpaca_en_sample.json", "whole"): "d02874275074522c",
    ("alpaca_en_sample.json", "split"): "255e19cd3cbc28df",
    ("conversations_zh_sample.jsonl", "whole"): "6f8e0092a322b6d8",
    ("conversations_zh_sample.jsonl", "split"): "76acfdf4b9616695",
    ("sharegpt_toolcall_sample.json", "whole"): "9295190cde2b9d3b",
    ("sharegpt_toolcall_sample.json", "split"): "6c1cdd5a80a9b21c",
    ("text_sample.jsonl", "whole"): "56a5be631fd2bee3",
    ("text_sample.jsonl", "split"): "0954a3aa1d81ce4c",
}
SETTINGS = {"whole": dict(max_length=16384), "split": dict(max_length=256, val_ratio=0.1)}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _digest(bundle) -> str:
    rows = [[list(r["input_ids"]), list(r["labels"])] for r in bundle.train]
    rows += [[list(r["input_ids"]), list(r["labels"])] for r in (bundle.eval or [])]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name, settings", sorted(REFERENCE), ids=[f"{n}-{s}" for n, s in sorted(REFERENCE)])
def test_every_sample_has_the_tokens_and_labels_of_the_previous_pipeline(tokenizer, shared_datasets, name, settings):
    data = DataConfig(train_files=[str(shared_datasets / name)], **SETTINGS[settings])
    # Two map processes on the split case: the pool's shards come back in order.
    bundle = build_datasets(data, tokenizer, num_proc=2 if settings == "split" else 1)
    assert _digest(bundle) == REFERENCE[(name, settings)]


def test_the_rows_are_memory_mapped_arrow(tokenizer, shared_datasets):
    from datasets import Dataset

    bundle = build_datasets(DataConfig(train_files=[str(shared_datasets / "alpaca_en_sample.json")]), tokenizer)
    assert isinstance(bundle.train, Dataset)
    assert bundle.train.cache_files and bundle.train.column_names == ["input_ids", "labels"]


# --------------------------------------------------------------------------- the cache


def _rows(n: int, tag: str = "") -> list[dict]:
    return [{"instruction": f"Question {i}{tag}?", "input": "", "output": f"Answer number {i}."} for i in range(n)]


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(_rows(12)), encoding="utf-8")
    return path


def _build(tokenizer, cache, path, **settings):
    return build_datasets(DataConfig(train_files=[str(path)], **settings), tokenizer, cache_dir=cache)


def test_a_second_preparation_is_a_cache_hit_with_the_same_rows_and_report(tokenizer, data_file, tmp_path):
    cache = tmp_path / "cache"
    first = _build(tokenizer, cache, data_file, val_ratio=0.2)
    second = _build(tokenizer, cache, data_file, val_ratio=0.2)
    assert (first.cache_hit, second.cache_hit) == (False, True) and first.cache_key == second.cache_key
    assert _digest(first) == _digest(second)
    assert first.report == second.report and first.eval_examples == second.eval_examples
    assert [e.key for e in list_entries(cache)] == [first.cache_key]


@pytest.mark.parametrize("change", ["file", "tokenizer", "template", "max_length", "split", "seed", "system_prompt"])
def test_a_change_that_shapes_the_rows_misses_the_cache(tokenizer, data_file, tmp_path, change):
    cache = tmp_path / "cache"
    base = dict(val_ratio=0.2, max_length=256)
    key = _build(tokenizer, cache, data_file, **base).cache_key
    settings, tok = dict(base), tokenizer
    if change == "file":
        data_file.write_text(json.dumps(_rows(12, tag=" again")), encoding="utf-8")
    elif change == "tokenizer":
        tok = _copy(tokenizer)
        tok.add_tokens(["<extra>"])
    elif change == "template":
        settings["chat_template"] = "alpaca"
    elif change == "max_length":
        settings["max_length"] = 200
    elif change == "split":
        settings["val_ratio"] = 0.3
    elif change == "seed":
        settings["shuffle_seed"] = 7
    else:
        settings["system_prompt"] = "Be brief."
    bundle = _build(tok, cache, data_file, **settings)
    assert not bundle.cache_hit and bundle.cache_key != key


def test_what_does_not_shape_the_rows_hits_the_cache(tokenizer, data_file, tmp_path):
    cache = tmp_path / "cache"
    key = _build(tokenizer, cache, data_file).cache_key
    os.utime(data_file, ns=(1, 1))  # touched: same content, new mtime
    again = _build(tokenizer, cache, data_file, packing=True)  # packing acts in the collator
    assert again.cache_hit and again.cache_key == key and again.report.packing is True


def test_cache_clear_frees_one_entry_or_all(tokenizer, data_file, tmp_path):
    cache = tmp_path / "cache"
    one = _build(tokenizer, cache, data_file).cache_key
    two = _build(tokenizer, cache, data_file, max_length=48).cache_key
    assert sorted(e.key for e in list_entries(cache)) == sorted([one, two])
    assert clear(cache, one[:8]) == [one]
    assert [e.key for e in list_entries(cache)] == [two]
    with pytest.raises(KeyError):
        clear(cache, "nosuchkey")
    assert clear(cache) == [two] and list_entries(cache) == []


def test_a_refused_file_leaves_no_cache_behind(tokenizer, tmp_path):
    from engine.errors import DataError

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{broken\n', encoding="utf-8")
    with pytest.raises(DataError, match="bad.jsonl:2"):
        _build(tokenizer, tmp_path / "cache", bad)
    assert not (tmp_path / "cache").exists()


def test_runs_and_their_evals_share_the_workspace_cache(tmp_path):
    ws = tmp_path / "ws"
    assert cache_dir_for(ws / "runs" / "r1") == (ws / "cache").resolve()
    assert cache_dir_for(ws / "runs" / "r1" / "evals" / "e1") == (ws / "cache").resolve()
    assert cache_dir_for(tmp_path / "elsewhere") is None


def _copy(tokenizer):
    import copy

    return copy.deepcopy(tokenizer)


def test_progress_is_reported_every_tenth_with_rate_and_eta():
    from engine.data.progress import progress_reporter

    lines: list[str] = []
    now = [0.0]
    report = progress_reporter(lines.append, clock=lambda: now[0])
    for done in range(0, 1001, 50):
        now[0] = done / 100  # 100 samples a second
        report("tokenising", done, 1000)
    assert len(lines) == 11 and lines[0].startswith("preparing data 0 %")
    assert lines[4] == "preparing data 40 % (400/1,000 samples, 100 rows/s, ETA 6 s)"
    assert lines[-1].startswith("preparing data 100 %")


def test_a_preparation_reports_its_progress(tokenizer, data_file, tmp_path):
    calls = []
    build_datasets(DataConfig(train_files=[str(data_file)]), tokenizer, cache_dir=tmp_path / "cache",
                   progress=lambda stage, done, total: calls.append((stage, done, total)))
    assert calls and calls[-1] == ("tokenising", 12, 12)
    calls.clear()
    build_datasets(DataConfig(train_files=[str(data_file)]), tokenizer, cache_dir=tmp_path / "cache",
                   progress=lambda *a: calls.append(a))
    assert calls == []  # a cache hit tokenises nothing


def test_a_run_reports_preparation_progress_to_its_sink_then_uses_the_cache(tiny_model_dir, demo_data_file, tmp_path):
    """What the dashboard's log shows while a run prepares its data, and on the next run."""
    from helpers.training import RecordingSink, tiny_preset

    from engine.models import load_tokenizer
    from engine.train import _prepare_data

    preset = tiny_preset("lora", tiny_model_dir, demo_data_file)
    first, second = RecordingSink(), RecordingSink()
    bundle = _prepare_data(preset, load_tokenizer(preset.model), first, tmp_path / "cache")
    texts = [args[1] for name, args in first.calls if name == "event"]
    assert any(t.startswith("preparing data 100 %") for t in texts) and not bundle.cache_hit
    bundle = _prepare_data(preset, load_tokenizer(preset.model), second, tmp_path / "cache")
    texts = [args[1] for name, args in second.calls if name == "event"]
    assert bundle.cache_hit and any("from the cache" in t for t in texts)
    assert not any(t.startswith("preparing data") for t in texts)


def test_streaming_tokenises_while_iterating_and_reports_on_a_sample(tokenizer, tmp_path, monkeypatch):
    from datasets import IterableDataset

    from engine.data import build as build_module

    monkeypatch.setattr(build_module, "STREAM_REPORT_ROWS", 10)
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in _rows(30)), encoding="utf-8")
    prepared = build_datasets(DataConfig(train_files=[str(path)]), tokenizer)
    streamed = build_datasets(DataConfig(train_files=[str(path)], streaming=True), tokenizer, cache_dir=tmp_path / "cache")
    assert isinstance(streamed.train, IterableDataset)
    assert streamed.report.sampled == 10 and streamed.report.train_samples == 10 and prepared.report.sampled == 0
    as_pairs = sorted(json.dumps([list(r["input_ids"]), list(r["labels"])]) for r in streamed.train)
    assert as_pairs == sorted(json.dumps([list(r["input_ids"]), list(r["labels"])]) for r in prepared.train)


def test_streaming_refuses_a_validation_share_and_a_run_without_max_steps(tiny_model_dir, demo_data_file):
    from helpers.training import RecordingSink, tiny_preset
    from pydantic import ValidationError

    from engine.errors import DataError
    from engine.models import load_tokenizer
    from engine.train import _prepare_data

    with pytest.raises(ValidationError, match="streaming cannot hold out val_ratio"):
        DataConfig(train_files=["x.jsonl"], streaming=True, val_ratio=0.1)
    preset = tiny_preset("lora", tiny_model_dir, demo_data_file, "data.streaming=true", "data.val_ratio=0")
    preset = preset.model_copy(update={"training": preset.training.model_copy(update={"max_steps": None})})
    with pytest.raises(DataError, match="training.max_steps"):
        _prepare_data(preset, load_tokenizer(preset.model), RecordingSink(), None)


def test_a_map_over_processes_leaves_os_environ_the_same_object(tokenizer, shared_datasets):
    """datasets' process pool swaps os.environ for a copy; Rich (and anything else that kept a
    reference) would no longer see variables set afterwards, e.g. COLUMNS."""
    before = os.environ
    build_datasets(DataConfig(train_files=[str(shared_datasets / "text_sample.jsonl")]), tokenizer, num_proc=2)
    assert os.environ is before
