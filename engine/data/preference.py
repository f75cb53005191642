"""Preference data: the layouts people bring → the prompt / chosen / rejected strings TRL trains on.

    build_preference_datasets(preset, tokenizer, *, seed=42, progress=None) -> PreferenceBundle

LAYOUTS is the table, in detection order (each file's layout is detected on its own, like the SFT
formats in engine/data/formats.py, and said out loud in the report):

- unpaired  KTO's rows: prompt, completion, label (true = a desirable answer).
- sharegpt  LLaMA-Factory's ranking data: the prompt turns in conversations (or messages), chosen and
            rejected one turn each ({from, value} or {role, content}).
- alpaca    LLaMA-Factory's ranking data: instruction (+ input, system, history), chosen, rejected.
- pairs     TRL's: prompt, chosen, rejected, as texts or conversations; without a prompt column chosen
            and rejected are whole conversations that share the prompt turns (TRL's implicit prompt).

Every pair is rendered with the SFT renderer (engine/data/render.py): the prompt is the prompt turns
with the template's generation prompt; an answer is what follows it in the rendered conversation,
through the end-of-turn token. The template's text after that token (ChatML's newline) is left out,
as the SFT label mask leaves it unsupervised: the answer then ends with the eos where the template
closes turns with it, and TRL appends no second one. Where the tokenizer adds a bos token itself
when it encodes a text (Llama 3), the prompt leaves out the bos its template renders: TRL tokenises
the strings with the tokenizer's special tokens, so the sequence starts with one bos, not two.
KTO on pair data gets each pair as a desirable and an undesirable row, as TRL does.

A row that cannot make a pair — a side empty, chosen equal to rejected, answers that do not follow
the same prompt — is refused, not skipped: a DataError lists the first rows by file:line.

No prepared-data cache: preference sets are small (thousands of pairs), rendering them takes
seconds, and TRL tokenises the strings itself.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from engine.data.build import Progress, _describe_formats, _split_indices
from engine.data.formats import (
    DETECT_ROWS, FORMATS, RowSkip, _alpaca, _maybe_json, _normalize_tools, _role_map, _text_value, _turns,
    missing_column, turns_column,
)
from engine.data.loading import RawRows, iter_source
from engine.data.render import ChatRenderer, _prefix_end, template_for, tokenize_many
from engine.data.report import LengthStats, PreferenceExample, PreferenceReport
from engine.errors import DataError
from presets.schema import DataConfig, TrainPreset
from presets.stages import STAGES

if TYPE_CHECKING:
    from datasets import Dataset

log = logging.getLogger("tunebench.data")
SHOWN_ROWS = 5  # refused rows named in the error
EXAMPLES = 2  # rendered examples in the report
_CHUNK = 1000  # pairs rendered and tokenised per step (and per progress report)
# KTO trains best when desirable_weight * desirable / (undesirable_weight * undesirable) lies in
# this range (the KTO paper, as TRL's KTO documentation quotes it).
KTO_BALANCE = (1.0, 4 / 3)


@dataclass
class PreferenceBundle:
    train: "Dataset"  # pairs: prompt, chosen, rejected (strings); kto: prompt, completion (strings), label (bool)
    eval: "Dataset | None"
    report: PreferenceReport
    chat_template: str | None  # the Jinja the pairs were rendered with


@dataclass
class Pair:
    """One row as turns: the prompt, and the answer turns that follow it."""

    where: str  # "file:line"
    prompt: list[dict]
    chosen: list[dict]  # unpaired rows: the completion
    rejected: list[dict] | None = None  # None: an unpaired row
    label: bool | None = None  # unpaired rows: a desirable answer?
    tools: list[dict] | None = None

    def key(self) -> str:
        """Canonical content, for duplicate and train/validation overlap counts."""
        return json.dumps([self.prompt, self.chosen, self.rejected, self.label, self.tools], sort_keys=True, ensure_ascii=False)


# --------------------------------------------------------------------------- reading rows


def _json_turns(value):
    """Turns kept as JSON text (CSV cells) → the list; anything else as it is. An answer that merely
    starts with a bracket stays text."""
    if isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return value
        if isinstance(parsed, dict) or (isinstance(parsed, list) and parsed and all(isinstance(t, dict) for t in parsed)):
            return parsed
    return value


def _as_turns(value, what: str, where: str, data: DataConfig, roles: dict, role: str) -> list[dict]:
    """A column's text or turns as turns; a plain text becomes one turn of `role`."""
    value = _json_turns(value)
    if isinstance(value, dict):  # LLaMA-Factory's sharegpt keeps each answer as one turn object
        value = [value]
    if isinstance(value, list):
        if not value:
            raise RowSkip(f"{what} is empty")
        # The SFT turn reader: role/content or from/value keys, role values mapped by data.tags.
        return _turns({"turns": value}, where, data, fmt="messages", turns="turns", roles=roles).messages
    text = _text_value(value, what)
    if not text.strip():
        raise RowSkip(f"{what} is empty")
    return [{"role": role, "content": text}]


def _answer(turns: list[dict], what: str) -> list[dict]:
    """Answer turns: assistant (and tool) turns only, ending with a non-empty assistant turn."""
    if not turns:  # an implicit-prompt side that is all prompt
        raise RowSkip(f"{what} is empty")
    if any(t["role"] in ("user", "system") for t in turns):
        raise RowSkip("chosen and rejected do not share the prompt")
    if turns[-1]["role"] != "assistant":
        raise RowSkip(f"{what} does not end with an assistant turn")
    if not any(t["role"] == "assistant" and (t["content"].strip() or t.get("tool_calls")) for t in turns):
        raise RowSkip(f"{what} is empty")
    return turns


def _shared_prompt(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """TRL's implicit prompt: the turns chosen and rejected have in common, then each one's answer."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if n == len(chosen) == len(rejected):
        raise RowSkip("chosen equals rejected")
    if n == 0 or not any(t["role"] == "user" for t in chosen[:n]):
        raise RowSkip("chosen and rejected do not share the prompt")
    return chosen[:n], chosen[n:], rejected[n:]


def _strip_prompt(prompt: list[dict], turns: list[dict]) -> list[dict]:
    """TRL rows sometimes repeat the prompt turns at the head of chosen and rejected."""
    return turns[len(prompt):] if len(turns) > len(prompt) and turns[: len(prompt)] == prompt else turns


def _row_pairs(row: dict, where: str, data: DataConfig, roles: dict, **_) -> Pair:
    c = data.columns
    chosen = _as_turns(row.get(c.chosen), "chosen", where, data, roles, "assistant")
    rejected = _as_turns(row.get(c.rejected), "rejected", where, data, roles, "assistant")
    if c.prompt in row:
        prompt = _as_turns(row.get(c.prompt), "prompt", where, data, roles, "user")
        return Pair(where, prompt, _strip_prompt(prompt, chosen), _strip_prompt(prompt, rejected))
    if not isinstance(_json_turns(row.get(c.chosen)), list):
        raise RowSkip("no prompt: chosen and rejected are plain texts")
    prompt, chosen, rejected = _shared_prompt(chosen, rejected)
    return Pair(where, prompt, chosen, rejected)


def _row_alpaca(row: dict, where: str, data: DataConfig, roles: dict, **_) -> Pair:
    # The SFT alpaca reader builds the prompt turns (instruction + input, history); a stand-in
    # output completes the row it expects, and its turn is dropped.
    prompt = _alpaca({**row, data.columns.output: "-"}, where, data).messages[:-1]
    chosen = _as_turns(row.get(data.columns.chosen), "chosen", where, data, roles, "assistant")
    rejected = _as_turns(row.get(data.columns.rejected), "rejected", where, data, roles, "assistant")
    return Pair(where, prompt, chosen, rejected)


def _row_sharegpt(row: dict, where: str, data: DataConfig, roles: dict, turns: str | None = None, **_) -> Pair:
    prompt = _turns(row, where, data, fmt="sharegpt", turns=turns, roles=roles).messages
    if prompt[-1]["role"] not in ("user", "tool"):
        raise RowSkip(f"{turns} ends with the {prompt[-1]['role']}'s turn, not the user's that chosen and rejected answer")
    chosen = _as_turns(row.get(data.columns.chosen), "chosen", where, data, roles, "assistant")
    rejected = _as_turns(row.get(data.columns.rejected), "rejected", where, data, roles, "assistant")
    return Pair(where, prompt, chosen, rejected)


_LABELS = {True: True, False: False, 1: True, 0: False, "true": True, "false": False, "1": True, "0": False}


def _row_unpaired(row: dict, where: str, data: DataConfig, roles: dict, **_) -> Pair:
    c = data.columns
    prompt = _as_turns(row.get(c.prompt), "prompt", where, data, roles, "user")
    completion = _strip_prompt(prompt, _as_turns(row.get(c.completion), "completion", where, data, roles, "assistant"))
    value = row.get(c.label)
    label = _LABELS.get(value.strip().lower() if isinstance(value, str) else value)
    if label is None or isinstance(value, float):
        raise RowSkip(f"label is {value!r}, not true or false")
    return Pair(where, prompt, completion, label=label)


def _with_system(pair: Pair, row: dict, data: DataConfig) -> None:
    """The row's system column, else the preset's system prompt, when the prompt has no system turn."""
    if pair.prompt and pair.prompt[0]["role"] == "system":
        return
    system = row.get(data.columns.system)
    system = system if isinstance(system, str) and system.strip() else data.system_prompt
    if system:
        pair.prompt.insert(0, {"role": "system", "content": system})


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Layout:
    shape: str  # "pairs" or "unpaired" (presets.stages.Stage.data)
    required: dict[str, str]  # data.columns keys that must name a column -> what it holds
    read: Callable[..., Pair]
    turns: bool = False  # the prompt turns are in a turns column (conversations / messages)
    source: str = ""  # whose layout it is, for the detection line


LAYOUTS: dict[str, Layout] = {
    "unpaired": Layout("unpaired", {"prompt": "the kto prompt", "completion": "the kto answer", "label": "the kto judgement"},
                       _row_unpaired, source="KTO's unpaired layout"),
    "sharegpt": Layout("pairs", {"chosen": "the preferred answer", "rejected": "the dispreferred answer"},
                       _row_sharegpt, turns=True, source="LLaMA-Factory's sharegpt ranking layout"),
    "alpaca": Layout("pairs", {"instruction": "the alpaca instruction", "chosen": "the preferred answer",
                               "rejected": "the dispreferred answer"}, _row_alpaca, source="LLaMA-Factory's alpaca ranking layout"),
    "pairs": Layout("pairs", {"chosen": "the preferred answer", "rejected": "the dispreferred answer"}, _row_pairs,
                    source="TRL's preference layout"),
}

# Refusal reasons (their start) → what to do; the DataError's advice lists those that occurred.
_ADVICE = {
    "chosen equals rejected": "give each pair two different answers (or remove the row)",
    "chosen and rejected do not share the prompt": "chosen and rejected must answer the same prompt turns: put the "
    "shared turns in the prompt column (or in conversations), and only the answers in chosen and rejected",
    "no prompt": "add a prompt column (data.columns.prompt names it), or give chosen and rejected as conversations that "
    "share the prompt turns",
    "label": "set each label to true (a desirable answer) or false",
}


def _detect(head: RawRows, data: DataConfig) -> tuple[str, str] | None:
    names = head.columns()
    c = data.columns
    for name, layout in LAYOUTS.items():
        wanted = [getattr(c, key) for key in layout.required]
        if not all(column in names for column in wanted):
            continue
        if layout.turns:
            turns = turns_column(head, c)
            if turns is None:
                continue
            wanted = [turns, *wanted]
        if name == "pairs" and c.prompt in names:
            wanted = [c.prompt, *wanted]
        shown = ", ".join(repr(w) for w in wanted[:-1]) + f" and {wanted[-1]!r}"
        how = f"detected: columns {shown}"
        if name == "pairs" and c.prompt not in names:
            how += f" without {c.prompt!r}: conversations that share their prompt turns (TRL's implicit prompt)"
        return name, f"{how} ({layout.source}; first {len(head.rows)} rows)"
    return None


def _detect_layout(raw: RawRows, data: DataConfig, stage: str) -> tuple[str, str]:
    if data.format != "auto":
        layout = LAYOUTS.get(data.format)
        if layout is None:  # the schema lets only preference layouts through; this is a safeguard
            raise DataError(f"data.format {data.format} is not preference data", f"use auto or one of {', '.join(LAYOUTS)}")
        for key, why in layout.required.items():
            if getattr(data.columns, key) not in raw.columns():
                raise missing_column(raw, data, key, why)
        if layout.turns and turns_column(raw, data.columns) is None:
            raise missing_column(raw, data, "conversations", "the prompt turns")
        fmt, how = data.format, "set in the preset"
    else:
        head = RawRows(raw.source, raw.rows[:DETECT_ROWS], raw.where[:DETECT_ROWS])
        found = _detect(head, data)
        if found is None:
            raise _undetected(head, data, stage)
        fmt, how = found
    if LAYOUTS[fmt].shape == "unpaired" and STAGES[stage].data == "pairs":
        raise DataError(
            f"{raw.source}: stage {stage} trains on pairs, but the file holds unpaired rows ({data.columns.prompt}/"
            f"{data.columns.completion}/{data.columns.label}, KTO's layout)",
            "use stage kto for unpaired data, or give each prompt a chosen and a rejected answer",
        )
    if fmt == "pairs" and data.columns.prompt not in raw.columns():
        first = raw.rows[0].get(data.columns.chosen) if raw.rows else None
        if not isinstance(_json_turns(first), list):
            raise DataError(
                f"{raw.source}: chosen and rejected are plain texts and there is no {data.columns.prompt!r} column: "
                "nothing says what they answer",
                _ADVICE["no prompt"],
            )
    return fmt, how


def _undetected(head: RawRows, data: DataConfig, stage: str) -> DataError:
    columns = sorted(head.columns())
    sft = next((name for name, row_format in FORMATS.items() if row_format.detect(head, data)), None)
    looks = f"; it looks like {sft} data for supervised fine-tuning (stage sft)" if sft else ""
    return DataError(
        f"{head.source}: cannot tell the preference layout from its columns {columns}{looks}",
        f"stage {stage} reads prompt/chosen/rejected (TRL), instruction/chosen/rejected (alpaca ranking), "
        "conversations/chosen/rejected (sharegpt ranking) or prompt/completion/label (kto); map your columns with "
        "data.columns.* and set data.format, or set stage: sft",
    )


# --------------------------------------------------------------------------- reading files


@dataclass
class _Read:
    pairs: list[Pair] = field(default_factory=list)
    rows: int = 0
    formats: dict[str, tuple[str, str]] = field(default_factory=dict)  # source → (layout, how)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (where, reason)


def _read(files: list[str], data: DataConfig, stage: str) -> _Read:
    out = _Read()
    roles = _role_map(data.tags)
    for spec in files:
        fmt = None
        for raw in iter_source(spec, hub_split=data.hub_split):
            if fmt is None:
                fmt, how = _detect_layout(raw, data, stage)
                out.formats[raw.source] = (fmt, how)
                layout = LAYOUTS[fmt]
                turns = turns_column(raw, data.columns) if layout.turns else None
            out.rows += len(raw.rows)
            for row, where in zip(raw.rows, raw.where):
                try:
                    pair = layout.read(row, where, data, roles=roles, turns=turns)
                    pair.chosen = _answer(pair.chosen, "completion" if pair.rejected is None else "chosen")
                    if pair.rejected is not None:
                        pair.rejected = _answer(pair.rejected, "rejected")
                        if pair.chosen == pair.rejected:
                            raise RowSkip("chosen equals rejected")
                    _with_system(pair, row, data)
                    tools = _maybe_json(row.get(data.columns.tools), "tools")
                    pair.tools = _normalize_tools(tools) if tools else None
                except RowSkip as skip:
                    out.refused.append((where, skip.reason))
                    continue
                out.pairs.append(pair)
    return out


def _refuse(refused: list[tuple[str, str]]) -> DataError:
    shown = "; ".join(f"{where}: {reason}" for where, reason in refused[:SHOWN_ROWS])
    more = f"; and {len(refused) - SHOWN_ROWS} more" if len(refused) > SHOWN_ROWS else ""
    counts: dict[str, int] = {}
    for _, reason in refused:
        counts[reason] = counts.get(reason, 0) + 1
    tally = ", ".join(f"{reason}: {n}" for reason, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    advice = [text for start, text in _ADVICE.items() if any(reason.startswith(start) for reason in counts)]
    advice.append("fix or remove these rows (a pair needs a prompt and two different, non-empty answers to it)")
    return DataError(f"{len(refused)} preference row{'s' if len(refused) > 1 else ''} cannot be used ({tally}): {shown}{more}",
                     "; ".join(advice))


# --------------------------------------------------------------------------- rendering


class _PairRenderer:
    """Prompt and answer strings of a pair, split where the prompt's rendering ends."""

    def __init__(self, tokenizer, template: str):
        self.renderer = ChatRenderer(tokenizer, template)
        # The texts of the tokens that close a turn: an answer ends after the last of them.
        self.closers = [tokenizer.convert_ids_to_tokens(i) for i in self.renderer.eot_ids]

    def render(self, pair: Pair) -> tuple[str, list[str], bool]:
        """(prompt, [answer per side], whether the prompt rendered alone is a prefix of each conversation)."""
        sides = [pair.chosen] if pair.rejected is None else [pair.chosen, pair.rejected]
        fulls, start, exact = [], None, True
        for answer in sides:
            messages, tools = self.renderer.prepare(pair.prompt + answer, pair.tools)
            head_turns = messages[: len(messages) - len(answer)]  # prepare may add a system turn at the head
            head = self.renderer.render(head_turns, tools, add_generation_prompt=True)
            full = self.renderer.render(messages, tools, add_generation_prompt=False)
            end, ok = _prefix_end(full, head)
            start = end if start is None else min(start, end)
            exact = exact and ok
            fulls.append(full)
        # Where the template renders the prompt alone differently (Qwen3's empty <think> block), the
        # split falls at the common prefix, as TRL splits it; the prompt is then the same for both sides.
        return fulls[0][:start], [self._close(full[start:]) for full in fulls], exact

    def _close(self, answer: str) -> str:
        cut = max((answer.rfind(text) + len(text) for text in self.closers if text and text in answer), default=len(answer))
        return answer[:cut]


@dataclass
class _Rendered:
    pair: Pair
    prompt: str
    answers: list[str]
    exact: bool
    lengths: tuple[int, ...] = ()  # prompt tokens, then each answer's


def _render_all(pairs: list[Pair], renderer: _PairRenderer, tokenizer, progress: Progress | None) -> list[_Rendered]:
    out: list[_Rendered] = []
    refused: list[tuple[str, str]] = []
    for start in range(0, len(pairs), _CHUNK):
        chunk: list[_Rendered] = []
        for pair in pairs[start : start + _CHUNK]:
            try:
                prompt, answers, exact = renderer.render(pair)
            except Exception as exc:  # jinja errors and templates' raise_exception()
                message = str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__
                refused.append((pair.where, f"chat template error: {message}"))
                continue
            chunk.append(_Rendered(pair, prompt, answers, exact))
        # Counted as TRL counts them: the prompt, and the prompt with each answer.
        texts = [text for item in chunk for text in (item.prompt, *(item.prompt + a for a in item.answers))]
        ids = iter(tokenize_many(tokenizer, texts))
        for item in chunk:
            prompt_ids = next(ids)
            item.lengths = (len(prompt_ids), *(len(next(ids)) - len(prompt_ids) for _ in item.answers))
        out.extend(chunk)
        if progress is not None:
            progress("rendering", min(start + _CHUNK, len(pairs)), len(pairs))
    if refused:
        raise _refuse(refused)
    return out


def _unpair(items: list[_Rendered]) -> list[_Rendered]:
    """KTO on pair data, as TRL unpairs it: the chosen answer a desirable row, the rejected one an
    undesirable row; unpaired rows stay as they are."""
    out = []
    for item in items:
        if item.pair.rejected is None:
            out.append(item)
            continue
        for index, label in ((0, True), (1, False)):
            pair = Pair(item.pair.where, item.pair.prompt, [item.pair.chosen, item.pair.rejected][index], label=label,
                        tools=item.pair.tools)
            out.append(_Rendered(pair, item.prompt, [item.answers[index]], item.exact,
                                 (item.lengths[0], item.lengths[1 + index])))
    return out


def _added_bos(tokenizer) -> str | None:
    """The bos text when the tokenizer puts a bos token before every text it encodes, else None."""
    bos, bos_id = getattr(tokenizer, "bos_token", None), getattr(tokenizer, "bos_token_id", None)
    if not bos or bos_id is None:
        return None
    ids = tokenizer("a")["input_ids"]
    return bos if ids and ids[0] == bos_id else None


def _dataset(items: list[_Rendered], unpaired: bool, bos: str | None):
    from datasets import Dataset

    prompts = [i.prompt[len(bos):] if bos and i.prompt.startswith(bos) else i.prompt for i in items]
    if unpaired:
        return Dataset.from_dict({"prompt": prompts, "completion": [i.answers[0] for i in items],
                                  "label": [bool(i.pair.label) for i in items]})
    return Dataset.from_dict({"prompt": prompts, "chosen": [i.answers[0] for i in items],
                              "rejected": [i.answers[1] for i in items]})


# --------------------------------------------------------------------------- the pipeline


def build_preference_datasets(preset: TrainPreset, tokenizer, *, seed: int = 42, progress: Progress | None = None) -> PreferenceBundle:
    """The training (and validation) rows of a preference stage as TRL takes them, and their report.

    Raises DataError for a file whose layout cannot be told, a stage that does not fit the data, and
    rows that make no pair (each named by file:line)."""
    data, stage = preset.data, preset.stage
    shape = STAGES[stage].data
    if shape not in ("pairs", "unpaired"):
        raise DataError(f"stage {stage} does not train on preference data", "use build_datasets for sft")
    report = PreferenceReport(stage=stage, files=list(data.train_files), val_files=list(data.val_files),
                              max_length=data.max_length)
    train_read = _read(data.train_files, data, stage)
    val_read = _read(data.val_files, data, stage) if data.val_files else None
    refused = train_read.refused + (val_read.refused if val_read else [])
    if refused:
        raise _refuse(refused)
    report.rows_read = train_read.rows
    report.format, report.format_detection = _describe_formats(train_read.formats)
    train_pairs = train_read.pairs
    if not train_pairs:
        raise DataError(f"{', '.join(data.train_files)}: no preference rows", "add rows to the files")
    if val_read is not None:
        report.val_rows_read = val_read.rows
        val_pairs = val_read.pairs
    elif data.val_ratio > 0:
        # The SFT split rule, over pairs: a pair's two KTO rows stay on the same side.
        train_index, val_index = _split_indices(len(train_pairs), data.val_ratio, data.shuffle_seed, data.train_files)
        train_pairs, val_pairs = [train_pairs[i] for i in train_index], [train_pairs[i] for i in val_index]
    else:
        val_pairs = []
    if data.max_samples is not None and len(train_pairs) > data.max_samples:
        report.limited = len(train_pairs) - data.max_samples
        train_pairs = train_pairs[: data.max_samples]

    resolved = template_for(tokenizer, data.chat_template)
    report.chat_template = resolved.source
    if resolved.warning:
        log.warning(resolved.warning)
        report.warnings.append(resolved.warning)
    renderer = _PairRenderer(tokenizer, resolved.text)
    train = _render_all(train_pairs, renderer, tokenizer, progress)
    evaluation = _render_all(val_pairs, renderer, tokenizer, None)
    if shape == "unpaired" and any(item.pair.rejected is not None for item in train + evaluation):
        report.unpaired_from_pairs = True
        report.format_detection += "; kto: each pair gives a desirable and an undesirable row"
        train, evaluation = _unpair(train), _unpair(evaluation)

    _fill(report, train, evaluation, data, preset, shape)
    examples = train[:EXAMPLES]
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)  # as build_datasets: the training rows in the seed's order
    train = [train[i] for i in order]
    bos, unpaired = _added_bos(tokenizer), shape == "unpaired"
    return PreferenceBundle(_dataset(train, unpaired, bos), _dataset(evaluation, unpaired, bos) if evaluation else None,
                            _with_examples(report, examples, shape), resolved.text)


def _with_examples(report: PreferenceReport, items: list[_Rendered], shape: str) -> PreferenceReport:
    for item in items:
        if shape == "unpaired":
            names = ["desirable" if item.pair.label else "undesirable"]
        else:
            names = ["chosen", "rejected"]
        report.examples.append(PreferenceExample(item.pair.where, item.prompt, list(zip(names, item.answers))))
    return report


def _fill(report: PreferenceReport, train: list[_Rendered], evaluation: list[_Rendered], data: DataConfig,
          preset: TrainPreset, shape: str) -> None:
    limit = data.max_length
    report.train, report.eval = len(train), len(evaluation)
    report.prompt_length = LengthStats.of([i.lengths[0] for i in train])
    if shape == "unpaired":
        report.desirable = sum(1 for i in train if i.pair.label)
        report.undesirable = len(train) - report.desirable
        report.chosen_length = LengthStats.of([i.lengths[1] for i in train if i.pair.label])
        report.rejected_length = LengthStats.of([i.lengths[1] for i in train if not i.pair.label])
    else:
        report.chosen_length = LengthStats.of([i.lengths[1] for i in train])
        report.rejected_length = LengthStats.of([i.lengths[2] for i in train])
    report.truncated = sum(1 for i in train if i.lengths[0] + max(i.lengths[1:]) > limit)
    report.prompt_too_long = sum(1 for i in train if i.lengths[0] >= limit)
    report.inexact_prompts = sum(1 for i in train if not i.exact)
    keys: set[str] = set()
    for item in train:
        key = item.pair.key()
        report.duplicates += key in keys
        keys.add(key)
    report.train_val_overlap = sum(1 for item in evaluation if item.pair.key() in keys)

    unit = "rows" if shape == "unpaired" else "pairs"
    if report.prompt_too_long == len(train):
        raise DataError(
            f"{', '.join(data.train_files)}: every training prompt is {limit} tokens or longer (data.max_length): "
            "no answer token would be left to compare",
            f"raise data.max_length above the prompts (longest: {report.prompt_length.max} tokens) or shorten them",
        )
    if report.prompt_too_long:
        report.warnings.append(
            f"{report.prompt_too_long} training {unit} have a prompt of data.max_length ({limit}) tokens or more: TRL "
            f"drops them. Raise data.max_length (longest prompt: {report.prompt_length.max} tokens)."
        )
    if report.truncated > report.prompt_too_long:
        report.warnings.append(
            f"{report.truncated - report.prompt_too_long} training {unit} are longer than data.max_length ({limit}) "
            "with their longer answer: TRL cuts the answers, and the preference then compares cut answers."
        )
    if report.inexact_prompts:
        report.warnings.append(
            f"{report.inexact_prompts} {unit}: the chat template renders the prompt alone differently from the prompt "
            "within the conversation; they were split where the two renderings part."
        )
    if shape == "unpaired":
        _kto_balance(report, preset)


def _kto_balance(report: PreferenceReport, preset: TrainPreset) -> None:
    pref = preset.preference
    if not report.desirable or not report.undesirable:
        missing = "desirable (label true)" if not report.desirable else "undesirable (label false)"
        report.warnings.append(f"kto: no {missing} rows in the training data: KTO learns from both kinds.")
        return
    ratio = pref.desirable_weight * report.desirable / (pref.undesirable_weight * report.undesirable)
    low, high = KTO_BALANCE
    if low <= ratio <= high:
        return
    if ratio > high:
        weight = pref.desirable_weight * report.desirable / report.undesirable
        fix = f"set preference.undesirable_weight: {weight:.2f}"
    else:
        weight = pref.undesirable_weight * report.undesirable / report.desirable
        fix = f"set preference.desirable_weight: {weight:.2f}"
    report.warnings.append(
        f"kto: {report.desirable} desirable and {report.undesirable} undesirable rows, weighted "
        f"{pref.desirable_weight:g} and {pref.undesirable_weight:g}: the weighted ratio {ratio:.2f} is outside "
        f"{low:g}–{high:.2f}, where KTO trains best; {fix} to balance them."
    )
