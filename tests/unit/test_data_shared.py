"""The loaders against real public data (../shared/datasets, skipped when absent), and the
`tunebench data` command end to end."""

from __future__ import annotations

import json

import pytest

from engine.data import IGNORE_INDEX, build_datasets
from presets.schema import DataConfig

# file → (format, rows in the README)
SHARED = {
    "alpaca_en_sample.json": ("alpaca", 300),
    "sharegpt_toolcall_sample.json": ("sharegpt", 100),
    "conversations_zh_sample.jsonl": ("messages", 200),
    "text_sample.jsonl": ("text", 100),
}
# Long enough that nothing is truncated: every row must load and carry labels.
NO_TRUNCATION = 16384


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_the_shared_folder_holds_the_files_this_test_knows(shared_datasets):
    assert {p.name for p in shared_datasets.iterdir() if p.suffix in (".json", ".jsonl")} == set(SHARED)


@pytest.mark.parametrize("name", sorted(SHARED))
def test_every_shared_file_loads_with_labels_in_every_row(tokenizer, shared_datasets, name):
    expected_format, rows = SHARED[name]
    bundle = build_datasets(DataConfig(train_files=[str(shared_datasets / name)], max_length=NO_TRUNCATION), tokenizer)
    report = bundle.report
    assert report.format == expected_format
    assert report.format_detection.startswith("detected")
    assert report.rows_read == rows
    assert report.dropped == {} and report.train_samples == rows
    for row in bundle.train:
        assert sum(1 for label in row["labels"][1:] if label != IGNORE_INDEX) > 0
    if expected_format != "text":
        assert report.template_has_eos_after_assistant is True
        assert report.inexact_masks == 0


def test_tool_call_sample_supervises_calls_and_answers_only(tokenizer, shared_datasets):
    path = shared_datasets / "sharegpt_toolcall_sample.json"
    source = json.loads(path.read_text(encoding="utf-8"))
    bundle = build_datasets(DataConfig(train_files=[str(path)], max_length=NO_TRUNCATION), tokenizer)
    supervised = sorted(
        tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE_INDEX])
        for row in bundle.train
    )
    expected, calls = [], 0
    for conversation in source:
        answers = []
        for turn in conversation["conversations"]:
            if turn["from"] == "gpt":
                answers.append(turn["value"] + "<|im_end|>")
            elif turn["from"] == "function_call":  # supervised, as the call's JSON
                call = json.loads(turn["value"])
                answers.append(json.dumps({"name": call["name"], "arguments": call["arguments"]}, ensure_ascii=False) + "<|im_end|>")
                calls += 1
        expected.append("".join(answers))
    # Exactly the answers and calls of each row: no human turn, no observation, no tool listing.
    assert supervised == sorted(expected)
    assert calls == 73  # every function call of the sample was supervised


def test_data_command_prints_the_report(demo_workspace, capsys):
    from tui.cli import main

    assert main(["data", "demo", "--workspace", str(demo_workspace.root)]) == 0
    out = capsys.readouterr().out
    for needle in ("format: alpaca", "rows read", "56", "supervised tokens", "padding efficiency",
                   "tokens per sample", "rendered example", "The capital of France is Paris.<|im_end|>"):
        assert needle in out, needle


def test_data_command_json_on_a_shared_dataset(demo_workspace, shared_datasets, capsys):
    from tui.cli import main

    code = main(["-w", str(demo_workspace.root), "data", "demo", "--json",
                 "--set", f"data.train_files={shared_datasets / 'conversations_zh_sample.jsonl'}",
                 "--set", "data.format=auto", "--set", "data.max_length=512"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "messages" and report["rows_read"] == 200
    assert report["truncated"] > 0 and report["supervised_share"] > 0.5
