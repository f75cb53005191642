"""build_datasets: files → normalised samples → validation split → tokens and labels → report."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

from engine.data.collate import batch_efficiency
from engine.data.formats import Sample, detect_format, normalize
from engine.data.loading import read_source
from engine.data.render import IGNORE_INDEX, ChatRenderer, _call_text, template_for, tokenize_many
from engine.data.report import DataReport, LengthStats, RenderedExample, histogram
from engine.errors import DataError
from presets.schema import DataConfig

log = logging.getLogger("tunebench.data")
REPORT_BATCH_SIZE = 8  # batch size of DataReport's padding / packing efficiency
_TOKENIZE_CHUNK = 2048  # texts per tokenizer call (batched in Rust)


@dataclass
class Example:
    """A validation conversation for generation: the prompt turns and the answer to compare against."""

    messages: list[dict]  # system/user/assistant/tool turns up to, not including, the last assistant turn
    reference: str  # the last assistant turn's text
    tools: list[dict] | None = None  # tool definitions, when the template takes them natively


@dataclass
class DataBundle:
    train: list[dict]  # {"input_ids": list[int], "labels": list[int]}; labels -100 = no loss
    eval: list[dict] | None
    eval_examples: list[Example]
    report: DataReport
    chat_template: str | None = None  # the Jinja the conversations were rendered with (None: text format)


@dataclass
class _Encoded:
    sample: Sample
    input_ids: list[int]
    labels: list[int]
    raw_length: int
    closed: bool | None  # every answer closed by an end-of-turn token (None: text)
    eot_id: int | None
    exact: bool


@dataclass
class _Split:
    samples: list[Sample] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    rows: int = 0
    formats: dict[str, tuple[str, str]] = field(default_factory=dict)  # source → (format, how)


def _count(counter: dict[str, int], reason: str, n: int = 1) -> None:
    counter[reason] = counter.get(reason, 0) + n


def _read(files: list[str], data: DataConfig) -> _Split:
    split = _Split()
    for spec in files:
        raw = read_source(spec, hub_split=data.hub_split)
        fmt, how = detect_format(raw, data)
        samples, skipped = normalize(raw, fmt, data)
        split.rows += len(raw.rows)
        split.samples += samples
        split.formats[raw.source] = (fmt, how)
        for reason, n in skipped.items():
            _count(split.dropped, reason, n)
    return split


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


class _Encoder:
    def __init__(self, tokenizer, data: DataConfig, renderer: ChatRenderer | None):
        self.tokenizer = tokenizer
        self.data = data
        self.renderer = renderer

    def encode(self, samples: list[Sample], dropped: dict[str, int]) -> list[_Encoded]:
        """Tokens and labels of each sample, truncated; samples left without a label are dropped."""
        chats = [s for s in samples if s.text is None]
        texts = [s for s in samples if s.text is not None]
        encoded: dict[int, _Encoded] = {}
        if chats:
            for sample, item in zip(chats, self._encode_chats(chats, dropped)):
                if item is not None:
                    encoded[id(sample)] = item
        if texts:
            for sample, item in zip(texts, self._encode_texts(texts)):
                encoded[id(sample)] = item
        out = []
        for sample in samples:
            item = encoded.get(id(sample))
            if item is None:
                continue
            limit = self.data.max_length
            item.input_ids, item.labels = item.input_ids[:limit], item.labels[:limit]
            # The first label is never predicted (nothing comes before it), so it does not count.
            if not any(label != IGNORE_INDEX for label in item.labels[1:]):
                reason = ("no supervised token left after truncation to max_length"
                          if item.raw_length > limit else "no supervised tokens")
                _count(dropped, reason)
                continue
            out.append(item)
        return out

    def _encode_chats(self, samples: list[Sample], dropped: dict[str, int]) -> list[_Encoded | None]:
        renderer = self.renderer
        layouts = []
        for sample in samples:
            try:
                prepared, tools = renderer.prepare(sample.messages, sample.tools)
                layouts.append(renderer.segments(prepared, tools))
            except Exception as exc:  # jinja errors and templates' raise_exception()
                message = str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__
                _count(dropped, f"chat template error: {message}")
                layouts.append(None)
        pieces = [text for layout in layouts if layout for text, _ in layout[0]]
        tokens = self._tokenize(pieces)
        out: list[_Encoded | None] = []
        cursor = 0
        for sample, layout in zip(samples, layouts):
            if layout is None:
                out.append(None)
                continue
            parts, exact = layout
            token_lists = tokens[cursor : cursor + len(parts)]
            cursor += len(parts)
            ids, labels, closed, eot_id = renderer.assemble(parts, token_lists)
            if not self.data.assistant_only_loss:
                labels = list(ids)
            out.append(_Encoded(sample, ids, labels, len(ids), closed, eot_id, exact))
        return out

    def _encode_texts(self, samples: list[Sample]) -> list[_Encoded]:
        tokenizer = self.tokenizer
        eos = getattr(tokenizer, "eos_token_id", None)
        out = []
        for start in range(0, len(samples), _TOKENIZE_CHUNK):
            chunk = samples[start : start + _TOKENIZE_CHUNK]
            # Special tokens on: a bos where the model family has one. eos closes each document.
            for sample, ids in zip(chunk, tokenizer([s.text for s in chunk], add_special_tokens=True, verbose=False)["input_ids"]):
                ids = list(ids)
                if eos is not None and (not ids or ids[-1] != eos):
                    ids.append(eos)
                out.append(_Encoded(sample, ids, list(ids), len(ids), None, None, True))
        return out

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        out: list[list[int]] = []
        for start in range(0, len(texts), _TOKENIZE_CHUNK):
            out.extend(tokenize_many(self.tokenizer, texts[start : start + _TOKENIZE_CHUNK]))
        return out


def _split_validation(samples: list[Sample], ratio: float, seed: int, files: list[str]) -> tuple[list[Sample], list[Sample]]:
    if len(samples) < 2:
        raise DataError(
            f"{', '.join(files)}: data.val_ratio needs at least 2 usable rows, there are {len(samples)}",
            "add rows, or set data.val_ratio: 0",
        )
    held_out = min(len(samples) - 1, max(1, round(len(samples) * ratio)))
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    val_index = set(order[:held_out])
    train = [s for i, s in enumerate(samples) if i not in val_index]
    val = [s for i, s in enumerate(samples) if i in val_index]
    return train, val


def training_samples(data: DataConfig) -> list[Sample]:
    """The rows that train (after the validation split), as conversations; no tokenizer needed."""
    samples = _read(data.train_files, data).samples
    if data.val_ratio > 0 and not data.val_files:
        samples, _ = _split_validation(samples, data.val_ratio, data.shuffle_seed, data.train_files)
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


def build_datasets(data: DataConfig, tokenizer, *, seed: int = 42) -> DataBundle:
    """Read, normalise, split, render, tokenize, mask and truncate; report on all of it.

    The validation split (data.val_ratio) is drawn with data.shuffle_seed; `seed` orders the
    training samples (the trainer reshuffles every epoch; this keeps packing and the report
    reproducible). Raises DataError naming the file, line or key for bad input.
    """
    report = DataReport(files=list(data.train_files), val_files=list(data.val_files), max_length=data.max_length,
                        packing=data.packing, assistant_only_loss=data.assistant_only_loss,
                        efficiency_batch_size=REPORT_BATCH_SIZE)
    train_split = _read(data.train_files, data)
    report.rows_read = train_split.rows
    report.format, report.format_detection = _describe_formats(train_split.formats)
    report.dropped = dict(train_split.dropped)
    if not train_split.samples:
        _refuse_empty(data.train_files, train_split, "training")

    val_samples: list[Sample] = []
    if data.val_files:
        val_split = _read(data.val_files, data)
        report.val_rows_read = val_split.rows
        report.val_dropped = dict(val_split.dropped)
        if not val_split.samples:
            _refuse_empty(data.val_files, val_split, "validation")
        train_samples, val_samples = train_split.samples, val_split.samples
    elif data.val_ratio > 0:
        train_samples, val_samples = _split_validation(train_split.samples, data.val_ratio, data.shuffle_seed, data.train_files)
    else:
        train_samples = train_split.samples
    if data.max_samples is not None and len(train_samples) > data.max_samples:
        report.limited = len(train_samples) - data.max_samples
        train_samples = train_samples[: data.max_samples]

    needs_template = any(s.text is None for s in train_samples + val_samples)
    renderer = None
    report.chat_template = "none (text format)"
    if needs_template:
        resolved = template_for(tokenizer, data.chat_template)
        report.chat_template = resolved.source
        if resolved.warning:
            log.warning(resolved.warning)
            report.warnings.append(resolved.warning)
        renderer = ChatRenderer(tokenizer, resolved.text)

    encoder = _Encoder(tokenizer, data, renderer)
    train_dropped: dict[str, int] = {}
    train = encoder.encode(train_samples, train_dropped)
    for reason, n in train_dropped.items():
        _count(report.dropped, reason, n)
    if not train:
        split = _Split(samples=[], dropped=report.dropped, rows=train_split.rows)
        if any("truncation" in reason for reason in report.dropped):
            raise DataError(
                f"{', '.join(data.train_files)}: every sample lost its answer to truncation at max_length {data.max_length}",
                "raise data.max_length or shorten the prompts",
            )
        _refuse_empty(data.train_files, split, "training")
    val = encoder.encode(val_samples, report.val_dropped) if val_samples else []

    _fill_stats(report, tokenizer, train, val, data)
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    train_rows = [{"input_ids": train[i].input_ids, "labels": train[i].labels} for i in order]
    lengths = [len(row["input_ids"]) for row in train_rows]
    report.padding_efficiency = batch_efficiency(lengths, batch_size=REPORT_BATCH_SIZE, max_length=data.max_length, packing=False)
    report.packing_efficiency = batch_efficiency(lengths, batch_size=REPORT_BATCH_SIZE, max_length=data.max_length, packing=True)

    eval_rows = [{"input_ids": v.input_ids, "labels": v.labels} for v in val] if val_samples else None
    examples = [e for e in (_eval_example(renderer, v.sample) for v in val if v.sample.text is None) if e] if renderer else []
    return DataBundle(train_rows, eval_rows, examples, report, renderer.template if renderer else None)


def _fill_stats(report: DataReport, tokenizer, train: list[_Encoded], val: list[_Encoded], data: DataConfig) -> None:
    report.train_samples = len(train)
    report.eval_samples = len(val)
    raw_lengths = [t.raw_length for t in train]
    report.length = LengthStats.of(raw_lengths)
    report.histogram = histogram(raw_lengths)
    tokenized = len(train) + sum(n for reason, n in report.dropped.items() if "truncation" in reason)
    report.truncated = sum(1 for n in raw_lengths if n > data.max_length) + sum(
        n for reason, n in report.dropped.items() if "truncation" in reason)
    report.truncated_share = report.truncated / tokenized if tokenized else 0.0
    report.total_tokens = sum(len(t.input_ids) for t in train)
    report.supervised_tokens = sum(sum(1 for label in t.labels[1:] if label != IGNORE_INDEX) for t in train)
    report.supervised_share = report.supervised_tokens / report.total_tokens if report.total_tokens else 0.0
    keys: set[str] = set()
    for item in train:
        key = item.sample.key()
        report.duplicates += key in keys
        keys.add(key)
    report.train_val_overlap = sum(1 for v in val if v.sample.key() in keys)
    chats = [t for t in train if t.closed is not None]
    if chats:
        report.template_has_eos_after_assistant = all(t.closed for t in chats)
        eot = next((t.eot_id for t in chats if t.eot_id is not None), None)
        report.end_of_turn_token = tokenizer.convert_ids_to_tokens(eot) if eot is not None else None
        report.inexact_masks = sum(1 for t in chats if not t.exact)
        if not report.template_has_eos_after_assistant:
            open_count = sum(1 for t in chats if not t.closed)
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
    report.example = _example(tokenizer, train[0], data.max_length) if train else None
