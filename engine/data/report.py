"""DataReport: what the data pipeline read, kept, dropped and how the samples look in tokens.

`tunebench data` prints it and the doctor builds its data findings from it, so every field is
explicit and documented here. Token counts are of the training split unless a field says otherwise.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field


@dataclass
class LengthStats:
    """Tokens per training sample as rendered, before truncation."""

    min: int = 0
    median: int = 0
    p95: int = 0
    max: int = 0
    mean: float = 0.0

    @classmethod
    def of(cls, lengths: list[int]) -> "LengthStats":
        if not lengths:
            return cls()
        ordered = sorted(lengths)

        def quantile(q: float) -> int:
            return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

        return cls(ordered[0], quantile(0.5), quantile(0.95), ordered[-1], sum(ordered) / len(ordered))


@dataclass
class HistogramBin:
    lo: int  # inclusive
    hi: int  # exclusive
    count: int


def histogram(lengths: list[int], bins: int = 12) -> list[HistogramBin]:
    """At most `bins` equal-width bins of a "nice" width (1, 2 or 5 × 10^k), from the bin holding
    the shortest sample to the one holding the longest."""
    if not lengths:
        return []
    low, top = min(lengths), max(lengths) + 1
    raw_width = max(1.0, (top - low) / bins)
    magnitude = 10 ** math.floor(math.log10(raw_width))
    width = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw_width)
    first = low // width
    count = math.ceil(top / width) - first
    out = [HistogramBin((first + i) * width, (first + i + 1) * width, 0) for i in range(count)]
    for n in lengths:
        out[n // width - first].count += 1
    return out


@dataclass
class RenderedExample:
    """One training sample as the model sees it."""

    where: str  # source file:line
    tokens: list[str]  # each token decoded on its own
    supervised: list[bool]  # per token: does it carry a label
    segments: list[tuple[str, bool]]  # runs of tokens with the same flag, decoded together (for display)
    truncated: bool


@dataclass
class DataReport:
    files: list[str] = field(default_factory=list)  # training sources
    val_files: list[str] = field(default_factory=list)  # validation sources (empty with val_ratio)
    rows_read: int = 0  # rows in the training sources
    val_rows_read: int = 0  # rows in the validation files
    format: str = ""  # alpaca | sharegpt | messages | text ("mixed: …" when files differ)
    format_detection: str = ""  # how the format was decided, per file
    chat_template: str = ""  # where the template came from: the tokenizer's | named: x | inline | fallback: ChatML | none
    assistant_only_loss: bool = True
    warnings: list[str] = field(default_factory=list)  # things a user must hear about (ChatML fallback, …)
    dropped: dict[str, int] = field(default_factory=dict)  # training rows left out, by reason
    val_dropped: dict[str, int] = field(default_factory=dict)  # validation rows left out, by reason
    limited: int = 0  # training rows beyond data.max_samples
    train_samples: int = 0
    eval_samples: int = 0
    max_length: int = 0
    length: LengthStats = field(default_factory=LengthStats)
    histogram: list[HistogramBin] = field(default_factory=list)  # of the lengths in `length`
    truncated: int = 0  # training samples longer than max_length (cut, or dropped when no label survived)
    truncated_share: float = 0.0  # truncated / samples tokenized
    total_tokens: int = 0  # training tokens after truncation
    supervised_tokens: int = 0  # of those, tokens that carry a label (and are predicted: the first never is)
    supervised_share: float = 0.0
    packing: bool = False  # data.packing
    efficiency_batch_size: int = 8  # batch size the two efficiencies below are computed at
    padding_efficiency: float = 0.0  # useful tokens / slots with right-padded batches
    packing_efficiency: float = 0.0  # useful tokens / slots with packed batches
    duplicates: int = 0  # training samples identical to an earlier one
    train_val_overlap: int = 0  # validation samples identical to a training sample
    template_has_eos_after_assistant: bool | None = None  # None: text format (eos appended to each text)
    end_of_turn_token: str | None = None  # the token that closes answers, when there is one
    inexact_masks: int = 0  # samples whose template renders prefixes differently (boundary approximated)
    prefix_rendered: int = 0  # chat samples masked by rendering each prefix (the others: their shape's slot layout)
    example: RenderedExample | None = None
    sampled: int = 0  # data.streaming: the report covers only the first `sampled` training samples (0: all)

    def to_dict(self) -> dict:
        return asdict(self)

    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    @classmethod
    def from_dict(cls, saved: dict) -> "DataReport":
        """The inverse of to_dict (for the prepared-data cache, which keeps reports as JSON)."""
        known = {f.name for f in dataclasses.fields(cls)}
        fields = {key: value for key, value in saved.items() if key in known}  # a field since removed is passed over
        fields["length"] = LengthStats(**saved["length"])
        fields["histogram"] = [HistogramBin(**b) for b in saved["histogram"]]
        example = saved.get("example")
        if example is not None:
            fields["example"] = RenderedExample(**{**example, "segments": [tuple(s) for s in example["segments"]]})
        return cls(**fields)


# --------------------------------------------------------------------------- preference data


@dataclass
class PreferenceExample:
    """One pair (or KTO row) as TRL receives it: the rendered prompt and its rendered answers."""

    where: str  # source file:line
    prompt: str
    answers: list[tuple[str, str]]  # (chosen | rejected | desirable | undesirable, rendered answer)


@dataclass
class PreferenceReport:
    """What the preference pipeline read and how the pairs look in tokens (engine/data/preference.py).
    Token counts are of the training split, as TRL counts them: the prompt, and each answer after it."""

    stage: str = ""  # dpo | orpo | simpo | kto
    files: list[str] = field(default_factory=list)
    val_files: list[str] = field(default_factory=list)
    rows_read: int = 0
    val_rows_read: int = 0
    format: str = ""  # pairs | alpaca | sharegpt | unpaired ("mixed: …" when files differ)
    format_detection: str = ""  # which layout and why, per file
    chat_template: str = ""  # where the template came from (as DataReport.chat_template)
    train: int = 0  # training pairs (kto: rows)
    eval: int = 0  # validation pairs (kto: rows)
    limited: int = 0  # training pairs beyond data.max_samples
    max_length: int = 0
    prompt_length: LengthStats = field(default_factory=LengthStats)
    chosen_length: LengthStats = field(default_factory=LengthStats)  # kto: the desirable answers
    rejected_length: LengthStats = field(default_factory=LengthStats)  # kto: the undesirable answers
    truncated: int = 0  # prompt + the longer answer over max_length: TRL cuts the answers
    prompt_too_long: int = 0  # the prompt alone reaches max_length: TRL drops these
    desirable: int = 0  # kto only
    undesirable: int = 0  # kto only
    unpaired_from_pairs: bool = False  # kto on pair data: each pair gave a desirable and an undesirable row
    duplicates: int = 0  # training pairs identical to an earlier one
    train_val_overlap: int = 0  # validation pairs identical to a training pair
    inexact_prompts: int = 0  # the template renders the prompt alone differently (split at the common prefix)
    warnings: list[str] = field(default_factory=list)
    examples: list[PreferenceExample] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        """The report as plain text lines (`tunebench data`, the TUI); warnings start with "warning:"."""
        kto = self.stage == "kto"
        unit = "rows" if kto else "pairs"
        out = [f"stage {self.stage}: {self.train} training {unit}, {self.eval} validation {unit}",
               "files: " + ", ".join(self.files) + (f"  (validation: {', '.join(self.val_files)})" if self.val_files else ""),
               f"format: {self.format} — {self.format_detection}",
               f"chat template: {self.chat_template}",
               f"rows read: {self.rows_read}" + (f" (+{self.val_rows_read} validation)" if self.val_rows_read else "")]
        if self.limited:
            out.append(f"left out by data.max_samples: {self.limited}")
        if kto:
            out.append(f"desirable: {self.desirable}  undesirable: {self.undesirable}"
                       + ("  (each pair gave one of each)" if self.unpaired_from_pairs else ""))
        names = ("desirable", "undesirable") if kto else ("chosen", "rejected")
        out.append("tokens         mean    p50    p95    max")
        for name, stats in (("prompt", self.prompt_length), (names[0], self.chosen_length), (names[1], self.rejected_length)):
            out.append(f"  {name:<12} {stats.mean:>5.0f} {stats.median:>6} {stats.p95:>6} {stats.max:>6}")
        share = f" ({self.truncated / self.train:.1%})" if self.train else ""
        out.append(f"over max_length {self.max_length} (prompt + longer answer): {self.truncated}{share}, answers cut")
        out.append(f"prompt alone reaches max_length: {self.prompt_too_long} (TRL drops these)")
        out.append(f"duplicate {unit}: {self.duplicates}  validation {unit} also in training: {self.train_val_overlap}")
        out.extend(f"warning: {warning}" for warning in self.warnings)
        for example in self.examples:
            out.append(f"example ({example.where}):")
            out.append(f"  prompt: {example.prompt!r}")
            out.extend(f"  {name}: {text!r}" for name, text in example.answers)
        return out
