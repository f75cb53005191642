"""Row formats: detection, column / role-tag mapping, and normalisation to one shape.

FORMATS is the table: a format's name → its detector, its normaliser, its columns and, for the
list-of-turns formats, its turn keys and role tags. Detection and normalisation go through it;
adding a format is a row there (its name in presets.schema.DATA_FORMATS), its functions and a test.

Every chat format (alpaca, sharegpt, messages) becomes a list of messages with the roles
system / user / assistant / tool, plus optional tool definitions; the text format becomes a string.
A row that cannot be used is skipped with a short reason (counted in the report); a mapping that
names a column no row has is a DataError naming the key, the column, the file and the closest
column. Detection reads the leading rows only, so normalisation checks the shape of every row it
cannot use: a row shaped as another format (a mixed file) is a DataError, not a silent skip.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from typing import Callable

from engine.data.loading import RawRows
from engine.errors import DataError
from presets.schema import DATA_FORMATS, ColumnMap, DataConfig, RoleTags

TURN_COLUMNS = ("conversations", "messages")  # where sharegpt / messages keep their turns by default
DETECT_ROWS = 5  # auto detection looks at this many leading rows
_DEFAULT_COLUMNS = ColumnMap()


@dataclass
class Sample:
    """One usable row: a conversation (chat formats) or a text (text format)."""

    where: str  # "file:line" of the source row
    messages: list[dict] = field(default_factory=list)
    tools: list[dict] | None = None
    text: str | None = None

    def key(self) -> str:
        """Canonical content, for duplicate and train/validation overlap counts."""
        if self.text is not None:
            return self.text
        return json.dumps([self.messages, self.tools], sort_keys=True, ensure_ascii=False)


class RowSkip(Exception):
    """A row that is left out; `reason` is short and shared by similar rows (it is a report key)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- detection


def turns_column(raw: RawRows, columns: ColumnMap) -> str | None:
    if columns.conversations:
        return columns.conversations if columns.conversations in raw.columns() else None
    # The first row that has a turns column decides, as in detection: in a file mixing
    # `messages` and `conversations` rows, the other rows are then refused as a mixed file.
    return next((name for row in raw.rows for name in TURN_COLUMNS if name in row), None)


def _first_turn(head: RawRows, columns: ColumnMap) -> tuple[str | None, dict | None]:
    """(turns column, its first turn object) in the leading rows."""
    turns = turns_column(head, columns)
    if turns is None:
        return None, None
    first = next((t for row in head.rows if isinstance(row.get(turns), list) for t in row[turns] if isinstance(t, dict)), None)
    return turns, first if first is not None else _first_turn_from_json(head.rows, turns)


def _first_turn_from_json(rows: list[dict], turns: str) -> dict | None:
    """CSV cells hold turns as JSON text."""
    for row in rows:
        value = row.get(turns)
        if isinstance(value, str):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                continue
            if isinstance(parsed, list) and parsed and isinstance(parsed[0], dict):
                return parsed[0]
    return None


def _detect_turns(name: str) -> Callable[[RawRows, DataConfig], str | None]:
    def detect(head: RawRows, data: DataConfig) -> str | None:
        turns, first = _first_turn(head, data.columns)
        if first is None:
            return None
        keys = FORMATS[name].turns
        named = data.tags.role_key
        if named is not None and named in first:
            # A role key the preset names decides: the format whose own key it is, else _RENAMED_TAGS.
            owner = next((n for n, f in FORMATS.items() if f.turns and f.turns.role_key == named), _RENAMED_TAGS)
            if owner != name:
                return None
        elif not (keys.role_key in first and keys.content_key in first):
            return None
        return f"detected: column {turns!r} holds turns keyed {keys.role_key}/{keys.content_key} (first {len(head.rows)} rows)"

    return detect


def _detect_columns(name: str) -> Callable[[RawRows, DataConfig], str | None]:
    def detect(head: RawRows, data: DataConfig) -> str | None:
        wanted = [getattr(data.columns, key) for key in FORMATS[name].required]
        if not all(column in head.columns() for column in wanted):
            return None
        listed = " and ".join(repr(column) for column in wanted)
        return f"detected: column{'s' if len(wanted) > 1 else ''} {listed} (first {len(head.rows)} rows)"

    return detect


def detect_format(raw: RawRows, data: DataConfig) -> tuple[str, str]:
    """(format, how it was decided). Explicit formats are taken as given, after a column check."""
    if data.format != "auto":
        check_columns(raw, data.format, data)
        return data.format, "set in the preset"
    head = RawRows(raw.source, raw.rows[:DETECT_ROWS], raw.where[:DETECT_ROWS])
    for name, row_format in FORMATS.items():
        how = row_format.detect(head, data)
        if how is not None:
            check_columns(raw, name, data)
            return name, how
    _check_renamed_columns(raw, data)
    raise DataError(
        f"{raw.source}: cannot tell the data format from its columns {sorted(head.columns())}",
        "expected alpaca (instruction, output), sharegpt/messages (conversations or messages: a list of turns) or "
        "text (text); set data.format and map your columns with data.columns.*",
    )


def check_columns(raw: RawRows, fmt: str, data: DataConfig) -> None:
    """Required columns must exist; optional ones only when the preset renamed them."""
    names = raw.columns()
    columns = data.columns
    row_format = FORMATS.get(fmt)
    if row_format is None:
        raise DataError(f"unknown data format {fmt!r}", f"use one of {', '.join(DATA_FORMATS)} or auto")
    for key, why in row_format.required.items():
        if getattr(columns, key) not in names:
            raise missing_column(raw, data, key, why)
    if row_format.turns is not None and turns_column(raw, columns) is None:
        if columns.conversations:
            raise missing_column(raw, data, "conversations", f"the {fmt} turns")
        raise DataError(
            f"{raw.source}: no 'conversations' or 'messages' column for the {fmt} format; its columns are {sorted(names)}",
            "set data.columns.conversations to the column that holds the list of turns",
        )
    for key in row_format.optional:
        if getattr(columns, key) != getattr(_DEFAULT_COLUMNS, key) and getattr(columns, key) not in names:
            raise missing_column(raw, data, key, _column_role(key))


def _check_renamed_columns(raw: RawRows, data: DataConfig) -> None:
    """No format was detected: a renamed column that is missing is the likely cause, so name its key."""
    names = raw.columns()
    for key in ColumnMap.model_fields:
        column = getattr(data.columns, key)
        if column is not None and column != getattr(_DEFAULT_COLUMNS, key) and column not in names:
            raise missing_column(raw, data, key, _column_role(key))


def _column_role(key: str) -> str:
    """What the column holds, from the schema (e.g. "alpaca: the answer column")."""
    return ColumnMap.model_fields[key].description or "mapped in the preset"


def missing_column(raw: RawRows, data: DataConfig, key: str, why: str) -> DataError:
    """data.columns.<key> names a column the file lacks: name the key, the columns, the closest one."""
    names = raw.columns()
    column = getattr(data.columns, key)
    closest = _closest_column(column, key, names, data)
    default = getattr(_DEFAULT_COLUMNS, key)
    if closest is None:
        hint, advice = "", f"add a {column!r} column to the file, or remove data.columns.{key} from the preset"
    elif closest == default or (key == "conversations" and closest in TURN_COLUMNS):
        hint = f"; it has the default column {closest!r}"
        advice = f"remove data.columns.{key} from the preset to use {closest!r}, or set it to the column that holds it"
    else:
        hint = f"; the closest is {closest!r}"
        advice = f"set data.columns.{key}: {closest} if that column holds it, or name the column that does"
    return DataError(
        f"{raw.source}: column {column!r} (data.columns.{key}, {why}) is not in the file; "
        f"its columns are {sorted(names)}{hint}",
        advice + "; or set data.format to the file's format",
    )


def _closest_column(column: str, key: str, names: set[str], data: DataConfig) -> str | None:
    """The column most like the missing one, else the key's default name, else the most similar
    column that no other key uses."""
    ordered = sorted(names)
    close = difflib.get_close_matches(column, ordered, n=1, cutoff=0.6)
    if close:
        return close[0]
    defaults = TURN_COLUMNS if key == "conversations" else (getattr(_DEFAULT_COLUMNS, key),)
    present = [name for name in defaults if name in names]
    if present:
        return present[0]
    used = {getattr(data.columns, other) for other in ColumnMap.model_fields if other != key} | set(TURN_COLUMNS)
    free = [name for name in ordered if name not in used]
    close = difflib.get_close_matches(column, free, n=1, cutoff=0.0)
    return close[0] if close else None


# --------------------------------------------------------------------------- normalisation


def normalize(raw: RawRows, fmt: str, data: DataConfig, *, first_row: int = 1) -> tuple[list[Sample], dict[str, int]]:
    """Usable samples in file order, and the count of skipped rows by reason.

    A row skipped because it is shaped as another format (or keeps its turns in another column)
    makes the file a mixed one: a DataError naming the first row of each shape. Only skipped rows
    are examined, so a clean file costs nothing more."""
    row_format = FORMATS[fmt]
    samples: list[Sample] = []
    skipped: dict[str, int] = {}
    foreign: dict[tuple[str, str], _Shaped] = {}  # (format, shape label) -> rows of that shape
    turns = turns_column(raw, data.columns) if row_format.turns is not None else None
    roles = _role_map(data.tags)
    # first_row: the number of raw's first row in its file (a chunk of a streamed file starts later).
    for number, (row, where) in enumerate(zip(raw.rows, raw.where), start=first_row):
        try:
            sample = row_format.normalise(row, where, data, fmt=fmt, turns=turns, roles=roles)
            if row_format.chat:
                _finish_conversation(sample, row, data)
        except RowSkip as skip:
            shape = _foreign_shape(row, fmt, data, turns)
            if shape is not None:
                foreign.setdefault(shape, _Shaped(where)).numbers.append(number)
                continue
            skipped[skip.reason] = skipped.get(skip.reason, 0) + 1
            continue
        samples.append(sample)
    if foreign:
        raise _mixed_formats(raw, fmt, data, turns, foreign, first_row)
    return samples, skipped


# --------------------------------------------------------------------------- mixed files


@dataclass
class _Shaped:
    first_where: str
    numbers: list[int] = field(default_factory=list)  # 1-based row numbers


def _filled(value) -> bool:
    if isinstance(value, str):
        return bool(value.strip())
    return value is not None and value != [] and value != {}


def _first_turn_of(value) -> dict | None:
    if isinstance(value, str) and value.lstrip().startswith("["):  # CSV cells hold turns as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if isinstance(value, list):
        return next((turn for turn in value if isinstance(turn, dict)), None)
    return None


def _turn_keys(fmt: str, data: DataConfig) -> tuple[str, str]:
    keys = FORMATS[fmt].turns
    return data.tags.role_key or keys.role_key, data.tags.content_key or keys.content_key


def _shape_label(fmt: str, data: DataConfig, turns: str | None) -> str:
    """How a row of this format looks, e.g. "instruction/output" or "'conversations': from/value turns"."""
    row_format = FORMATS[fmt]
    if row_format.turns is not None:
        role_key, content_key = _turn_keys(fmt, data)
        return f"{turns!r}: {role_key}/{content_key} turns"
    return "/".join(getattr(data.columns, key) for key in row_format.required)


def _shape(row: dict, fmt: str, data: DataConfig) -> str | None:
    """The shape label when the row is plainly of this format (default turn keys), else None."""
    row_format = FORMATS[fmt]
    if row_format.turns is None:
        filled = all(_filled(row.get(getattr(data.columns, key))) for key in row_format.required)
        return _shape_label(fmt, data, None) if filled else None
    column = data.columns.conversations or next((name for name in TURN_COLUMNS if name in row), None)
    first = _first_turn_of(row.get(column)) if column else None
    keys = row_format.turns
    if first is None or keys.role_key not in first or keys.content_key not in first:
        return None
    return f"{column!r}: {keys.role_key}/{keys.content_key} turns"


def _foreign_shape(row: dict, fmt: str, data: DataConfig, turns: str | None) -> tuple[str, str] | None:
    """(format, shape) of a skipped row that holds none of the detected format's data but another's."""
    row_format = FORMATS[fmt]
    if row_format.turns is not None:
        if _filled(row.get(turns)):
            return None  # its turns are where they should be: skipped for its content, not its shape
    elif any(_filled(row.get(getattr(data.columns, key))) for key in row_format.required):
        return None
    for name in FORMATS:
        label = _shape(row, name, data)
        if label is not None:
            return name, label
    return None


def _span(numbers: list[int]) -> str:
    if len(numbers) == 1:
        return f"row {numbers[0]} is"
    if numbers[-1] - numbers[0] + 1 == len(numbers):
        return f"rows {numbers[0]}-{numbers[-1]} are"
    return f"{len(numbers)} rows between row {numbers[0]} and row {numbers[-1]} are"


def _place(where: str, source: str) -> str:
    """"line 11" (or "row 11") in the file the message names already; the full place otherwise."""
    if where.startswith(source + ":"):
        return f"line {where[len(source) + 1 :]}"
    if where.startswith(source + " "):
        return where[len(source) + 1 :]
    return where


def _mixed_formats(raw: RawRows, fmt: str, data: DataConfig, turns: str | None,
                   foreign: dict[tuple[str, str], _Shaped], first_row: int = 1) -> DataError:
    # The error path only: a second pass over the row numbers is fine here.
    taken = {number for shaped in foreign.values() for number in shaped.numbers}
    own = [number for number in range(first_row, first_row + len(raw.rows)) if number not in taken]
    own_part = f"{_span(own)} {fmt} ({_shape_label(fmt, data, turns)})" if own else f"no row is {fmt}"
    other_parts = [f"{_span(shaped.numbers)} {name} ({label})" for (name, label), shaped in foreign.items()]
    # A format met in two shapes (turns in two columns) is named with its shape.
    named = [name for name, _ in foreign] + [fmt]
    firsts = [f"the first {fmt} row is {_place(raw.where[own[0] - first_row], raw.source)}"] if own else []
    firsts += [f"the first {name if named.count(name) == 1 else f'{name} ({label})'} row is "
               f"{_place(shaped.first_where, raw.source)}" for (name, label), shaped in foreign.items()]
    chosen = "set in data.format" if data.format != "auto" else "detected from the first rows"
    return DataError(
        f"{raw.source}: mixed formats: {own_part} but {' and '.join(other_parts)}; {', '.join(firsts)} "
        f"({fmt} was {chosen}; the other rows would be dropped)",
        "split the file into one file per format, or convert one part to the other's format; then list each file "
        "in data.train_files (or data.val_files): each file's format is detected on its own",
    )


def _text_value(value, what: str) -> str:
    """A turn's or column's text: strings as they are, OpenAI content parts joined, None empty."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # OpenAI content parts
        parts = [p.get("text", "") if isinstance(p, dict) else str(p) for p in value]
        return "".join(parts)
    if isinstance(value, (int, float)):
        return str(value)
    raise RowSkip(f"{what} is a {type(value).__name__}, not text")


def _maybe_json(value, what: str):
    """CSV and some JSON exports keep lists as JSON text."""
    if isinstance(value, str):
        stripped = value.strip()
        if not stripped:
            return None
        if stripped[0] in "[{":
            try:
                return json.loads(stripped)
            except json.JSONDecodeError:
                raise RowSkip(f"{what} is not valid JSON") from None
    return value


def _alpaca(row: dict, where: str, data: DataConfig, **_) -> Sample:
    columns = data.columns
    instruction = _text_value(row.get(columns.instruction), "instruction")
    extra = _text_value(row.get(columns.input), "input")
    output = row.get(columns.output)
    if output is None or (isinstance(output, str) and not output.strip()):
        raise RowSkip("empty output")
    output = _text_value(output, "output")
    messages: list[dict] = []
    history = _maybe_json(row.get(columns.history), "history")
    if history:
        if not isinstance(history, list):
            raise RowSkip("history is not a list of [user, assistant] pairs")
        for pair in history:
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise RowSkip("history is not a list of [user, assistant] pairs")
            messages.append({"role": "user", "content": _text_value(pair[0], "history")})
            messages.append({"role": "assistant", "content": _text_value(pair[1], "history")})
    prompt = "\n".join(part for part in (instruction, extra) if part)
    if not prompt.strip():
        raise RowSkip("empty instruction")
    messages.append({"role": "user", "content": prompt})
    messages.append({"role": "assistant", "content": output})
    return Sample(where=where, messages=messages)


def _role_map(tags: RoleTags) -> dict[str, str]:
    """Role value in the data → role (system/user/assistant/tool) or "function_call"."""
    roles = {"system": "system", "tool": "tool", "function": "tool", "observation": "tool", "function_call": "function_call"}
    for keys in _TURN_KEYS:
        # Standard names of every turn format, so a sharegpt file written with user/assistant still loads.
        roles.update({keys.user: "user", keys.assistant: "assistant"})
    roles.update({tags.system: "system", tags.function_call: "function_call", tags.observation: "tool"})
    if tags.user:
        roles[tags.user] = "user"
    if tags.assistant:
        roles[tags.assistant] = "assistant"
    return roles


def _tool_calls(value) -> list[dict] | None:
    """sharegpt function_call values: {"name", "arguments"} (or a list of them) as JSON text."""
    try:
        parsed = json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError:
        return None
    calls = parsed if isinstance(parsed, list) else [parsed]
    out = []
    for call in calls:
        if not (isinstance(call, dict) and "name" in call):
            return None
        arguments = call.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                pass
        out.append({"type": "function", "function": {"name": call["name"], "arguments": arguments}})
    return out


def _turns(row: dict, where: str, data: DataConfig, *, fmt: str, turns: str, roles: dict, **_) -> Sample:
    tags = data.tags
    keys = FORMATS[fmt].turns
    role_key = tags.role_key or keys.role_key
    content_key = tags.content_key or keys.content_key
    value = _maybe_json(row.get(turns), turns)
    if not isinstance(value, list) or not value:
        raise RowSkip(f"{turns} is not a list of turns")
    messages: list[dict] = []
    for turn in value:
        if not isinstance(turn, dict):
            raise RowSkip("a turn is not an object")
        # A messages file may still use from/value and vice versa: fall back to the other pair.
        if role_key not in turn:
            alt = next(other for other in _TURN_KEYS if other.role_key != role_key)
            if tags.role_key is None and alt.role_key in turn:
                role_key, content_key = alt.role_key, alt.content_key
            else:
                raise RowSkip(f"a turn has no {role_key!r} key")
        tag = turn.get(role_key)
        role = roles.get(tag)
        if role is None:
            raise RowSkip(f"unknown role {tag!r} (map it with data.tags.*)")
        content = _text_value(turn.get(content_key), "turn content")
        if role == "function_call":
            # Parsed calls replace the text; the renderer writes them back as JSON for templates
            # that have no tool_calls support. Unparseable calls stay as plain assistant text.
            calls = _tool_calls(content)
            message = {"role": "assistant", "content": "", "tool_calls": calls} if calls else {"role": "assistant", "content": content}
        elif role == "assistant" and turn.get("tool_calls"):  # OpenAI assistant tool calls
            message = {"role": "assistant", "content": content, "tool_calls": [_openai_call(c) for c in turn["tool_calls"]]}
        else:
            message = {"role": role, "content": content}
        messages.append(message)
    sample = Sample(where=where, messages=messages)
    tools = _maybe_json(row.get(data.columns.tools), "tools")
    if tools:
        sample.tools = _normalize_tools(tools)
    return sample


def _openai_call(call) -> dict:
    if not isinstance(call, dict):
        raise RowSkip("a tool call is not an object")
    function = call.get("function", call)
    if not isinstance(function, dict) or "name" not in function:
        raise RowSkip("a tool call has no function name")
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            pass
    return {"type": "function", "function": {"name": function["name"], "arguments": arguments}}


def _normalize_tools(tools) -> list[dict]:
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise RowSkip("tools is not a list of tool definitions")
    # The chat-template convention is {"type": "function", "function": {name, description, parameters}}.
    return [t if "function" in t else {"type": "function", "function": t} for t in tools]


def _text(row: dict, where: str, data: DataConfig, **_) -> Sample:
    text = _text_value(row.get(data.columns.text), "text")
    if not text.strip():
        raise RowSkip("empty text")
    return Sample(where=where, text=text)


def _finish_conversation(sample: Sample, row: dict, data: DataConfig) -> None:
    """System prompt (row column, else the preset's), trailing non-assistant turns, assistant check."""
    messages = sample.messages
    if not messages or messages[0]["role"] != "system":
        system = row.get(data.columns.system)
        system = system if isinstance(system, str) and system.strip() else data.system_prompt
        if system:
            messages.insert(0, {"role": "system", "content": system})
    # Turns after the last assistant turn teach nothing and would only cost tokens.
    while messages and messages[-1]["role"] != "assistant":
        messages.pop()
    if not messages:
        raise RowSkip("no assistant turn")
    if not any(m["role"] == "assistant" and (m["content"].strip() or m.get("tool_calls")) for m in messages):
        raise RowSkip("empty answer")


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class TurnKeys:
    """How a list-of-turns format writes a turn by default (data.tags.* rename them)."""

    role_key: str
    content_key: str
    user: str
    assistant: str


@dataclass(frozen=True)
class RowFormat:
    detect: Callable[[RawRows, DataConfig], str | None]  # how the leading rows show this format, or None
    normalise: Callable[..., Sample]  # one row -> a Sample; RowSkip when it cannot be used
    required: dict[str, str] = field(default_factory=dict)  # data.columns keys that must name a column -> what it holds
    optional: tuple[str, ...] = ()  # data.columns keys checked only when the preset renamed them
    turns: TurnKeys | None = None  # a list-of-turns format: its keys and role values
    chat: bool = True  # a conversation (system prompt, trailing turns checked), not a plain text


# In detection order: a file with a turns column is a turn format even when it has other columns.
FORMATS: dict[str, RowFormat] = {
    "sharegpt": RowFormat(_detect_turns("sharegpt"), _turns, optional=("system", "tools"),
                          turns=TurnKeys("from", "value", "human", "gpt")),
    "messages": RowFormat(_detect_turns("messages"), _turns, optional=("system", "tools"),
                          turns=TurnKeys("role", "content", "user", "assistant")),
    "alpaca": RowFormat(_detect_columns("alpaca"), _alpaca,
                        required={"instruction": "the alpaca instruction", "output": "the alpaca output"},
                        optional=("input", "system", "history")),
    "text": RowFormat(_detect_columns("text"), _text, required={"text": "the raw text"}, chat=False),
}
_TURN_KEYS = tuple(f.turns for f in FORMATS.values() if f.turns is not None)
_RENAMED_TAGS = "sharegpt"  # a role key no format owns is sharegpt's: its tags are the ones datasets rename
