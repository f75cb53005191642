"""Reading rows from local json / jsonl / csv / parquet files and hub datasets.

Local text formats are parsed here rather than through `datasets` so that every problem names
the file and the line (a pyarrow schema error names neither), and so that rows whose columns vary
in type (a `tools` column that is sometimes a string, sometimes a list) load as they are.
Parquet files are read with pyarrow itself: `datasets` would log its own "Failed to read schema"
line to stderr ahead of our error, show a progress bar and copy the file into its cache. Hub ids
go through `datasets`.
"""

from __future__ import annotations

import codecs
import csv
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
        parts = [read_file(p) for p in _folder_files(path)]
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


STREAM_ROWS = 20_000  # rows per chunk when a local file is read as a stream


def iter_source(spec: str, *, hub_split: str = "train", chunk_rows: int | None = None):
    """The rows of a source in chunks (RawRows each, in file order). Local files are read as streams
    (JSON lines line by line, a JSON array item by item, CSV record by record, parquet batch by
    batch), so only one chunk of rows is ever in memory and a bad row is named by its file and line
    when the reader reaches it. A hub dataset comes as one chunk."""
    path = Path(spec).expanduser()
    chunk_rows = chunk_rows or STREAM_ROWS
    if path.is_dir():
        for file in _folder_files(path):
            for raw in _iter_file(file, chunk_rows):
                yield RawRows(str(path), raw.rows, raw.where)
        return
    if path.is_file():
        yield from _iter_file(path, chunk_rows)
        return
    yield read_source(spec, hub_split=hub_split)


def _folder_files(path: Path) -> list[Path]:
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in LOCAL_SUFFIXES)
    if not files:
        raise DataError(
            f"{path}: folder holds no data file",
            "put .json, .jsonl, .csv or .parquet files in it, or name the files in data.train_files",
        )
    return files


def _iter_file(path: Path, chunk_rows: int):
    kind = LOCAL_SUFFIXES.get(path.suffix.lower())
    if kind == "jsonl":
        yield from _chunks(path, _jsonl_rows(path), chunk_rows)
    elif kind == "csv":
        yield from _chunks(path, _csv_rows(path), chunk_rows)
    elif kind == "parquet":
        yield from _chunks(path, _parquet_rows(path), chunk_rows)
    elif kind == "json" and _starts_with_bracket(path):
        yield from _chunks(path, _json_array_rows(path), chunk_rows)
    else:  # JSON lines or one object under a .json name, or an unsupported suffix: read_file says which
        yield read_file(path)


def _chunks(path: Path, rows_and_places, chunk_rows: int):
    """RawRows of at most `chunk_rows` from (row, "file:line") pairs; an empty file is refused."""
    rows: list[dict] = []
    where: list[str] = []
    seen = False
    for row, place in rows_and_places:
        rows.append(row)
        where.append(place)
        if len(rows) >= chunk_rows:
            yield RawRows(str(path), rows, where)
            rows, where, seen = [], [], True
    if rows:
        yield RawRows(str(path), rows, where)
    elif not seen:
        raise DataError(f"{path}: the file holds no rows", "add samples to it or remove it from the preset")


class _CheckedText:
    """Reads a file as UTF-8 text in blocks; on a byte that is not UTF-8, re-reads the file to name
    the line (the error path only)."""

    def __init__(self, path: Path):
        self.path = path
        self.handle = path.open("r", encoding="utf-8-sig", newline="")

    def read(self, size: int = -1) -> str:
        try:
            return self.handle.read(size)
        except UnicodeDecodeError:
            self.handle.close()
            _read_utf8(self.path)  # raises the DataError with the line
            raise

    def __iter__(self):
        while True:
            try:
                line = self.handle.readline()
            except UnicodeDecodeError:
                self.handle.close()
                _read_utf8(self.path)
                raise
            if not line:
                return
            yield line

    def close(self) -> None:
        self.handle.close()


def _starts_with_bracket(path: Path) -> bool:
    stream = _CheckedText(path)
    try:
        while block := stream.read(4096):
            text = block.lstrip()
            if text:
                return text.startswith("[")
        return False
    finally:
        stream.close()


def _jsonl_lines(path: Path, start: int = 0, stop: int | None = None, first_line: int = 1):
    """(line number, bytes, byte offset after it) of each line of a JSON-lines file that holds a
    row, from byte `start` (a line's start, numbered `first_line`) to `stop`. Blank lines hold
    none; a byte-order mark before the first line is dropped."""
    with path.open("rb") as handle:
        handle.seek(start)
        offset = start
        for number, raw in enumerate(handle, start=first_line):
            if stop is not None and offset >= stop:
                return
            offset += len(raw)
            if number == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            if not raw.isspace():
                yield number, raw, offset


def _jsonl_rows(path: Path, start: int = 0, stop: int | None = None, first_line: int = 1):
    """(row, "file:line") for each line of a JSON-lines file (or of its byte range), line by line."""
    for number, raw, _ in _jsonl_lines(path, start, stop, first_line):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{path}:{number}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})",
                f"re-encode the file as UTF-8, e.g. iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}",
            ) from None
        yield _json_object(line, path, number), f"{path}:{number}"


@dataclass(frozen=True)
class JsonlChunk:
    """Where one chunk of a JSON-lines file lies: the rows read_jsonl_chunk gives are those the
    streaming reader (iter_source) hands over as that chunk."""

    start: int  # byte offset of its first line
    stop: int  # byte offset after its last line
    first_line: int
    first_row: int  # the number of its first row in the file (blank lines hold none)


def jsonl_chunks(path: Path, chunk_rows: int | None = None) -> list[JsonlChunk]:
    """The chunks of a JSON-lines file, found by one pass over its lines without parsing them, so
    that several processes can read and normalise the chunks apart."""
    chunk_rows = chunk_rows or STREAM_ROWS
    chunks: list[JsonlChunk] = []
    start, first_line, first_row, rows = 0, 1, 1, 0
    for number, _, offset in _jsonl_lines(path):
        rows += 1
        if rows == chunk_rows:
            chunks.append(JsonlChunk(start, offset, first_line, first_row))
            start, first_line, first_row, rows = offset, number + 1, first_row + rows, 0
    if rows:
        chunks.append(JsonlChunk(start, path.stat().st_size, first_line, first_row))
    return chunks


def read_jsonl_chunk(path: Path, chunk: JsonlChunk) -> RawRows:
    rows, where = [], []
    for row, place in _jsonl_rows(path, chunk.start, chunk.stop, chunk.first_line):
        rows.append(row)
        where.append(place)
    return RawRows(str(path), rows, where)


def read_file(path: Path) -> RawRows:
    kind = LOCAL_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(
            f"{path}: unsupported file type {path.suffix or '(no suffix)'!r}",
            "use .json (array of objects or one object per line), .jsonl, .csv or .parquet",
        )
    if kind == "parquet":
        pairs = list(_parquet_rows(path))
    elif kind == "csv":
        pairs = list(_csv_rows(path))
    elif kind == "json" and _starts_with_bracket(path):
        pairs = list(_json_array_rows(path))
    else:
        text = _read_utf8(path)
        rows, lines = _parse_jsonl(text, path) if kind == "jsonl" else _parse_json_not_array(text, path)
        pairs = [(row, f"{path}:{line}") for row, line in zip(rows, lines)]
    if not pairs:
        raise DataError(f"{path}: the file holds no rows", "add samples to it or remove it from the preset")
    return RawRows(str(path), [row for row, _ in pairs], [place for _, place in pairs])


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


def _parse_jsonl(text: str, path: Path) -> tuple[list[dict], list[int]]:
    rows, lines = [], []
    # Split on newlines only: str.splitlines would also cut at U+2028 and other separators that
    # JSON strings may hold as they are.
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            rows.append(_json_object(line, path, number))
            lines.append(number)
    return rows, lines


def _json_object(line: str, path: Path, number: int) -> dict:
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
    return row


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


BLOCK_CHARS = 1 << 22  # characters read at a time from a JSON array


def _json_array_rows(path: Path):
    """(row, "file:line") for each object of a JSON array, read block by block: each row keeps the
    line it starts on, and only a block (or one row, when a row is larger) is held at a time."""
    stream = _CheckedText(path)
    decoder = json.JSONDecoder()
    buf, pos, eof = "", 0, False
    line, counted = 1, 0  # `line` is the line of buf[counted]

    def line_at(p: int) -> int:
        nonlocal line, counted
        line += buf.count("\n", counted, p)
        counted = p
        return line

    def more() -> bool:
        """Drop what is parsed, append the next block; False at the end of the file."""
        nonlocal buf, pos, eof, counted
        if eof:
            return False
        line_at(pos)
        buf, pos, counted = buf[pos:], 0, 0
        block = stream.read(BLOCK_CHARS)
        eof = not block
        buf += block
        return not eof

    def skip_space() -> None:
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n":
                pos += 1
            if pos < len(buf) or not more():
                return

    def fail(p: int, what: str) -> DataError:
        return DataError(f"{path}:{line_at(p)}: malformed JSON ({what})", "fix the file: it must be one JSON array of objects")

    try:
        skip_space()
        pos += 1  # the [ that _starts_with_bracket saw
        skip_space()
        index = 0
        if not (pos < len(buf) and buf[pos] == "]"):
            while True:
                skip_space()
                while True:
                    try:
                        item, end = decoder.raw_decode(buf, pos)
                        break
                    except json.JSONDecodeError as exc:  # cut by the block's end, or really malformed
                        if eof:
                            raise fail(exc.pos, exc.msg) from None
                        more()
                if not isinstance(item, dict):
                    raise DataError(
                        f"{path}:{line_at(pos)}: item {index + 1} is a {type(item).__name__}, not an object",
                        "the array must hold one object per sample",
                    )
                yield item, f"{path}:{line_at(pos)}"
                index += 1
                pos = end
                skip_space()
                if pos >= len(buf):
                    raise fail(pos, "the array is not closed with ]")
                if buf[pos] == "]":
                    break
                if buf[pos] != ",":
                    raise fail(pos, f"expected ',' or ']' after item {index}")
                pos += 1
        pos += 1  # the closing ]
        skip_space()
        if pos < len(buf):
            raise fail(pos, "extra data after the closing ]")
    finally:
        stream.close()


def _csv_rows(path: Path):
    """(row, "file:line") for each CSV record, read record by record."""
    stream = _CheckedText(path)
    try:
        reader = csv.DictReader(iter(stream))
        try:
            for row in reader:
                if None in row:
                    raise DataError(
                        f"{path}:{reader.line_num}: more fields than the header has columns",
                        "quote fields that contain commas or line breaks",
                    )
                yield dict(row), f"{path}:{reader.line_num}"
        except csv.Error as exc:
            raise DataError(f"{path}:{reader.line_num}: malformed CSV ({exc})", "fix the quoting on that line") from None
        if reader.fieldnames is None:
            raise DataError(f"{path}: the file is empty", "a CSV file needs a header line naming its columns")
    finally:
        stream.close()


PARQUET_BATCH_ROWS = 4096


def _parquet_rows(path: Path):
    """(row, "file row N") for each parquet row, read one record batch at a time."""
    import pyarrow.parquet as pq  # a dependency of datasets

    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty (0 bytes)", "write the parquet file again, or remove it from the preset")

    def unreadable(exc: Exception) -> DataError:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return DataError(
            f"{path}: cannot read as parquet ({first_line})",
            "the file is cut short or is not parquet: copy or export it again (e.g. pandas' to_parquet), "
            "or convert it to .jsonl",
        )

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises many types for a broken file
        raise unreadable(exc) from None
    number = 0
    with parquet:
        batches = parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS)
        while True:
            try:
                batch = next(batches, None)
            except Exception as exc:
                raise unreadable(exc) from None
            if batch is None:
                break
            for row in batch.to_pylist():
                number += 1
                yield row, f"{path} row {number}"
    if number == 0:
        raise DataError(f"{path}: the file holds no rows (columns {parquet.schema_arrow.names})",
                        "add samples to it or remove it from the preset")


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
