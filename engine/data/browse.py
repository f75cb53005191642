"""What the Data screen shows: the data report, and each training row rendered as the model sees it.

    browser = open_browser(preset, cache_dir=ws.cache_dir)     # tokenizer, report, the rows read
    browser.report                                              # DataReport (as `tunebench data`)
    browser.sample(i) -> BrowsedSample                          # rendered, masked, truncated: plain data
    browser.find(text, start, forward=True) -> int | None       # the next row whose content has `text`
    browser.at_line(n) -> int | None                            # the row read from source line n

The report comes from the prepared-data cache (built when missing, as `tunebench data` builds it);
the rows are read again from the files as conversations, because the prepared rows keep only
tokens and not where each came from. Each row is rendered and masked on demand, by the same
encoder that prepares the data, so what is shown is what trains, dropped rows with their reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.data.formats import Sample
from engine.data.report import DataReport

BROWSE_LIMIT = 200_000  # rows held for browsing (conversations in memory); beyond, the first ones
SEARCH_CHUNK = 512


@dataclass
class BrowsedSample:
    position: int  # 0-based among the rows read
    where: str  # source file:line
    split: str  # "train", "validation" (data.val_ratio), or "left out (data.max_samples)"
    segments: list[tuple[str, bool]]  # decoded runs of tokens; True = supervised (carries a label)
    tokens: int  # after truncation to max_length
    supervised: int  # tokens that carry a label
    raw_tokens: int  # before truncation
    dropped: str | None = None  # why the row does not train (then `text` is all there is)
    text: str = ""  # the row's content, plain (for dropped rows and searching)

    @property
    def truncated(self) -> bool:
        return self.raw_tokens > self.tokens


def sample_text(sample: Sample) -> str:
    """A row's content as plain text: the text, or the turns as `role: content` lines."""
    if sample.text is not None:
        return sample.text
    return "\n".join(f"{m.get('role', '?')}: {m.get('content') or ''}" for m in sample.messages)


class DataBrowser:
    def __init__(self, report: DataReport, samples: list[Sample], splits: list[str], tokenizer, data, template: str | None,
                 limited: bool):
        from engine.data.build import _Encoder
        from engine.data.render import ChatRenderer

        self.report, self.samples, self.splits, self.data = report, samples, splits, data
        self.tokenizer = tokenizer
        self.limited = limited  # True: only the first BROWSE_LIMIT rows are browsable
        self._encoder = _Encoder(tokenizer, data, ChatRenderer(tokenizer, template) if template else None)
        self._texts: list[str | None] = [None] * len(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def text(self, position: int) -> str:
        if self._texts[position] is None:
            self._texts[position] = sample_text(self.samples[position])
        return self._texts[position]

    def sample(self, position: int) -> BrowsedSample:
        from engine.data.build import _example

        sample = self.samples[position]
        split = self.splits[position]
        item = self._encoder.encode_each([sample])[0]
        if isinstance(item, str):
            return BrowsedSample(position, sample.where, split, [], 0, 0, 0, dropped=item, text=self.text(position))
        example = _example(self.tokenizer, item, self.data.max_length)
        return BrowsedSample(position, sample.where, split, example.segments, len(item.input_ids), sum(example.supervised),
                             item.raw_length, text=self.text(position))

    def find(self, needle: str, start: int, *, forward: bool = True) -> int | None:
        """The first row after (or before) `start`, wrapping around, whose content holds `needle`
        (case-insensitive); None when no row does."""
        needle = needle.casefold()
        if not needle or not self.samples:
            return None
        count = len(self.samples)
        step = 1 if forward else -1
        for offset in range(1, count + 1):
            position = (start + step * offset) % count
            if needle in self.text(position).casefold():
                return position
        return None

    def at_line(self, line: int, file: str | None = None) -> int | None:
        """The row read from `line` of `file` (any training file when None)."""
        for position, sample in enumerate(self.samples):
            source, _, number = sample.where.rpartition(":")
            if number == str(line) and (file is None or Path(source).name == Path(file).name or source == file):
                return position
        return None


def open_browser(preset, *, cache_dir: str | Path | None = None, progress=None) -> DataBrowser:
    """The report (cache first) and the training files' rows, ready to render one by one.
    DataError names the file, line or key of bad input."""
    from engine.data.build import _iter_samples, _split_indices, _Split, build_datasets
    from engine.models import load_tokenizer

    data = preset.data
    tokenizer = load_tokenizer(preset.model)
    bundle = build_datasets(data, tokenizer, seed=data.shuffle_seed, cache_dir=cache_dir, progress=progress)
    samples: list[Sample] = []
    limited = False
    for chunk in _iter_samples(data.train_files, data, _Split()):
        samples.extend(chunk[: BROWSE_LIMIT - len(samples)])
        if len(samples) >= BROWSE_LIMIT:
            limited = True
            break
    splits = ["train"] * len(samples)
    if data.val_ratio > 0 and not data.val_files and len(samples) >= 2 and not limited:
        _, val_index = _split_indices(len(samples), data.val_ratio, data.shuffle_seed, data.train_files)
        for i in val_index:
            splits[i] = "validation"
    if data.max_samples is not None:
        kept = 0
        for i, split in enumerate(splits):
            if split == "train":
                kept += 1
                if kept > data.max_samples:
                    splits[i] = "left out (data.max_samples)"
    return DataBrowser(bundle.report, samples, splits, tokenizer, data, bundle.chat_template, limited)
