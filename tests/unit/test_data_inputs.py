"""Bad data files get a clear answer (issue 16, items 9 and 11).

Each bad file below is written into tmp_path and must raise a DataError whose message names the
file and the line or the key, and whose advice says what to do; nothing from pyarrow or datasets
may reach stderr ahead of it. Good files, the shared samples among them, still load with the
counts they had before the mixed-format check.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from engine.data import build_datasets
from engine.errors import DataError
from presets.schema import DataConfig

NOISE = ("Failed to read", "ArrowInvalid", "pyarrow", "Generating train split", "Traceback")


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


# --------------------------------------------------------------------------- rows and writers


def alpaca(n: int, start: int = 0) -> list[dict]:
    return [{"instruction": f"Question {i}?", "input": "", "output": f"Answer {i}."} for i in range(start, start + n)]


def sharegpt(n: int) -> list[dict]:
    return [{"conversations": [{"from": "human", "value": f"Hi {i}"}, {"from": "gpt", "value": f"Hello {i}."}]} for i in range(n)]


def messages(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"Hi {i}"}, {"role": "assistant", "content": f"Hello {i}."}]} for i in range(n)]


def texts(n: int) -> list[dict]:
    return [{"text": f"Plain text number {i}."} for i in range(n)]


def write_json(path: Path, rows: list[dict]) -> None:
    # One row a line after the "[" line: row N sits on line N + 1.
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n", encoding="utf-8")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_csv(path: Path, rows: list[dict]) -> None:
    # The header is line 1: row N sits on line N + 1. Cells that hold lists are JSON text.
    names = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()})


def write_parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # from_pylist takes its columns from the first row: give every row every column (null when absent).
    names = list(dict.fromkeys(k for r in rows for k in r))
    pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in names} for r in rows]), path)


WRITERS = {"json": write_json, "jsonl": write_jsonl, "csv": write_csv, "parquet": write_parquet}


def truncated_parquet(path: Path) -> None:
    write_parquet(path, alpaca(50))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def raw(content: str | bytes):
    def write(path: Path) -> None:
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")

    return write


@dataclass
class Bad:
    name: str  # file name in tmp_path; its suffix picks the reader
    write: object  # rows (written by the suffix's writer) or a callable(path)
    says: list[str]  # in the message, besides the file's path: the line or key and the facts
    advice: str  # in the advice: what to do
    data: dict = field(default_factory=dict)  # DataConfig fields


MIXED_ADVICE = "split the file into one file per format"
BAD = {
    # 9. mixed formats: every row is checked, not only the first five
    "alpaca then sharegpt, json": Bad(
        "train.json", alpaca(10) + sharegpt(10),
        ["mixed formats", "rows 1-10 are alpaca (instruction/output)", "rows 11-20 are sharegpt ('conversations': from/value turns)",
         "the first alpaca row is line 2", "the first sharegpt row is line 12"], MIXED_ADVICE),
    "sharegpt then alpaca, jsonl": Bad(
        "train.jsonl", sharegpt(10) + alpaca(10),
        ["rows 1-10 are sharegpt", "rows 11-20 are alpaca", "the first alpaca row is line 11"], MIXED_ADVICE),
    "alpaca then sharegpt, parquet": Bad(
        "train.parquet", alpaca(10) + sharegpt(10),
        ["rows 1-10 are alpaca", "rows 11-20 are sharegpt", "the first sharegpt row is row 11"], MIXED_ADVICE),
    "sharegpt then alpaca, csv": Bad(
        "train.csv", sharegpt(10) + alpaca(10),
        ["rows 1-10 are sharegpt", "rows 11-20 are alpaca", "the first alpaca row is line 12"], MIXED_ADVICE),
    "alpaca then text, jsonl": Bad(
        "train.jsonl", alpaca(10) + texts(10),
        ["rows 1-10 are alpaca", "rows 11-20 are text", "the first text row is line 11"], MIXED_ADVICE),
    "text then alpaca, csv": Bad(
        "train.csv", texts(10) + alpaca(10),
        ["rows 1-10 are text", "rows 11-20 are alpaca", "the first alpaca row is line 12"], MIXED_ADVICE),
    "alpaca and text interleaved, json": Bad(
        "train.json", [r for pair in zip(alpaca(6), texts(6)) for r in pair],
        ["6 rows between row 1 and row 11 are alpaca", "6 rows between row 2 and row 12 are text",
         "the first text row is line 3"], MIXED_ADVICE),
    "messages then sharegpt, jsonl": Bad(
        "train.jsonl", messages(10) + sharegpt(10),
        ["rows 1-10 are messages ('messages': role/content turns)", "rows 11-20 are sharegpt ('conversations': from/value turns)",
         "the first sharegpt row is line 11"], MIXED_ADVICE),
    "sharegpt then messages, json": Bad(
        "train.json", sharegpt(10) + messages(10),
        ["rows 1-10 are sharegpt", "rows 11-20 are messages", "the first messages row is line 12"], MIXED_ADVICE),
    "sharegpt turns in two columns": Bad(
        "train.jsonl", sharegpt(3) + [{"messages": r["conversations"]} for r in sharegpt(2)],
        ["rows 1-3 are sharegpt ('conversations': from/value turns)", "rows 4-5 are sharegpt ('messages': from/value turns)",
         "the first sharegpt ('messages': from/value turns) row is line 4"], MIXED_ADVICE),
    "a single stray sharegpt row": Bad(
        "train.jsonl", alpaca(30) + sharegpt(1),
        ["rows 1-30 are alpaca", "row 31 is sharegpt", "the first sharegpt row is line 31"], MIXED_ADVICE),
    "format set in the preset, rows of another": Bad(
        "train.jsonl", alpaca(3) + sharegpt(2),
        ["rows 1-3 are alpaca", "rows 4-5 are sharegpt", "alpaca was set in data.format"], MIXED_ADVICE,
        {"format": "alpaca"}),
    # 11. a mapping to a missing column, for every data.columns key: the key, the column, the
    # columns the file has and the closest one
    "data.columns.instruction": Bad(
        "m.jsonl", [{"prompt": "Q?", "output": "A."}],
        ["data.columns.instruction", "'promt'", "its columns are ['output', 'prompt']", "the closest is 'prompt'"],
        "data.columns.instruction: prompt", {"columns": {"instruction": "promt"}}),
    "data.columns.input": Bad(
        "m.json", [{"instruction": "Q?", "context": "c", "output": "A."}],
        ["data.columns.input", "'contxt'", "its columns are ['context', 'instruction', 'output']", "the closest is 'context'"],
        "data.columns.input: context", {"columns": {"input": "contxt"}}),
    "data.columns.output (the issue's case)": Bad(
        "m.jsonl", [{"instruction": "Q?", "response": "A."}],
        ["data.columns.output", "'answer'", "its columns are ['instruction', 'response']", "the closest is 'response'"],
        "data.columns.output: response", {"columns": {"output": "answer"}}),
    "data.columns.output, the default exists": Bad(
        "m.csv", [{"instruction": "Q?", "output": "A."}],
        ["data.columns.output", "'answer'", "it has the default column 'output'"],
        "remove data.columns.output", {"format": "alpaca", "columns": {"output": "answer"}}),
    "data.columns.system": Bad(
        "m.jsonl", [{"instruction": "Q?", "output": "A.", "persona": "Terse."}],
        ["data.columns.system", "'personna'", "the closest is 'persona'"],
        "data.columns.system: persona", {"columns": {"system": "personna"}}),
    "data.columns.history": Bad(
        "m.parquet", [{"instruction": "Q?", "output": "A.", "past_turns": [["a", "b"]]}],
        ["data.columns.history", "'past_turn'", "the closest is 'past_turns'"],
        "data.columns.history: past_turns", {"columns": {"history": "past_turn"}}),
    "data.columns.history, the default exists": Bad(
        "m.parquet", [{"instruction": "Q?", "output": "A.", "history": [["a", "b"]]}],
        ["data.columns.history", "'hist'", "it has the default column 'history'"],
        "remove data.columns.history", {"columns": {"history": "hist"}}),
    "data.columns.conversations": Bad(
        "m.jsonl", [{"dialog": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]}],
        ["data.columns.conversations", "'dialogue'", "its columns are ['dialog']", "the closest is 'dialog'"],
        "data.columns.conversations: dialog", {"columns": {"conversations": "dialogue"}}),
    "data.columns.tools": Bad(
        "m.json", [{"conversations": sharegpt(1)[0]["conversations"], "functions": "[]"}],
        ["data.columns.tools", "'function'", "the closest is 'functions'"],
        "data.columns.tools: functions", {"columns": {"tools": "function"}}),
    "data.columns.text": Bad(
        "m.jsonl", [{"body": "Some text."}],
        ["data.columns.text", "'bdy'", "its columns are ['body']", "the closest is 'body'"],
        "data.columns.text: body", {"columns": {"text": "bdy"}}),
    # broken and empty files
    "truncated parquet": Bad("t.parquet", truncated_parquet, ["cannot read as parquet"], "export it again"),
    "not parquet at all": Bad("t.parquet", raw(b"instruction,output\nq,a\n"), ["cannot read as parquet"], "convert it to .jsonl"),
    "parquet with a wrong schema": Bad(
        "w.parquet", [{"a": 1, "b": [1.0]}, {"a": 2, "b": [2.0]}],
        ["cannot tell the data format from its columns ['a', 'b']"], "data.columns"),
    "parquet with no rows": Bad("e.parquet", lambda p: _empty_parquet(p), ["the file holds no rows"], "add samples"),
    "empty parquet": Bad("e.parquet", raw(b""), ["the file is empty (0 bytes)"], "write the parquet file again"),
    "empty json": Bad("e.json", raw(""), ["the file holds no rows"], "add samples"),
    "empty jsonl": Bad("e.jsonl", raw("\n"), ["the file holds no rows"], "add samples"),
    "empty csv": Bad("e.csv", raw(""), ["the file is empty"], "header line"),
    "csv with a header only": Bad("e.csv", raw("instruction,output\n"), ["the file holds no rows"], "add samples"),
    "json object wrapping the rows": Bad(
        "w.json", raw(json.dumps({"version": 2, "data": alpaca(3)}, indent=2)),
        [":1: the file is one JSON object, not a list of rows", "its key 'data' holds a list of 3 rows"], "jq '.data'"),
    "json string": Bad("s.json", raw('"just a string"\n'), [":1: the file holds a JSON str, not a list of objects"], ".jsonl"),
    "pretty-printed json object with an error": Bad(
        "p.json", raw('{\n  "instruction": "q",\n  "output": "a"\n  "input": ""\n}\n'), [":4: malformed JSON"], "fix the file"),
}


def _empty_parquet(path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"instruction": pa.array([], pa.string()), "output": pa.array([], pa.string())}), path)


def write(path: Path, content) -> None:
    if callable(content):
        content(path)
    else:
        WRITERS[path.suffix.lstrip(".")](path, content)


@pytest.mark.parametrize("case", list(BAD.values()), ids=list(BAD))
def test_bad_file_gets_a_clear_answer(tokenizer, tmp_path, capfd, case):
    path = tmp_path / case.name
    write(path, case.write)
    capfd.readouterr()
    with pytest.raises(DataError) as info:
        build_datasets(DataConfig(train_files=[str(path)], **case.data), tokenizer)
    error = info.value
    assert error.message.startswith(str(path)), error.message
    for needle in case.says:
        assert needle in error.message, f"{needle!r} not in {error.message!r}"
    assert error.advice and case.advice in error.advice, error.advice
    err = capfd.readouterr().err
    assert not any(noise in err for noise in NOISE), err


def test_bad_parquet_shows_only_tunebench_error_in_the_cli(demo_workspace, tmp_path, capfd):
    from tui.cli import main

    path = tmp_path / "broken.parquet"
    truncated_parquet(path)
    capfd.readouterr()
    code = main(["-w", str(demo_workspace.root), "data", "demo", "--set", f"data.train_files={path}"])
    err = capfd.readouterr().err
    assert code != 0
    assert "cannot read as parquet" in err.replace("\n", "")
    assert not any(noise in err for noise in NOISE), err


# --------------------------------------------------------------------------- good files still load

# Counts measured before the mixed-format check (issue 16): format, rows read, training samples and
# dropped rows at the default max_length of 1024 tokens.
SHARED_COUNTS = {
    "alpaca_en_sample.json": ("alpaca", 300, 300, {}),
    "conversations_zh_sample.jsonl": ("messages", 200, 200, {}),
    "sharegpt_toolcall_sample.json": ("sharegpt", 100, 99, {"no supervised token left after truncation to max_length": 1}),
    "text_sample.jsonl": ("text", 100, 100, {}),
}


@pytest.mark.parametrize("name", sorted(SHARED_COUNTS))
def test_shared_samples_load_with_the_same_counts(tokenizer, shared_datasets, capfd, name):
    fmt, rows, samples, dropped = SHARED_COUNTS[name]
    report = build_datasets(DataConfig(train_files=[str(shared_datasets / name)]), tokenizer).report
    assert (report.format, report.rows_read, report.train_samples, report.dropped) == (fmt, rows, samples, dropped)
    assert not any(noise in capfd.readouterr().err for noise in NOISE)


@dataclass
class Good:
    name: str
    rows: list[dict] | object
    format: str
    samples: int
    dropped: dict = field(default_factory=dict)


GOOD = {
    # Rows skipped for their content, not their shape, are still counted and skipped.
    "alpaca with an empty output": Good("a.json", alpaca(5) + [{"instruction": "Q?", "input": "", "output": ""}], "alpaca", 5,
                                        {"empty output": 1}),
    "alpaca csv with an empty output": Good("a.csv", alpaca(5) + [{"instruction": "Q?", "input": "", "output": ""}], "alpaca", 5,
                                            {"empty output": 1}),
    "sharegpt with a question only": Good(
        "s.jsonl", sharegpt(4) + [{"conversations": [{"from": "human", "value": "Only a question"}]}], "sharegpt", 4,
        {"no assistant turn": 1}),
    "sharegpt with an empty turn list": Good("s.json", sharegpt(4) + [{"conversations": []}], "sharegpt", 4,
                                             {"conversations is not a list of turns": 1}),
    # One turns column written with both key pairs: the normaliser reads both, so nothing is lost.
    "conversations with from/value and role/content turns": Good(
        "c.jsonl", sharegpt(3) + [{"conversations": m["messages"]} for m in messages(3)], "sharegpt", 6),
    "text with an empty text": Good("t.jsonl", texts(3) + [{"text": "  "}], "text", 3, {"empty text": 1}),
    "parquet with nulls in optional columns": Good(
        "p.parquet", alpaca(3) + [{"instruction": "Q?", "input": None, "output": "A."}], "alpaca", 4),
    "json lines under a .json name": Good("l.json", raw("".join(json.dumps(r) + "\n" for r in alpaca(3))), "alpaca", 3),
    "one pretty-printed object": Good("o.json", raw(json.dumps(alpaca(1)[0], indent=2)), "alpaca", 1),
    "one sharegpt row with tools as an object": Good(
        "o.json", raw(json.dumps({**sharegpt(1)[0], "tools": [{"name": "f", "parameters": {}}]}, indent=2)), "sharegpt", 1),
}


@pytest.mark.parametrize("case", list(GOOD.values()), ids=list(GOOD))
def test_good_file_still_loads(tokenizer, tmp_path, case):
    path = tmp_path / case.name
    write(path, case.rows)
    report = build_datasets(DataConfig(train_files=[str(path)]), tokenizer).report
    assert (report.format, report.train_samples, report.dropped) == (case.format, case.samples, case.dropped)
