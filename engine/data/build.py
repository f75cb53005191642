"""build_datasets: files → normalised samples → validation split → tokens and labels → report.

The pass writes Arrow files, never a Python list of the whole set: the normalised samples of each
source go to a samples file as they are read, a batched `datasets.map` (over several processes for
large inputs) renders, tokenises, masks and truncates them, and the report is computed from the
columns of that result. The rows the trainer sees are the map's own files, memory-mapped, with the
kept rows in the seed's order as an index mapping over them. With a cache
folder (engine.data.cache) the whole result is kept under a key of everything that shapes it, so the
next run, `tunebench data` or eval of the same data loads it instead of preparing it again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import random
import shutil
import tempfile
import time
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from engine.data.collate import batch_efficiency
from engine.data.formats import Sample, detect_format, normalize
from engine.data.loading import LOCAL_SUFFIXES, JsonlChunk, iter_source, jsonl_chunks, read_jsonl_chunk
from engine.data.render import IGNORE_INDEX, ChatRenderer, _call_text, template_for, tokenize_many
from engine.data.report import DataReport, LengthStats, RenderedExample, histogram
from engine.errors import DataError
from presets.schema import DataConfig

if TYPE_CHECKING:
    import numpy as np
    from datasets import Dataset

log = logging.getLogger("tunebench.data")
REPORT_BATCH_SIZE = 8  # batch size of DataReport's padding / packing efficiency
_TOKENIZE_CHUNK = 2048  # texts per tokenizer call (batched in Rust)
MAP_BATCH = 1000  # samples per call of the batched map
MAX_PROCESSES = 8  # map processes at most (tokenisation saturates memory bandwidth beyond this)
PARALLEL_MIN_ROWS = 4000  # below this one process is faster than starting a pool
PROGRESS_STEPS = 50  # the map runs in about this many blocks when progress is reported
PARALLEL_READ_BYTES = 64 * 2**20  # a JSON-lines file this large is read by several processes
ROWS_FILE = "rows.json"  # an entry's map files and the positions of the kept rows in them

# progress(stage, done, total): stage is "tokenising"; done and total count samples.
Progress = Callable[[str, int, int], None]


@dataclass
class Example:
    """A validation conversation for generation: the prompt turns and the answer to compare against."""

    messages: list[dict]  # system/user/assistant/tool turns up to, not including, the last assistant turn
    reference: str  # the last assistant turn's text
    tools: list[dict] | None = None  # tool definitions, when the template takes them natively


@dataclass
class DataBundle:
    train: "Dataset"  # datasets.Dataset of {"input_ids", "labels"} (lists of ints); labels -100 = no loss
    eval: "Dataset | None"
    eval_examples: list[Example]
    report: DataReport
    chat_template: str | None = None  # the Jinja the conversations were rendered with (None: text format)
    cache_key: str | None = None  # the cache entry it came from or went to (None: no cache)
    cache_hit: bool = False


@dataclass
class _Encoded:
    sample: Sample
    input_ids: list[int]
    labels: list[int]
    raw_length: int
    closed: bool | None  # every answer closed by an end-of-turn token (None: text)
    eot_id: int | None
    exact: bool
    prefix_rendered: bool = False  # its mask came from rendering each prefix (no slot layout: render.py)
    supervised: int = 0  # labels that train (the first never does), after truncation


@dataclass
class _Split:
    samples: list[Sample] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    rows: int = 0
    formats: dict[str, tuple[str, str]] = field(default_factory=dict)  # source → (format, how)

    def add(self, rows: int, dropped: dict[str, int]) -> None:
        """Count rows read and the ones normalisation dropped, by reason."""
        self.rows += rows
        for reason, n in dropped.items():
            _count(self.dropped, reason, n)


def _count(counter: dict[str, int], reason: str, n: int = 1) -> None:
    counter[reason] = counter.get(reason, 0) + n


def _iter_samples(files: list[str], data: DataConfig, split: _Split):
    """Each source's samples, chunk by chunk (a JSON-lines file streams: one chunk of its rows is
    held at a time); `split` gathers the row counts, drops and formats on the way."""
    for spec in files:
        fmt = None
        first_row = 1
        for raw in iter_source(spec, hub_split=data.hub_split):
            if fmt is None:  # the format (and its columns) from the first chunk, as from the leading rows
                fmt, how = detect_format(raw, data)
                split.formats[raw.source] = (fmt, how)
            samples, skipped = normalize(raw, fmt, data, first_row=first_row)
            first_row += len(raw.rows)
            split.add(len(raw.rows), skipped)
            del raw
            yield samples


def _read_each(files: list[str], data: DataConfig, emit: Callable[[list[Sample]], None], *,
               limit: int | None = None) -> _Split:
    """Read and normalise every source, handing its samples to `emit` chunk by chunk; the split
    keeps the counts and formats (its `samples` stay empty). `limit`: stop after that many samples."""
    split = _Split()
    emitted = 0
    for samples in _iter_samples(files, data, split):
        if limit is not None:
            samples = samples[: limit - emitted]
        emit(samples)
        emitted += len(samples)
        if limit is not None and emitted >= limit:
            break
    return split


def _read(files: list[str], data: DataConfig) -> _Split:
    samples: list[Sample] = []
    split = _read_each(files, data, samples.extend)
    split.samples = samples
    return split


def _read_samples(files: list[str], data: DataConfig, folder: Path, name: str, *, processes: int,
                  limit: int | None = None) -> tuple["Dataset", _Split]:
    """Every source's normalised samples as one Arrow dataset, written under `folder` as they are
    read, and the split's counts and formats. A large JSON-lines file is read and normalised by
    `processes` processes, chunk by chunk: the chunks the streaming reader hands over, so the
    samples, the counts and the first bad line are those of a read in one process."""
    from datasets import concatenate_datasets

    plans = [_parallel_chunks(spec) if limit is None and processes > 1 else None for spec in files]
    if not any(plans):
        writer = _SampleWriter(folder / f"{name}.arrow")
        split = _read_each(files, data, writer, limit=limit)
        return writer.close(), split
    split = _Split()
    parts = []
    for index, (spec, chunks) in enumerate(zip(files, plans)):
        if chunks is None:
            writer = _SampleWriter(folder / f"{name}-{index}.arrow")
            read = _read_each([spec], data, writer)
            split.add(read.rows, read.dropped)
            split.formats.update(read.formats)
            parts.append(writer.close())
        else:
            parts.extend(_read_in_parallel(Path(spec).expanduser(), chunks, data, split, folder / f"{name}-{index}", processes))
    return (parts[0] if len(parts) == 1 else concatenate_datasets(parts)), split


def _parallel_chunks(spec: str) -> list[JsonlChunk] | None:
    """The chunks of a local JSON-lines file worth reading in parallel; None for anything else."""
    path = Path(spec).expanduser()
    if not (path.is_file() and LOCAL_SUFFIXES.get(path.suffix.lower()) == "jsonl"
            and path.stat().st_size >= PARALLEL_READ_BYTES):
        return None
    chunks = jsonl_chunks(path)
    return chunks if len(chunks) > 1 else None


def _read_in_parallel(path: Path, chunks: list[JsonlChunk], data: DataConfig, split: _Split, stem: Path,
                      processes: int) -> list["Dataset"]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from datasets import Dataset

    head = read_jsonl_chunk(path, chunks[0])  # the format from the first chunk, as a streaming read decides it
    fmt, how = detect_format(head, data)
    split.formats[head.source] = (fmt, how)
    del head
    outputs = [stem.with_name(f"{stem.name}-{k}.arrow") for k in range(len(chunks))]
    jobs = [(path, chunk, fmt, data, out) for chunk, out in zip(chunks, outputs)]
    # An executor rather than a Pool: a worker killed (out of memory) raises here instead of hanging.
    pool = ProcessPoolExecutor(min(processes, len(chunks)), mp_context=multiprocessing.get_context("fork"))
    try:
        for rows, skipped in pool.map(_read_chunk, jobs):  # in file order: the first bad chunk raises first
            split.add(rows, skipped)
    finally:
        pool.shutdown(cancel_futures=True)  # after an error, the chunks not started are not read
    return [Dataset.from_file(str(out)) for out in outputs]


def _read_chunk(job) -> tuple[int, dict[str, int]]:
    """In a pool worker: one chunk read, normalised and written to its own samples file."""
    path, chunk, fmt, data, out = job
    raw = read_jsonl_chunk(path, chunk)
    samples, skipped = normalize(raw, fmt, data, first_row=chunk.first_row)
    writer = _SampleWriter(out)
    writer(samples)
    writer.finish()
    return len(raw.rows), skipped


def _refuse_empty(files: list[str], split: _Split, what: str) -> None:
    names = ", ".join(files)
    if split.rows and set(split.dropped) == {"no assistant turn"}:
        raise DataError(
            f"{names}: no sample has an assistant turn ({split.rows} rows): nothing would be learned",
            "check the role values (data.tags.assistant, e.g. gpt or assistant) and data.format",
        )
    reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(split.dropped.items(), key=lambda kv: -kv[1]))
    raise DataError(
        f"{names}: no usable {what} rows out of {split.rows} ({reasons or 'the files are empty'})",
        "fix the rows, the column mapping (data.columns.*) or the role tags (data.tags.*)",
    )


@dataclass
class _EncodedBatch:
    """A batch of samples' tokens as flat arrays: row i's are ids[offsets[i]:offsets[i + 1]] (none
    for a dropped row), so the map writes them to Arrow without a Python list per row."""

    ids: "np.ndarray"  # int32
    labels: "np.ndarray"  # int32, IGNORE_INDEX where no loss
    offsets: "np.ndarray"  # int32, one more than the rows
    raw_length: list[int]  # tokens before truncation (0: not rendered); the report reads kept rows only
    supervised: list[int]  # labels that train (the first never does), after truncation
    closed: list[int]  # every answer closed by an end-of-turn token: 1 / 0; -1 text or not rendered
    eot_id: list[int]  # the end-of-turn token's id; -1 none
    exact: list[bool]
    prefix_rendered: list[bool]  # its mask came from rendering each prefix (no slot layout: render.py)
    drop: list[str]  # why the row is left out; "" kept


class _Encoder:
    """Render, tokenise, mask and truncate samples: the one per-row implementation."""

    def __init__(self, tokenizer, data: DataConfig, renderer: ChatRenderer | None):
        self.tokenizer = tokenizer
        self.data = data
        self.renderer = renderer

    def encode_each(self, samples: list[Sample]) -> list[_Encoded | str]:
        """Per sample, in order: its tokens and labels, or the reason it is dropped."""
        batch = self.encode_batch(samples)
        out: list[_Encoded | str] = []
        for i, sample in enumerate(samples):
            if batch.drop[i]:
                out.append(batch.drop[i])
                continue
            start, stop = batch.offsets[i], batch.offsets[i + 1]
            closed, eot_id = batch.closed[i], batch.eot_id[i]
            out.append(_Encoded(sample, batch.ids[start:stop].tolist(), batch.labels[start:stop].tolist(),
                                batch.raw_length[i], None if closed == -1 else bool(closed),
                                None if eot_id == -1 else eot_id, batch.exact[i], batch.prefix_rendered[i],
                                batch.supervised[i]))
        return out

    def encode_batch(self, samples: list[Sample]) -> _EncodedBatch:
        """Every sample's pieces (token lists, each with how many of its leading tokens train), then
        the tokens, labels and truncation of the whole batch at once in numpy."""
        import numpy as np

        count = len(samples)
        chats = [i for i, s in enumerate(samples) if s.text is None]
        texts = [i for i, s in enumerate(samples) if s.text is not None]
        layouts = self._layouts([samples[i] for i in chats]) if chats else []
        chat_tokens = self._tokenize([text for layout, _ in layouts if not isinstance(layout, str) for text, _ in layout[0]])
        text_tokens = self._encode_texts([samples[i] for i in texts]) if texts else []
        planned: list = [None] * count  # per sample: (its pieces, closed, eot_id, exact, prefix_rendered) or a drop reason
        cursor = 0
        for i, (layout, prefix_rendered) in zip(chats, layouts):
            if isinstance(layout, str):
                planned[i] = layout
                continue
            parts, exact = layout
            tokens = chat_tokens[cursor : cursor + len(parts)]
            cursor += len(parts)
            planned[i] = (*self._answer_spans(parts, tokens), exact, prefix_rendered)
        for i, ids in zip(texts, text_tokens):
            planned[i] = ([(ids, len(ids))], -1, -1, True, False)

        pieces: list[list[int]] = []
        trained: list[int] = []  # per piece: its leading tokens that train
        row_pieces = np.zeros(count, dtype=np.int64)
        drop = [""] * count
        closed, eot_id, exact, prefix_rendered = [-1] * count, [-1] * count, [True] * count, [False] * count
        for i, plan in enumerate(planned):
            if isinstance(plan, str):
                drop[i] = plan
                continue
            row, closed[i], eot_id[i], exact[i], prefix_rendered[i] = plan
            row_pieces[i] = len(row)
            for tokens, n in row:
                pieces.append(tokens)
                trained.append(n)

        lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
        total = int(lengths.sum())
        ids = np.fromiter(itertools.chain.from_iterable(pieces), dtype=np.int32, count=total)
        trained_counts = np.asarray(trained, dtype=np.int64)
        # Each piece is a run of trained tokens, then a run of untrained ones.
        runs = np.column_stack((trained_counts, lengths - trained_counts)).ravel()
        mask = np.repeat(np.tile(np.array([True, False]), len(pieces)), runs)
        first_piece = np.concatenate(([0], np.cumsum(row_pieces)))  # of each row, and the end
        row_starts = np.concatenate(([0], np.cumsum(lengths)))[first_piece]
        raw_length = np.diff(row_starts)

        limit = self.data.max_length
        kept_length = np.minimum(raw_length, limit)
        starts = row_starts[:-1]
        # Trained tokens per row from the pieces' counts; the first label is never predicted (nothing
        # comes before it), so it does not count. Truncated rows count what is left of them.
        supervised = np.diff(np.concatenate(([0], np.cumsum(trained_counts)))[first_piece])
        nonempty = np.flatnonzero(raw_length > 0)
        supervised[nonempty] -= mask[starts[nonempty]]
        for i in np.flatnonzero(raw_length > limit).tolist():
            supervised[i] = int(np.count_nonzero(mask[starts[i] + 1 : starts[i] + limit]))
        for i in np.flatnonzero(supervised == 0).tolist():
            if not drop[i]:  # rows that failed to render are dropped already
                drop[i] = ("no supervised token left after truncation to max_length" if raw_length[i] > limit
                           else "no supervised tokens")
        dropped = np.array([bool(d) for d in drop])
        kept_length[dropped] = 0
        offsets = np.concatenate(([0], np.cumsum(kept_length))).astype(np.int32)
        if int(offsets[-1]) != total:  # truncated or dropped rows: gather the tokens that stay
            source = np.arange(int(offsets[-1]), dtype=np.int64) + np.repeat(starts - offsets[:-1], kept_length)
            ids, mask = ids[source], mask[source]
        labels = np.where(mask, ids, np.int32(IGNORE_INDEX)).astype(np.int32, copy=False)
        return _EncodedBatch(ids, labels, offsets, raw_length.tolist(), supervised.tolist(), closed, eot_id, exact,
                             prefix_rendered, drop)

    def _layouts(self, samples: list[Sample]) -> list[tuple]:
        """Per conversation: (its segments and whether they are exact, or why it is dropped;
        whether its mask came from rendering each prefix)."""
        renderer = self.renderer
        out = []
        for sample in samples:
            before = renderer.exact_renders
            try:
                prepared, tools = renderer.prepare(sample.messages, sample.tools)
                layout = renderer.segments(prepared, tools)
            except Exception as exc:  # jinja errors and templates' raise_exception()
                message = str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__
                layout = f"chat template error: {message}"
            out.append((layout, renderer.exact_renders > before))
        return out

    def _answer_spans(self, parts: list[tuple[str, bool]], tokens: list[list[int]]) -> tuple[list, int, int]:
        """A conversation's pieces with their trained tokens (an answer's through its last end-of-turn
        token; everything when data.assistant_only_loss is off), whether an end-of-turn token closed
        every answer (1 / 0), and that token's id (-1: none)."""
        closed, eot_id = 1, -1
        row = []
        for (_, is_answer), piece in zip(parts, tokens):
            if not is_answer:
                row.append((piece, 0 if self.data.assistant_only_loss else len(piece)))
                continue
            n, eot = self.renderer.answer_span(piece)
            if eot is None:
                closed = 0
            elif eot_id == -1:
                eot_id = eot
            row.append((piece, n if self.data.assistant_only_loss else len(piece)))
        return row, closed, eot_id

    def _encode_texts(self, samples: list[Sample]) -> list[list[int]]:
        tokenizer = self.tokenizer
        eos = getattr(tokenizer, "eos_token_id", None)
        out = []
        for start in range(0, len(samples), _TOKENIZE_CHUNK):
            chunk = samples[start : start + _TOKENIZE_CHUNK]
            # Special tokens on: a bos where the model family has one. eos closes each document.
            for ids in tokenizer([s.text for s in chunk], add_special_tokens=True, verbose=False)["input_ids"]:
                ids = list(ids)
                if eos is not None and (not ids or ids[-1] != eos):
                    ids.append(eos)
                out.append(ids)
        return out

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        out: list[list[int]] = []
        for start in range(0, len(texts), _TOKENIZE_CHUNK):
            out.extend(tokenize_many(self.tokenizer, texts[start : start + _TOKENIZE_CHUNK]))
        return out


def _split_indices(count: int, ratio: float, seed: int, files: list[str]) -> tuple[list[int], list[int]]:
    """(training, validation) positions of `count` samples, the validation ones drawn with `seed`."""
    if count < 2:
        raise DataError(
            f"{', '.join(files)}: data.val_ratio needs at least 2 usable rows, there are {count}",
            "add rows, or set data.val_ratio: 0",
        )
    held_out = min(count - 1, max(1, round(count * ratio)))
    order = list(range(count))
    random.Random(seed).shuffle(order)
    val_index = set(order[:held_out])
    return [i for i in range(count) if i not in val_index], sorted(val_index)


def training_samples(data: DataConfig) -> list[Sample]:
    """The rows that train (after the validation split), as conversations; no tokenizer needed."""
    samples = _read(data.train_files, data).samples
    if data.val_ratio > 0 and not data.val_files:
        train_index, _ = _split_indices(len(samples), data.val_ratio, data.shuffle_seed, data.train_files)
        samples = [samples[i] for i in train_index]
    return samples if data.max_samples is None else samples[: data.max_samples]


def _example(tokenizer, item: _Encoded, max_length: int) -> RenderedExample:
    tokens = [tokenizer.decode([t]) for t in item.input_ids]
    # The first label is never predicted; show it as it trains.
    supervised = [i > 0 and label != IGNORE_INDEX for i, label in enumerate(item.labels)]
    segments: list[tuple[str, bool]] = []
    run_start = 0
    for i in range(1, len(supervised) + 1):
        if i == len(supervised) or supervised[i] != supervised[run_start]:
            segments.append((tokenizer.decode(item.input_ids[run_start:i]), supervised[run_start]))
            run_start = i
    return RenderedExample(item.sample.where, tokens, supervised, segments, item.raw_length > max_length)


def _eval_example(renderer: ChatRenderer, sample: Sample) -> Example | None:
    messages, tools = renderer.prepare(sample.messages, sample.tools)
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None or last == 0:
        return None
    answer = messages[last]
    reference = answer["content"] or (_call_text(answer["tool_calls"]) if answer.get("tool_calls") else "")
    return Example(messages=messages[:last], reference=reference, tools=tools)


def _describe_formats(formats: dict[str, tuple[str, str]]) -> tuple[str, str]:
    kinds = sorted({fmt for fmt, _ in formats.values()})
    fmt = kinds[0] if len(kinds) == 1 else "mixed: " + ", ".join(f"{Path(s).name}={f}" for s, (f, _) in formats.items())
    if len(formats) == 1:
        return fmt, next(iter(formats.values()))[1]
    return fmt, "; ".join(f"{Path(s).name}: {how}" for s, (_, how) in formats.items())


# --------------------------------------------------------------------------- Arrow columns


def _sample_features():
    from datasets import Features, Value

    return Features({"where": Value("string"), "messages": Value("string"), "tools": Value("string"), "text": Value("string")})


def _encoded_features():
    from datasets import Features, List, Value

    return Features({
        "input_ids": List(Value("int32")), "labels": List(Value("int32")), "raw_length": Value("int32"),
        "supervised": Value("int32"), "closed": Value("int8"), "eot_id": Value("int64"), "exact": Value("bool"),
        "prefix_rendered": Value("bool"), "drop": Value("string"), "key": Value("int64"), "where": Value("string"),
    })


def _sample_row(sample: Sample) -> dict:
    if sample.text is not None:
        return {"where": sample.where, "messages": "", "tools": "", "text": sample.text}
    return {"where": sample.where, "messages": json.dumps(sample.messages, ensure_ascii=False),
            "tools": json.dumps(sample.tools, ensure_ascii=False) if sample.tools is not None else "", "text": None}


def _sample_of(where: str, messages: str, tools: str, text: str | None) -> Sample:
    if text is not None:
        return Sample(where, text=text)
    return Sample(where, messages=json.loads(messages), tools=json.loads(tools) if tools else None)


def _key_hash(messages: str, tools: str, text: str | None) -> int:
    """A 63-bit hash of a sample's content as the samples file holds it, for duplicate and overlap
    counts in numpy. Equal conversations are equal there: the same normalised turns, in the same
    key order, give the same JSON."""
    content = text if text is not None else f"{messages}\x00{tools}"
    return int.from_bytes(hashlib.blake2b(content.encode(), digest_size=8).digest(), "little") >> 1


class _SampleWriter:
    """Appends normalised samples to an Arrow file as they are read."""

    def __init__(self, path: Path):
        from datasets.arrow_writer import ArrowWriter

        self.path = path
        self.writer = ArrowWriter(features=_sample_features(), path=str(path), writer_batch_size=MAP_BATCH)
        self.count = 0

    def __call__(self, samples: list[Sample]) -> None:
        for start in range(0, len(samples), MAP_BATCH):
            rows = [_sample_row(s) for s in samples[start : start + MAP_BATCH]]
            self.writer.write_batch({name: [r[name] for r in rows] for name in ("where", "messages", "tools", "text")})
        self.count += len(samples)

    def finish(self) -> None:
        self.writer.finalize()
        self.writer.close()

    def close(self):
        from datasets import Dataset

        self.finish()
        return Dataset.from_file(str(self.path))


class _BatchEncoder:
    """The batched map's function: samples → tokens, labels and the per-row facts the report needs.
    The renderer is made in the process that runs it (it does not travel to the map's workers)."""

    def __init__(self, tokenizer, data: DataConfig, template: str | None):
        self.tokenizer, self.data, self.template = tokenizer, data, template
        self._encoder: _Encoder | None = None

    def __getstate__(self):
        return {**self.__dict__, "_encoder": None}

    def __call__(self, batch: dict):
        import pyarrow as pa

        if self._encoder is None:
            renderer = ChatRenderer(self.tokenizer, self.template) if self.template else None
            self._encoder = _Encoder(self.tokenizer, self.data, renderer)
        columns = (batch["where"], batch["messages"], batch["tools"], batch["text"])
        encoded = self._encoder.encode_batch([_sample_of(*row) for row in zip(*columns)])
        # A table of the final types: the map writes it as is, where a dict of lists would be
        # converted through datasets' type inference; the token columns come straight from numpy.
        schema = _encoded_features().arrow_schema
        facts = {name: getattr(encoded, name) for name in ("raw_length", "supervised", "closed", "eot_id", "exact",
                                                            "prefix_rendered", "drop")}
        facts["key"] = [_key_hash(*row) for row in zip(*columns[1:])]
        facts["where"] = batch["where"]
        arrays = {name: pa.array(values, type=schema.field(name).type) for name, values in facts.items()}
        offsets = pa.array(encoded.offsets)
        arrays["input_ids"] = pa.ListArray.from_arrays(offsets, pa.array(encoded.ids))
        arrays["labels"] = pa.ListArray.from_arrays(offsets, pa.array(encoded.labels))
        return pa.Table.from_arrays([arrays[name] for name in schema.names], schema=schema)


def default_processes(rows: int) -> int:
    """Map processes: the machine's cores, capped; one for small inputs."""
    if rows < PARALLEL_MIN_ROWS:
        return 1
    return max(1, min(os.cpu_count() or 1, MAX_PROCESSES, rows // (PARALLEL_MIN_ROWS // 2)))


def _encode_dataset(samples, encoder: _BatchEncoder, build: Path, name: str, num_proc: int | None,
                    progress: Progress | None):
    """The batched map over `samples`, in blocks when progress is reported."""
    from datasets import concatenate_datasets

    total = len(samples)
    procs = default_processes(total) if num_proc is None else max(1, num_proc)
    if procs > 1:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # forked workers; the map is the parallelism
    block = total if progress is None else max(MAP_BATCH * procs, -(-total // PROGRESS_STEPS))
    parts = []
    environ = os.environ  # datasets' process pool leaves a copy in os.environ: later setenv would miss Rich & co
    for index, start in enumerate(range(0, total, max(block, 1))):
        part = samples.select(range(start, min(total, start + block))) if block < total else samples
        parts.append(part.map(
            encoder, batched=True, batch_size=MAP_BATCH, num_proc=min(procs, len(part)) if procs > 1 else None,
            remove_columns=part.column_names, features=_encoded_features(),
            cache_file_name=str(build / f"{name}-{index}.arrow"), load_from_cache_file=False,
            new_fingerprint=f"{name}-{index}-{time.time_ns()}", desc=None,
        ))
        if os.environ is not environ:
            os.environ = environ
        if progress is not None:
            progress("tokenising", min(total, start + block), total)
    if not parts:
        return samples.map(encoder, batched=True, remove_columns=samples.column_names, features=_encoded_features(),
                           keep_in_memory=True)
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


# --------------------------------------------------------------------------- the pass


def build_datasets(data: DataConfig, tokenizer, *, seed: int = 42, cache_dir: str | Path | None = None,
                   num_proc: int | None = None, progress: Progress | None = None) -> DataBundle:
    """Read, normalise, split, render, tokenize, mask and truncate; report on all of it.

    The validation split (data.val_ratio) is drawn with data.shuffle_seed; `seed` orders the
    training samples (the trainer reshuffles every epoch; this keeps packing and the report
    reproducible). Raises DataError naming the file, line or key for bad input.

    `cache_dir`: the prepared-data cache (engine.data.cache). A hit loads the rows and the report
    without reading the files; a miss prepares them under a lock, so concurrent callers (the ranks of
    a distributed run) prepare once and the others load the result. None: prepare into a temporary
    folder removed with the bundle. `num_proc`: map processes (default: the cores, capped; one for
    small inputs). `progress(stage, done, total)` is called as the samples are tokenised.
    """
    from datasets import disable_progress_bars

    from engine.data import cache

    disable_progress_bars()  # progress goes through `progress`, not tqdm bars on stderr
    if data.streaming:
        return _streaming(data, tokenizer, seed, cache_dir, num_proc, progress)
    if cache_dir is None:
        build = Path(tempfile.mkdtemp(prefix="tunebench-data-"))
        _prepare(data, tokenizer, seed, build, num_proc, progress)
        bundle = _load(build, data)  # the rows memory-mapped from the files just written
        weakref.finalize(bundle, shutil.rmtree, build, True)
        return bundle
    cache_dir = Path(cache_dir)
    fingerprints = cache.Fingerprints(cache_dir)
    key = cache.cache_key(data, tokenizer, seed=seed, fingerprints=fingerprints)
    entry = cache.entry_dir(cache_dir, key.key)
    if not cache.is_complete(entry):
        with cache.build_lock(cache_dir, key.key):
            if not cache.is_complete(entry):  # another process may have built it while this one waited
                build = cache.new_build_dir(cache_dir, key.key)
                try:
                    meta = {"summary": key.summary, **_prepare(data, tokenizer, seed, build, num_proc, progress),
                            "created": time.time()}
                    (build / "meta.json").write_text(json.dumps(meta, indent=1))
                    fingerprints.save()
                    cache.publish(build, entry)
                finally:
                    shutil.rmtree(build, ignore_errors=True)
                bundle = _load(entry, data)
                bundle.cache_key = key.key
                cache.touch(entry)
                return bundle
    bundle = _load(entry, data)
    bundle.cache_key, bundle.cache_hit = key.key, True
    fingerprints.save()
    cache.touch(entry)
    return bundle


PACK_CHUNK = 2000  # packed rows assembled per Arrow batch


def pack_dataset(train, positions: list[int], max_length: int, path: Path):
    """The rows of `train` at `positions` packed best-fit-decreasing into rows of at most
    max_length tokens (input_ids, labels, position_ids), written to `path` in batches and
    memory-mapped back."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from datasets import Dataset, Features, List, Value
    from datasets.arrow_writer import ArrowWriter

    from engine.data.collate import pack_rows, plan_packs_bfd

    table = train.with_format("arrow")[:]  # memory-mapped, not copied: `train` has no indices mapping
    lengths = pc.list_value_length(table["input_ids"]).take(pa.array(positions, type=pa.int64())).to_pylist()
    packs = [[positions[i] for i in pack] for pack in plan_packs_bfd(lengths, max_length)]
    features = Features({name: List(Value("int32")) for name in ("input_ids", "labels", "position_ids")})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with ArrowWriter(features=features, path=str(tmp), writer_batch_size=PACK_CHUNK) as writer:
        for start in range(0, len(packs), PACK_CHUNK):
            chunk = packs[start : start + PACK_CHUNK]
            taken = table.take(pa.array([i for pack in chunk for i in pack], type=pa.int64())).to_pydict()
            cursor, batch = 0, {"input_ids": [], "labels": [], "position_ids": []}
            for pack in chunk:
                ids, labels, positions = pack_rows([(taken["input_ids"][cursor + k][:max_length], taken["labels"][cursor + k][:max_length])
                                                    for k in range(len(pack))])
                cursor += len(pack)
                batch["input_ids"].append(ids)
                batch["labels"].append(labels)
                batch["position_ids"].append(positions)
            writer.write_batch(batch)
        writer.finalize()
    os.replace(tmp, path)  # ranks packing at once each write their own file; the last rename wins, all equal
    return Dataset.from_file(str(path))


def _rows(folder: Path, listing: dict | None):
    """The map's files named in `listing`, as one dataset of input_ids and labels (every row the
    map wrote, dropped ones included; `listing["rows"]` picks the kept ones)."""
    from datasets import Dataset, concatenate_datasets

    if listing is None:
        return None
    parts = [Dataset.from_file(str(folder / name)) for name in listing["files"]]
    return (parts[0] if len(parts) == 1 else concatenate_datasets(parts)).select_columns(["input_ids", "labels"])


def _load(folder: Path, data: DataConfig) -> DataBundle:
    from datasets import Dataset

    saved = json.loads((folder / "report.json").read_text())
    report = DataReport.from_dict(saved["report"])
    report.packing = data.packing  # not part of the key: it acts in the collator
    listing = json.loads((folder / ROWS_FILE).read_text())
    rows = _rows(folder, listing["train"])
    if data.packing and data.packing_strategy == "dataset":
        packed = folder / "train-packed.arrow"  # max_length is in the key: one packing per entry
        train = (Dataset.from_file(str(packed)) if packed.exists()
                 else pack_dataset(rows, sorted(listing["train"]["rows"]), data.max_length, packed))
    else:  # a fingerprint of our own: datasets would hash the whole list of positions (seconds at 700k rows)
        train = rows.select(listing["train"]["rows"], new_fingerprint=f"{folder.name}-train")
    evaluation = _rows(folder, listing["eval"])
    if evaluation is not None:
        evaluation = evaluation.select(listing["eval"]["rows"], new_fingerprint=f"{folder.name}-eval")
    examples = [Example(**e) for e in saved["eval_examples"]]
    return DataBundle(train, evaluation, examples, report, saved["chat_template"])


STREAM_REPORT_ROWS = 2000  # data.streaming: the report is computed on this many leading samples


def _streaming(data: DataConfig, tokenizer, seed: int, cache_dir, num_proc, progress) -> DataBundle:
    """data.streaming: the report (and the validation rows, from data.val_files) prepared from the
    first STREAM_REPORT_ROWS samples; the training rows an IterableDataset that reads, renders and
    tokenises the files while the trainer consumes them."""
    from datasets import IterableDataset

    sample = data.model_copy(update={"streaming": False, "packing": False})
    if cache_dir is None:
        build = Path(tempfile.mkdtemp(prefix="tunebench-data-"))
        _prepare(sample, tokenizer, seed, build, num_proc, progress, sample_rows=STREAM_REPORT_ROWS)
        bundle = _load(build, sample)
        weakref.finalize(bundle, shutil.rmtree, build, True)
    else:  # the sample is cached like any preparation, under a key of its own
        from engine.data import cache

        key = cache.cache_key(sample, tokenizer, seed=seed).key + f"-sample{STREAM_REPORT_ROWS}"
        entry = cache.entry_dir(Path(cache_dir), key)
        with cache.build_lock(Path(cache_dir), key):
            if not cache.is_complete(entry):
                build = cache.new_build_dir(Path(cache_dir), key)
                try:
                    meta = _prepare(sample, tokenizer, seed, build, num_proc, progress, sample_rows=STREAM_REPORT_ROWS)
                    summary = {"files": list(data.train_files), "val_files": list(data.val_files), "streaming sample": True,
                               "tokenizer": getattr(tokenizer, "name_or_path", ""), "max_length": data.max_length}
                    (build / "meta.json").write_text(json.dumps({"summary": summary, **meta, "created": time.time()}))
                    cache.publish(build, entry)
                finally:
                    shutil.rmtree(build, ignore_errors=True)
        bundle = _load(entry, sample)
    bundle.report.packing = data.packing
    bundle.train = IterableDataset.from_generator(
        _stream_rows, gen_kwargs={"data": data, "tokenizer": tokenizer, "template": bundle.chat_template})
    return bundle


def _stream_rows(data: DataConfig, tokenizer, template: str | None):
    """Every kept training sample's input_ids and labels, in file order, as the files are read."""
    encoder = _Encoder(tokenizer, data, ChatRenderer(tokenizer, template) if template else None)
    left = data.max_samples
    for samples in _iter_samples(data.train_files, data, _Split()):
        if left is not None:  # data.max_samples counts samples before encoding, as when prepared
            samples, left = samples[:left], left - min(left, len(samples))
        for start in range(0, len(samples), MAP_BATCH):
            for item in encoder.encode_each(samples[start : start + MAP_BATCH]):
                if not isinstance(item, str):
                    yield {"input_ids": item.input_ids, "labels": item.labels}
        if left == 0:
            return


def _prepare(data: DataConfig, tokenizer, seed: int, build: Path, num_proc: int | None,
             progress: Progress | None, *, sample_rows: int | None = None) -> dict:
    """The whole pass, written to `build`: the map's files, rows.json and report.json; the row counts.
    `sample_rows`: read only that many leading training samples (the report then says so)."""
    report = DataReport(files=list(data.train_files), val_files=list(data.val_files), max_length=data.max_length,
                        packing=data.packing, assistant_only_loss=data.assistant_only_loss,
                        efficiency_batch_size=REPORT_BATCH_SIZE)
    read_processes = num_proc if num_proc is not None else min(os.cpu_count() or 1, MAX_PROCESSES)
    samples, train_split = _read_samples(data.train_files, data, build, "samples", processes=read_processes,
                                         limit=sample_rows)
    report.rows_read = train_split.rows
    if sample_rows is not None:
        report.sampled = len(samples)
    report.format, report.format_detection = _describe_formats(train_split.formats)
    report.dropped = dict(train_split.dropped)
    if not len(samples):
        _refuse_empty(data.train_files, train_split, "training")

    if data.val_files:
        val_samples, val_split = _read_samples(data.val_files, data, build, "val-samples", processes=read_processes)
        report.val_rows_read = val_split.rows
        report.val_dropped = dict(val_split.dropped)
        if not len(val_samples):
            _refuse_empty(data.val_files, val_split, "validation")
        train_samples = samples
    elif data.val_ratio > 0:
        train_index, val_index = _split_indices(len(samples), data.val_ratio, data.shuffle_seed, data.train_files)
        train_samples = samples.select(train_index, new_fingerprint=f"{build.name}-train-split")
        val_samples = samples.select(val_index, new_fingerprint=f"{build.name}-val-split")
    else:
        train_samples, val_samples = samples, None
    if data.max_samples is not None and len(train_samples) > data.max_samples:
        report.limited = len(train_samples) - data.max_samples
        train_samples = train_samples.select(range(data.max_samples))

    needs_template = _has_chats(train_samples) or (val_samples is not None and _has_chats(val_samples))
    template = None
    report.chat_template = "none (text format)"
    if needs_template:
        resolved = template_for(tokenizer, data.chat_template)
        report.chat_template = resolved.source
        if resolved.warning:
            log.warning(resolved.warning)
            report.warnings.append(resolved.warning)
        template = resolved.text

    encoder = _BatchEncoder(tokenizer, data, template)
    encoded = _encode_dataset(train_samples, encoder, build, "train-encoded", num_proc, progress)
    columns = _columns(encoded)
    kept = [i for i, reason in enumerate(columns["drop"]) if not reason]
    for reason in columns["drop"]:
        if reason:
            _count(report.dropped, reason)
    if not kept:
        if any("truncation" in reason for reason in report.dropped):
            raise DataError(
                f"{', '.join(data.train_files)}: every sample lost its answer to truncation at max_length {data.max_length}",
                "raise data.max_length or shorten the prompts",
            )
        _refuse_empty(data.train_files, _Split(samples=[], dropped=report.dropped, rows=train_split.rows), "training")

    val_kept: list[int] = []
    val_columns = None
    val_encoded = None
    if val_samples is not None:
        val_encoded = _encode_dataset(val_samples, encoder, build, "eval-encoded", num_proc, None)
        val_columns = _columns(val_encoded)
        val_kept = [i for i, reason in enumerate(val_columns["drop"]) if not reason]
        for reason in val_columns["drop"]:
            if reason:
                _count(report.val_dropped, reason)

    _fill_stats(report, tokenizer, encoded, columns, kept, val_columns, val_kept, data)
    order = list(range(len(kept)))
    random.Random(seed).shuffle(order)
    train_rows = [kept[i] for i in order]
    lengths = [min(columns["raw_length"][i], data.max_length) for i in train_rows]
    report.padding_efficiency = batch_efficiency(lengths, batch_size=REPORT_BATCH_SIZE, max_length=data.max_length, packing=False)
    report.packing_efficiency = batch_efficiency(lengths, batch_size=REPORT_BATCH_SIZE, max_length=data.max_length, packing=True)

    # The map's files are the rows: the kept ones, in the seed's order, are an index mapping over
    # them (no second pass over the tokens).
    listing = {"train": {"files": _file_names(encoded, build), "rows": train_rows}, "eval": None}
    examples: list[Example] = []
    if val_encoded is not None:
        listing["eval"] = {"files": _file_names(val_encoded, build), "rows": val_kept}
        if template:
            renderer = ChatRenderer(tokenizer, template)
            for row in val_samples.select(val_kept, new_fingerprint=f"{build.name}-val-kept"):
                sample = _sample_of(row["where"], row["messages"], row["tools"], row["text"])
                if sample.text is None:
                    example = _eval_example(renderer, sample)
                    if example:
                        examples.append(example)
    saved = {"report": report.to_dict(), "eval_examples": [asdict(e) for e in examples], "chat_template": template}
    (build / "report.json").write_text(json.dumps(saved, ensure_ascii=False))
    (build / ROWS_FILE).write_text(json.dumps(listing))
    for leftover in build.glob("*samples*.arrow"):
        leftover.unlink()
    return {"rows": len(train_rows), "eval_rows": len(val_kept)}


def _has_chats(samples) -> bool:
    import pyarrow.compute as pc

    return bool(pc.any(pc.is_null(samples.with_format("arrow")["text"])).as_py()) if len(samples) else False


def _columns(encoded) -> dict[str, list]:
    """The per-row facts of an encoded dataset (not the tokens), as lists."""
    table = encoded.with_format("arrow")
    return {name: table[name].to_pylist() for name in ("raw_length", "supervised", "closed", "eot_id", "exact", "prefix_rendered", "drop", "key")}


def _file_names(encoded, build: Path) -> list[str]:
    """The map's Arrow files behind `encoded`, in row order, relative to the build folder (which is
    renamed into the cache when complete)."""
    names = [Path(f["filename"]).name for f in encoded.cache_files]
    if not names or any(not (build / name).is_file() for name in names):
        raise RuntimeError(f"the map's output is not in {build}: {encoded.cache_files}")
    return names


def _fill_stats(report: DataReport, tokenizer, encoded, columns: dict, kept: list[int], val_columns: dict | None,
                val_kept: list[int], data: DataConfig) -> None:
    report.train_samples = len(kept)
    report.eval_samples = len(val_kept)
    raw_lengths = [columns["raw_length"][i] for i in kept]
    report.length = LengthStats.of(raw_lengths)
    report.histogram = histogram(raw_lengths)
    truncation_drops = sum(n for reason, n in report.dropped.items() if "truncation" in reason)
    tokenized = len(kept) + truncation_drops
    report.truncated = sum(1 for n in raw_lengths if n > data.max_length) + truncation_drops
    report.truncated_share = report.truncated / tokenized if tokenized else 0.0
    report.total_tokens = sum(min(n, data.max_length) for n in raw_lengths)
    report.supervised_tokens = sum(columns["supervised"][i] for i in kept)
    report.supervised_share = report.supervised_tokens / report.total_tokens if report.total_tokens else 0.0
    keys: set[int] = set()
    for i in kept:
        key = columns["key"][i]
        report.duplicates += key in keys
        keys.add(key)
    if val_columns is not None:
        report.train_val_overlap = sum(1 for i in val_kept if val_columns["key"][i] in keys)
    chats = [i for i in kept if columns["closed"][i] != -1]
    if chats:
        report.template_has_eos_after_assistant = all(columns["closed"][i] == 1 for i in chats)
        eot = next((columns["eot_id"][i] for i in chats if columns["eot_id"][i] != -1), None)
        report.end_of_turn_token = tokenizer.convert_ids_to_tokens(eot) if eot is not None else None
        report.inexact_masks = sum(1 for i in chats if not columns["exact"][i])
        report.prefix_rendered = sum(1 for i in chats if columns["prefix_rendered"][i])
        if not report.template_has_eos_after_assistant:
            open_count = sum(1 for i in chats if columns["closed"][i] == 0)
            report.warnings.append(
                f"{open_count} of {len(chats)} samples have an answer that no end-of-turn token closes: the model "
                "will not learn to stop. Use a template that ends answers with the eos token (data.chat_template)."
            )
        if report.inexact_masks:
            report.warnings.append(
                f"{report.inexact_masks} samples: the chat template renders a conversation's prefixes differently "
                "from the whole conversation; the supervised span was cut at the longest common prefix."
            )
    if report.duplicates:
        log.info("%d duplicate training samples", report.duplicates)
    first = encoded[kept[0]]
    item = _Encoded(Sample(first["where"]), first["input_ids"], first["labels"], first["raw_length"], None, None, True)
    report.example = _example(tokenizer, item, data.max_length)
