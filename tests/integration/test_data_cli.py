"""Bad data files through the CLI (issue 16, items 9 and 11): `tunebench data` and `tunebench doctor`
exit non-zero with tunebench's own message, name the file and the line or the key, print no traceback
and no library line, and leave the workspace as it was."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tui.cli import main

ALPACA = [{"instruction": f"Capital of country {i}?", "input": "", "output": f"City {i}"} for i in range(6)]
SHAREGPT = [{"conversations": [{"from": "human", "value": f"Hi {i}"}, {"from": "gpt", "value": f"Hello {i}"}]}
            for i in range(6)]
TEXT = [{"text": f"Plain text number {i}."} for i in range(6)]


def _json(rows) -> str:
    return json.dumps(rows, indent=1)


def _jsonl(rows) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def _write_parquet(path, rows) -> None:
    pq.write_table(pa.Table.from_pylist(rows), path)


def _truncated_parquet(path, rows) -> None:
    _write_parquet(path, rows)
    path.write_bytes(path.read_bytes()[:-40])


# (id, file name, how to write it, extra overrides, fragments the message must hold)
CASES = [
    ("alpaca-then-sharegpt", "mixed.json", lambda p: p.write_text(_json(ALPACA + SHAREGPT)), [],
     ["mixed.json", "mixed formats", "alpaca", "sharegpt", "line"]),
    ("sharegpt-then-alpaca", "mixed.json", lambda p: p.write_text(_json(SHAREGPT + ALPACA)), [],
     ["mixed.json", "mixed formats", "alpaca", "sharegpt", "line"]),
    ("alpaca-then-text", "mixed.jsonl", lambda p: p.write_text(_jsonl(ALPACA + TEXT)), [],
     ["mixed.jsonl", "mixed formats", "text", "line"]),
    ("missing-output-column", "train.json", lambda p: p.write_text(_json(ALPACA)), ["data.columns.output=answer"],
     ["train.json", "data.columns.output", "answer"]),
    ("missing-instruction-column", "train.json", lambda p: p.write_text(_json(ALPACA)),
     ["data.columns.instruction=question"], ["train.json", "data.columns.instruction", "question"]),
    ("truncated-parquet", "train.parquet", lambda p: _truncated_parquet(p, ALPACA), [], ["train.parquet"]),
    ("object-not-list", "train.json", lambda p: p.write_text(json.dumps({"data": ALPACA})), [],
     ["train.json", "'data'"]),
    ("empty-file", "train.jsonl", lambda p: p.write_text(""), [], ["train.jsonl"]),
]


def _files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# Every case through `data`; the preflight (`doctor PRESET`) reads the data the same way, once.
VERB_CASES = [("data", case) for case in CASES] + [("doctor", CASES[0])]


@pytest.mark.parametrize("verb, name, write, overrides, expected", [(verb, *case[1:]) for verb, case in VERB_CASES],
                         ids=[f"{verb}-{case[0]}" for verb, case in VERB_CASES])
def test_a_bad_data_file_is_refused_with_its_name_and_nothing_changes(
        verb, name, write, overrides, expected, workspace, tiny_model_dir, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # rich wraps at the console width: keep the paths whole
    data = tmp_path / "data" / name
    data.parent.mkdir()
    write(data)
    before = _files(tmp_path)
    settings = [f"model.path={tiny_model_dir}", f"data.train_files=[{data}]", *overrides]
    capfd.readouterr()
    code = main(["-w", str(workspace.root), verb, "demo", *[a for s in settings for a in ("--set", s)]])
    captured = capfd.readouterr()
    output = " ".join((captured.out + captured.err).split())
    assert code != 0, output
    assert "Traceback" not in output and "ArrowInvalid" not in output
    for fragment in expected:
        assert fragment in output, f"{fragment!r} not in {output!r}"
    assert _files(tmp_path) == before, "a refused file changes nothing in the workspace"


def test_data_twice_hits_the_cache_which_cache_ls_shows_and_cache_clear_frees(demo_workspace, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    root = str(demo_workspace.root)
    assert main(["-w", root, "data", "demo"]) == 0
    first = capsys.readouterr().out
    assert "cache: prepared" in first
    key = first.split("cache: prepared ")[1].split()[0]
    assert main(["-w", root, "data", "demo"]) == 0
    assert f"cache: hit {key}" in capsys.readouterr().out
    assert main(["-w", root, "cache", "ls"]) == 0
    listing = capsys.readouterr().out
    assert key in listing and "demo_capitals.json" in listing and "1 entry" in listing
    assert main(["-w", root, "cache", "clear", "no-such-key"]) == 2
    assert "no single cache entry matches no-such-key" in " ".join(capsys.readouterr().err.split())
    assert main(["-w", root, "cache", "clear", key[:6]]) == 0
    assert "removed 1 entry" in capsys.readouterr().out
    assert main(["-w", root, "cache", "ls"]) == 0
    assert "no prepared datasets" in capsys.readouterr().out
