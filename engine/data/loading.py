"""Reading rows from local json / jsonl / csv / parquet files and hub datasets.

Local text formats are parsed here rather than through `datasets` so that every problem names
the file and the line (a pyarrow schema error names neither), and so that rows whose columns vary
in type (a `tools` column that is sometimes a string, sometimes a list) load as they are.
Parquet files are read with pyarrow itself: `datasets` would log its own "Failed to read schema"
line to stderr ahead of our error, show a progress bar and copy the file into its cache. Hub ids
go through `datasets`.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

from engine.errors import DataError

LOCAL_SUFFIXES = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class RawRows:
    """The rows of one source and where each row came from ("file:line" or "hub-id[index]")."""

    source: str
    rows: list[dict]
    where: list[str]

    def columns(self) -> set[str]:
        names: set[str] = set()
        for row in self.rows:
            names.update(row)
        return names


def read_source(spec: str, *, hub_split: str = "train") -> RawRows:
    """Read every row of a local file (or the files in a folder) or a hub dataset."""
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in LOCAL_SUFFIXES)
        if not files:
            raise DataError(
                f"{path}: folder holds no data file",
                "put .json, .jsonl, .csv or .parquet files in it, or name the files in data.train_files",
            )
        parts = [read_file(p) for p in files]
        return RawRows(str(path), [r for p in parts for r in p.rows], [w for p in parts for w in p.where])
    if path.exists():
        return read_file(path)
    if _HUB_ID.match(spec) and Path(spec).suffix.lower() not in LOCAL_SUFFIXES:
        return read_hub(spec, hub_split)
    raise DataError(
        f"{spec}: no such file",
        "check data.train_files / data.val_files (paths are relative to where the command runs; "
        "{workspace} expands to the workspace folder), or give a hub id as owner/name",
    )


STREAM_ROWS = 20_000  # rows per chunk when a JSON-lines file is read as a stream


def iter_source(spec: str, *, hub_split: str = "train", chunk_rows: int | None = None):
    """The rows of a source in chunks (RawRows each, in file order). A local JSON-lines file is read
    line by line, so only one chunk of it is ever in memory; other sources come as one chunk.
    Errors name the file and the line as read_source's do."""
    path = Path(spec).expanduser()
    if path.is_file() and LOCAL_SUFFIXES.get(path.suffix.lower()) == "jsonl":
        yield from _stream_jsonl(path, chunk_rows or STREAM_ROWS)
        return
    yield read_source(spec, hub_split=hub_split)


def _stream_jsonl(path: Path, chunk_rows: int):
    rows: list[dict] = []
    where: list[str] = []
    seen = False
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{path}:{number}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})",
                    f"re-encode the file as UTF-8, e.g. iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}",
                ) from None
            if not line.strip():
                continue
            parsed, _ = _parse_jsonl(line, path, first_line=number)
            rows += parsed
            where.append(f"{path}:{number}")
            if len(rows) >= chunk_rows:
                yield RawRows(str(path), rows, where)
                rows, where, seen = [], [], True
    if rows or not seen:
        if not rows:
            raise DataError(f"{path}: the file holds no rows", "add samples to it or remove it from the preset")
        yield RawRows(str(path), rows, where)


def read_file(path: Path) -> RawRows:
    kind = LOCAL_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(
            f"{path}: unsupported file type {path.suffix or '(no suffix)'!r}",
            "use .json (array of objects or one object per line), .jsonl, .csv or .parquet",
        )
    if kind == "parquet":
        rows = _read_parquet(path)
        return RawRows(str(path), rows, [f"{path} row {i + 1}" for i in range(len(rows))])
    text = _read_utf8(path)
    if kind == "csv":
        rows, lines = _parse_csv(text, path)
    elif kind == "jsonl":
        rows, lines = _parse_jsonl(text, path)
    elif not text.lstrip().startswith("["):
        rows, lines = _parse_json_not_array(text, path)
    else:
        rows, lines = _parse_json_array(text, path)
    if not rows:
        raise DataError(f"{path}: the file holds no rows", "add samples to it or remove it from the preset")
    return RawRows(str(path), rows, [f"{path}:{line}" for line in lines])


def _read_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")  # a byte-order mark is harmless; drop it
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})",
            f"re-encode the file as UTF-8, e.g. iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}",
        ) from None


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _parse_jsonl(text: str, path: Path, first_line: int = 1) -> tuple[list[dict], list[int]]:
    rows, lines = [], []
    for number, line in enumerate(text.splitlines(), start=first_line):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}:{number}: malformed JSON line ({exc.msg} at column {exc.colno})",
                "fix that line: each line must hold one complete JSON object",
            ) from None
        if not isinstance(row, dict):
            raise DataError(
                f"{path}:{number}: expected a JSON object, got {type(row).__name__}",
                "each line must be one object such as {\"instruction\": …, \"output\": …}",
            )
        rows.append(row)
        lines.append(number)
    return rows, lines


def _parse_json_not_array(text: str, path: Path) -> tuple[list[dict], list[int]]:
    """A .json file that is no array: one object per line, one (pretty-printed) row, or a wrapper
    such as {"data": [...]} that the user must unwrap."""
    if not text.strip():
        return [], []
    try:
        whole = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" or exc.lineno == 1:
            return _parse_jsonl(text, path)  # JSON lines under a .json name; that parser names a bad line
        raise DataError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno})",
                        "fix the file: it must be one JSON array of objects, or one object per line") from None
    if isinstance(whole, dict):
        wrapped = _wrapped_rows(whole)
        if wrapped is None:
            return [whole], [_line_of(text, len(text) - len(text.lstrip()))]
        key, rows = wrapped
        raise DataError(
            f"{path}:1: the file is one JSON object, not a list of rows; its key {key!r} holds a list of {len(rows)} rows",
            f"make the file that list itself (e.g. jq '.{key}' {path.name} > rows.json), or write one object per "
            "line as .jsonl",
        )
    raise DataError(
        f"{path}:1: the file holds a JSON {type(whole).__name__}, not a list of objects",
        'write a JSON array of objects ([{"instruction": …, "output": …}, …]) or one object per line as .jsonl',
    )


def _wrapped_rows(obj: dict) -> tuple[str, list] | None:
    """The key whose value is a list of row objects, as in {"data": [{…}, …]}. An object that holds
    a list of turns (objects with a role) is itself a sharegpt / messages row, tools and all."""
    lists = [(key, value) for key, value in obj.items()
             if isinstance(value, list) and value and all(isinstance(item, dict) for item in value)]
    if any("from" in item or "role" in item for _, value in lists for item in value):
        return None
    return lists[0] if lists else None


def _parse_json_array(text: str, path: Path) -> tuple[list[dict], list[int]]:
    """Parse a JSON array item by item, so each row keeps the line it starts on."""
    decoder = json.JSONDecoder()
    rows, lines = [], []
    pos = text.index("[") + 1
    length = len(text)

    def skip_space(p: int) -> int:
        while p < length and text[p] in " \t\r\n":
            p += 1
        return p

    def fail(p: int, what: str) -> DataError:
        return DataError(f"{path}:{_line_of(text, p)}: malformed JSON ({what})", "fix the file: it must be one JSON array of objects")

    line, counted = 1, 0
    pos = skip_space(pos)
    if pos < length and text[pos] == "]":
        return rows, lines
    while True:
        pos = skip_space(pos)
        try:
            item, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise fail(exc.pos, exc.msg) from None
        if not isinstance(item, dict):
            raise DataError(
                f"{path}:{_line_of(text, pos)}: item {len(rows) + 1} is a {type(item).__name__}, not an object",
                "the array must hold one object per sample",
            )
        rows.append(item)
        # Count newlines since the previous item only: counting from the start is quadratic.
        line += text.count("\n", counted, pos)
        counted = pos
        lines.append(line)
        pos = skip_space(end)
        if pos >= length:
            raise fail(pos, "the array is not closed with ]")
        if text[pos] == "]":
            break
        if text[pos] != ",":
            raise fail(pos, f"expected ',' or ']' after item {len(rows)}")
        pos += 1
    if text[pos + 1 :].strip():
        raise fail(pos + 1, "extra data after the closing ]")
    return rows, lines


def _parse_csv(text: str, path: Path) -> tuple[list[dict], list[int]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows, lines = [], []
    try:
        for row in reader:
            if None in row:
                raise DataError(
                    f"{path}:{reader.line_num}: more fields than the header has columns",
                    "quote fields that contain commas or line breaks",
                )
            rows.append({k: v for k, v in row.items()})
            lines.append(reader.line_num)
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({exc})", "fix the quoting on that line") from None
    if reader.fieldnames is None:
        raise DataError(f"{path}: the file is empty", "a CSV file needs a header line naming its columns")
    return rows, lines


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq  # a dependency of datasets

    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty (0 bytes)", "write the parquet file again, or remove it from the preset")
    try:
        with pq.ParquetFile(path) as parquet:
            table = parquet.read()
    except Exception as exc:  # pyarrow raises many types for a broken file
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"{path}: cannot read as parquet ({first_line})",
            "the file is cut short or is not parquet: copy or export it again (e.g. pandas' to_parquet), "
            "or convert it to .jsonl",
        ) from None
    rows = table.to_pylist()
    if not rows:
        raise DataError(f"{path}: the file holds no rows (columns {table.schema.names})",
                        "add samples to it or remove it from the preset")
    return rows


def read_hub(dataset_id: str, split: str) -> RawRows:
    from datasets import load_dataset

    try:
        dataset = load_dataset(dataset_id, split=split)
    except Exception as exc:  # network, auth, missing split: all user-facing
        raise DataError(
            f"{dataset_id}: cannot load hub dataset (split {split!r}): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
            "check the id and data.hub_split, your network and HF_TOKEN for gated data; or download it and point "
            "data.train_files at the local file",
        ) from None
    rows = dataset.to_list()
    if not rows:
        raise DataError(f"{dataset_id}: split {split!r} holds no rows", "pick another split with data.hub_split")
    return RawRows(dataset_id, rows, [f"{dataset_id}[{split}] row {i + 1}" for i in range(len(rows))])
