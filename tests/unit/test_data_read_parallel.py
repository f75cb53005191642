"""A large JSON-lines file is read and normalised by several processes, chunk by chunk (issue 17):
the samples, the counts and the first bad line must be those of a read in one process."""

from __future__ import annotations

import json

import pytest

from engine.data import build as build_module
from engine.data import loading
from engine.errors import DataError
from presets.schema import DataConfig


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 4 rows, and every JSON-lines file counted as large."""
    monkeypatch.setattr(loading, "STREAM_ROWS", 4)
    monkeypatch.setattr(build_module, "PARALLEL_READ_BYTES", 0)


def _lines(count: int) -> list[str]:
    lines = []
    for i in range(count):
        if i % 7 == 3:  # a row that normalisation drops (no answer)
            lines.append(json.dumps({"conversations": [{"from": "human", "value": f"q{i}"}]}))
        else:
            lines.append(json.dumps({"conversations": [{"from": "human", "value": f"q{i} \u2028 ü"},
                                                       {"from": "gpt", "value": f"a{i}"}]}, ensure_ascii=False))
    return lines


def _read(path, tmp_path, processes: int, name: str):
    data = DataConfig(train_files=[str(path)], max_length=64)
    samples, split = build_module._read_samples([str(path)], data, tmp_path, name, processes=processes)
    return samples.to_list(), (split.rows, split.dropped, split.formats)


def test_a_file_read_in_parallel_gives_the_samples_and_counts_of_one_process(small_chunks, tmp_path):
    lines = _lines(30)
    lines[5:5] = ["", "   "]  # blank lines hold no row but count as lines
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode() + b"\n")  # with a byte-order mark

    one = _read(path, tmp_path, 1, "one")
    several = _read(path, tmp_path, 2, "several")
    assert several == one
    assert len(one[0]) == 30 - 4 and one[1][0] == 30 and one[1][1] == {"no assistant turn": 4}
    assert one[0][5]["where"] == f"{path}:9"  # row 6's line: the blank lines count
    assert len(list(tmp_path.glob("several-0-*.arrow"))) == 8  # 30 rows in chunks of 4, each its own file


def test_the_first_bad_line_is_named_as_in_one_process(small_chunks, tmp_path):
    lines = _lines(30)
    lines[13] = '{"conversations": ['  # chunk 4
    lines[25] = "not json"  # a later chunk, perhaps read first by another process
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    messages = []
    for processes in (1, 2):
        with pytest.raises(DataError) as info:
            _read(path, tmp_path, processes, f"p{processes}")
        messages.append(str(info.value))
    assert messages[0] == messages[1] and f"{path}:14: malformed JSON line" in messages[0]


def test_a_line_holding_a_unicode_line_separator_is_one_row(tmp_path):
    """JSON strings may hold U+2028 as it is; str.splitlines would cut the line there."""
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(_lines(3)) + "\n", encoding="utf-8")
    whole = loading.read_file(path)
    streamed = [row for raw in loading.iter_source(str(path)) for row in raw.rows]
    assert whole.rows == streamed and len(streamed) == 3
    assert whole.rows[0]["conversations"][0]["value"] == "q0 \u2028 ü"
