"""Bad input: each case raises a DataError that names the file, line or key, and the CLI prints it
without a traceback and exits non-zero."""

from __future__ import annotations

import json

import pytest

from engine.data import build_datasets
from engine.errors import DataError
from presets.schema import DataConfig


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def fails(tokenizer, files, **data) -> DataError:
    with pytest.raises(DataError) as info:
        build_datasets(DataConfig(train_files=files if isinstance(files, list) else [files], **data), tokenizer)
    error = info.value
    assert error.advice, "every data error says what to do"
    return error


def test_missing_file(tokenizer, tmp_path):
    error = fails(tokenizer, str(tmp_path / "nope.json"))
    assert f"{tmp_path / 'nope.json'}: no such file" in str(error)


def test_missing_validation_file(tokenizer, demo_data_file, tmp_path):
    error = fails(tokenizer, str(demo_data_file), val_files=[str(tmp_path / "val.jsonl")])
    assert "val.jsonl: no such file" in str(error)


def test_malformed_jsonl_line_names_file_and_line(tokenizer, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "one"}\n{"text": "two"}\n{"text": "three"\n{"text": "four"}\n', encoding="utf-8")
    error = fails(tokenizer, str(path))
    assert f"{path}:3: malformed JSON line" in str(error)


def test_malformed_json_array_names_the_line(tokenizer, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n {"instruction": "a", "output": "b"},\n {"instruction": "c" "output": "d"}\n]\n', encoding="utf-8")
    error = fails(tokenizer, str(path))
    assert f"{path}:3: malformed JSON" in str(error)


def test_jsonl_line_that_is_not_an_object(tokenizer, tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text('{"text": "a"}\n[1, 2]\n', encoding="utf-8")
    assert f"{path}:2: expected a JSON object" in str(fails(tokenizer, str(path)))


@pytest.mark.parametrize("content", ["", "[]", "\n\n"])
def test_empty_dataset(tokenizer, tmp_path, content):
    path = tmp_path / "empty.json"
    path.write_text(content, encoding="utf-8")
    assert f"{path}: the file holds no rows" in str(fails(tokenizer, str(path)))


def test_no_assistant_turn_anywhere_is_refused(tokenizer, tmp_path):
    path = tmp_path / "questions.json"
    rows = [{"conversations": [{"from": "human", "value": f"question {i}"}]} for i in range(3)]
    path.write_text(json.dumps(rows), encoding="utf-8")
    error = fails(tokenizer, str(path))
    assert f"{path}: no sample has an assistant turn (3 rows)" in str(error)
    assert "data.tags.assistant" in error.advice


def test_column_mapping_naming_a_missing_column(tokenizer, tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"instruction": "q", "output": "a"}]), encoding="utf-8")
    error = fails(tokenizer, str(path), format="alpaca", columns={"output": "answer"})
    assert f"{path}: column 'answer' (data.columns.output" in str(error)
    # An optional column renamed in the preset must exist too.
    error = fails(tokenizer, str(path), columns={"system": "persona"})
    assert "column 'persona' (data.columns.system" in str(error)


def test_explicit_format_without_its_columns(tokenizer, tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "hello"}\n', encoding="utf-8")
    error = fails(tokenizer, str(path), format="sharegpt")
    assert f"{path}: no 'conversations' or 'messages' column" in str(error)


def test_undetectable_format_lists_the_columns(tokenizer, tmp_path):
    path = tmp_path / "odd.json"
    path.write_text(json.dumps([{"prompt": "q", "completion": "a"}]), encoding="utf-8")
    error = fails(tokenizer, str(path))
    assert f"{path}: cannot tell the data format from its columns ['completion', 'prompt']" in str(error)


def test_file_that_is_not_utf8(tokenizer, tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"text": "ok"}\n{"text": "caf\u00e9"}\n'.encode("latin-1"))
    error = fails(tokenizer, str(path))
    assert f"{path}:2: not UTF-8 text" in str(error)


def test_unknown_named_template(tokenizer, demo_data_file):
    error = fails(tokenizer, str(demo_data_file), chat_template="vicuna")
    assert "data.chat_template: unknown chat template 'vicuna'" in str(error)
    assert "chatml" in str(error)


def test_csv_row_with_extra_fields(tokenizer, tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("instruction,output\nq1,a1\nq2,a2,extra\n", encoding="utf-8")
    assert f"{path}:3: more fields than the header" in str(fails(tokenizer, str(path)))


def test_unsupported_file_type(tokenizer, tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("hello", encoding="utf-8")
    assert f"{path}: unsupported file type '.txt'" in str(fails(tokenizer, str(path)))


def test_every_answer_truncated_away(tokenizer, tmp_path):
    path = tmp_path / "long.json"
    path.write_text(json.dumps([{"instruction": "word " * 100, "output": "a"}]), encoding="utf-8")
    error = fails(tokenizer, str(path), max_length=16)
    assert "lost its answer to truncation at max_length 16" in str(error)
    assert "data.max_length" in error.advice


def test_cli_reports_bad_data_without_traceback(demo_workspace, capsys):
    from tui.cli import main

    (demo_workspace.data_dir / "demo_capitals.json").write_text('[{"instruction": "q", "output": "a"},\n{oops}\n]', encoding="utf-8")
    code = main(["--workspace", str(demo_workspace.root), "data", "demo"])
    captured = capsys.readouterr()
    assert code != 0
    assert "demo_capitals.json:2: malformed JSON" in captured.err.replace("\n", "")
    assert "Traceback" not in captured.err + captured.out


def test_hub_id_that_cannot_be_loaded(tokenizer, monkeypatch):
    # conftest keeps the hub offline: the real hub path runs and fails without touching the network.
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    error = fails(tokenizer, "someone/no-such-dataset")
    assert "someone/no-such-dataset: cannot load hub dataset (split 'train')" in str(error)


def test_a_bad_line_far_into_a_streamed_file_is_named_by_its_line(tokenizer, tmp_path, monkeypatch):
    """JSON-lines files are read chunk by chunk (issue 17): the error still names the file's own line,
    and the rows before it were never all held at once."""
    from engine.data import build as build_module
    from engine.data import loading

    monkeypatch.setattr(loading, "STREAM_ROWS", 3)
    path = tmp_path / "big.jsonl"
    good = [json.dumps({"instruction": f"Q{i}?", "output": f"A{i}."}) for i in range(10)]
    path.write_text("\n".join(good[:8] + ['{"instruction": "Q8?", "output": '] + good[8:]) + "\n", encoding="utf-8")
    chunks = []
    with pytest.raises(DataError, match=r"big\.jsonl:9: malformed JSON line"):
        build_module._read_each([str(path)], DataConfig(train_files=[str(path)]), lambda samples: chunks.append(len(samples)))
    assert chunks == [3, 3]  # rows 1-6 went on in two chunks before line 9 was read
    path.write_text("\n".join(good) + "\n", encoding="utf-8")
    bundle = build_datasets(DataConfig(train_files=[str(path)]), tokenizer)
    assert bundle.report.rows_read == 10 and bundle.report.train_samples == 10


@pytest.mark.parametrize("suffix", ["json", "csv"])
def test_a_bad_row_far_into_a_json_array_or_csv_is_named_by_its_line_while_streaming(suffix, tmp_path, monkeypatch):
    """JSON arrays and CSV files stream too (issue 17): the rows before a bad one went on in chunks
    before the reader reached it, and the error names the file's own line."""
    import csv as csv_module

    from engine.data import build as build_module
    from engine.data import loading

    monkeypatch.setattr(loading, "STREAM_ROWS", 3)
    path = tmp_path / f"big.{suffix}"
    rows = [{"instruction": f"Q{i}?", "output": f"A{i}."} for i in range(10)]
    if suffix == "json":  # one item a line after the [ line: item i is on line i + 2
        items = [json.dumps(row) for row in rows]
        items[7] = '{"instruction": "Q7?" "output": "A7."}'
        path.write_text("[\n" + ",\n".join(items) + "\n]\n", encoding="utf-8")
        expected = r"big\.json:9: malformed JSON"
    else:  # the header is line 1: row i is on line i + 2
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv_module.writer(handle)
            writer.writerow(["instruction", "output"])
            writer.writerows([[row["instruction"], row["output"]] + (["extra"] if i == 7 else []) for i, row in enumerate(rows)])
        expected = r"big\.csv:9: more fields than the header has columns"
    chunks = []
    with pytest.raises(DataError, match=expected):
        build_module._read_each([str(path)], DataConfig(train_files=[str(path)]), lambda samples: chunks.append(len(samples)))
    assert chunks == [3, 3]  # rows 1-6 went on in two chunks before line 9 was read


def test_a_json_array_read_in_tiny_blocks_gives_every_row_and_line_of_a_whole_read(shared_datasets, monkeypatch):
    """Block boundaries fall inside strings, escapes and multi-byte characters; nothing changes."""
    from engine.data import loading

    for name in ("alpaca_en_sample.json", "sharegpt_toolcall_sample.json"):
        path = shared_datasets / name
        whole = loading.read_file(path)
        monkeypatch.setattr(loading, "BLOCK_CHARS", 7)
        streamed = [raw for raw in loading.iter_source(str(path), chunk_rows=64)]
        monkeypatch.setattr(loading, "BLOCK_CHARS", 1 << 22)
        assert [len(raw.rows) for raw in streamed][:1] == [64]
        assert [row for raw in streamed for row in raw.rows] == whole.rows
        assert [place for raw in streamed for place in raw.where] == whole.where
        assert whole.where[1] != whole.where[0]


def test_a_parquet_file_streams_in_batches(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from engine.data import loading

    monkeypatch.setattr(loading, "PARQUET_BATCH_ROWS", 4)
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"instruction": [f"Q{i}?" for i in range(10)], "output": [f"A{i}." for i in range(10)]}), path)
    chunks = list(loading.iter_source(str(path), chunk_rows=3))
    assert [len(raw.rows) for raw in chunks] == [3, 3, 3, 1]
    assert chunks[-1].rows == [{"instruction": "Q9?", "output": "A9."}] and chunks[-1].where == [f"{path} row 10"]
