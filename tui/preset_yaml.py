"""Edits to a preset's YAML text that keep the user's layout and comments.

The presets screen has one source of truth, the YAML text. The form writes a field by replacing
just that value's characters (or inserting the missing key under its section), as a TextArea edit,
so comments, order and undo history survive. Pure functions on strings; no Textual.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from presets.methods import METHODS as METHOD_TABLE
from presets.methods import method_names
from presets.schema import MethodConfig, TrainPreset

Location = tuple[int, int]  # (row, column), 0-based, as TextArea uses them

# The user's presets remember the built-in they were copied from, for the diff.
ORIGIN_PREFIX = "# based on built-in preset: "


@dataclass(frozen=True)
class FormField:
    path: tuple[str, ...]
    label: str
    kind: str  # "str" | "int" | "float" | "list" | "choice" | "bool"
    choices: tuple[str, ...] = ()
    nullable: bool = False  # an emptied field writes null (the schema's default), not ''
    help: str = ""  # the schema's description, shown as the field's tooltip
    default: str = ""  # the schema's default as the form shows it: what an empty field means

    @property
    def key(self) -> str:
        """The field's widget id: its key path."""
        return "field-" + "-".join(self.path)


def _kind(annotation: Any) -> tuple[str, tuple[str, ...], bool]:
    """(kind, choices, nullable) of a schema field's type annotation."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, UnionType):
        parts = [a for a in args if a is not type(None)]
        nullable = len(parts) < len(args)
        if any(get_origin(a) is list for a in parts):  # list[str] | "all-linear": written as a list
            return "list", (), nullable
        kind, choices, _ = _kind(parts[0])
        return kind, choices, nullable
    if origin is Literal:
        return "choice", tuple(str(a) for a in args), False
    if origin is list:
        return "list", (), False
    if annotation is bool:
        return "bool", ("true", "false"), False
    return {int: "int", float: "float"}.get(annotation, "str"), (), False


def schema_field(path: tuple[str, ...], label: str | None = None) -> FormField:
    """A form field typed by the train preset schema (its kind, choices and help come from there)."""
    model: Any = TrainPreset
    for part in path[:-1]:
        model = model.model_fields[part].annotation
    info = model.model_fields[path[-1]]
    kind, choices, nullable = _kind(info.annotation)
    field = FormField(path, label or path[-1].replace("_", " "), kind, choices, nullable, info.description or "")
    if info.is_required():
        return field
    return replace(field, default=field_text(field, info.get_default(call_default_factory=True)))


@dataclass(frozen=True)
class Edit:
    start: Location
    end: Location
    insert: str


class EditError(ValueError):
    """The text cannot take the edit (it does not parse, or a section is not a block mapping)."""


# --------------------------------------------------------------------------- values


def get_value(data: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def field_text(field: FormField, value: Any) -> str:
    """How a value reads in the form."""
    if value is None:
        return ""
    if field.kind == "list" and isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_field(field: FormField, text: str) -> Any:
    """The form's text as the value to write; unparsable numbers stay text so the validator names them."""
    text = text.strip()
    if not text and field.nullable:
        return None
    if field.kind == "bool" and text in ("true", "false"):
        return text == "true"
    if field.kind == "int":
        try:
            return int(text)
        except ValueError:
            return text
    if field.kind == "float":
        try:
            number = float(text)
        except ValueError:
            return text
        return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number
    if field.kind == "list":
        files = [part.strip() for part in text.split(",") if part.strip()]
        return files[0] if len(files) == 1 else files
    return text


def yaml_scalar(value: Any) -> str:
    """A value as it stands after `key: ` in block YAML (flow style for lists)."""
    dumped = yaml.safe_dump([value], default_flow_style=True, width=10**9, allow_unicode=True).strip()
    return dumped[1:-1]  # strip the list brackets we wrapped it in


# --------------------------------------------------------------------------- the form's fields

METHODS = method_names()  # presets/methods.py's table
# The fields every train preset has (LlamaBoard's form and then some); the method's own follow them.
FORM_FIELDS: tuple[FormField, ...] = (
    schema_field(("model", "path"), "model"),
    schema_field(("method", "name"), "method"),
    schema_field(("model", "quantization", "mode"), "quantization"),
    schema_field(("data", "train_files"), "data file"),
    schema_field(("data", "val_ratio"), "val ratio"),
    schema_field(("data", "max_length"), "max length"),
    schema_field(("data", "packing"), "packing"),
    schema_field(("training", "lr"), "learning rate"),
    schema_field(("training", "epochs")),
    schema_field(("training", "batch_size"), "batch size"),
    schema_field(("training", "grad_accum"), "grad accum"),
    schema_field(("training", "scheduler")),
    schema_field(("training", "warmup_steps"), "warmup steps"),
    schema_field(("training", "warmup_ratio"), "warmup ratio"),
    schema_field(("training", "eval_steps"), "eval steps"),
    schema_field(("training", "save_steps"), "save steps"),
)


def method_sections() -> dict[str, tuple[FormField, ...]]:
    """method.<section> → its fields, for every section some method of the table uses."""
    sections = dict.fromkeys(section for row in METHOD_TABLE.values() for section in row.params)
    return {section: tuple(schema_field(("method", section, name))
                           for name in MethodConfig.model_fields[section].annotation.model_fields)
            for section in sections}


# The method.lora fields that only methods with the table's `lora_options` take (peft's LoraConfig).
LORA_OPTIONS = (("method", "lora", "init"), ("method", "lora", "loraplus_lr_ratio"))


def method_fields(method: str, section_fields: tuple[FormField, ...]) -> tuple[FormField, ...]:
    """The fields of a section that apply to `method`: a field whose help starts "<a method>:" is that
    method's alone (the schema's way of saying which of prompt tuning, prefix tuning, P-tuning)."""
    own = []
    for field in section_fields:
        prefix = field.help.split(":", 1)[0]
        if prefix in METHODS and prefix != method:
            continue
        if field.path in LORA_OPTIONS and not METHOD_TABLE[method].lora_options:
            continue
        own.append(field)
    return tuple(own)


# --------------------------------------------------------------------------- locating


def _last_end(node: yaml.Node) -> Location:
    """Where a node's own text ends (a block collection's end mark is the next token: not that)."""
    if isinstance(node, yaml.MappingNode) and node.value and node.flow_style is not True:
        return _last_end(node.value[-1][1])
    if isinstance(node, yaml.SequenceNode) and node.value and node.flow_style is not True:
        return _last_end(node.value[-1])
    return node.end_mark.line, node.end_mark.column


def _find(root: yaml.Node, path: tuple[str, ...]):
    """(deepest mapping node found, its key node, the node at the path or None, how many parts matched)."""
    node, key_node, depth = root, None, 0
    for part in path:
        if not isinstance(node, yaml.MappingNode):
            break
        match = next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == part), None)
        if match is None:
            break
        key_node, node = match
        depth += 1
    return node, key_node, depth


def _lines(text: str) -> list[str]:
    return text.split("\n")


def plan_edit(text: str, path: tuple[str, ...], value: Any) -> Edit:
    """The smallest text edit that sets `path` to `value` in `text`."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise EditError("the YAML does not parse; fix it first") from exc
    if root is None:
        return Edit((0, 0), (0, 0), _block(path, value, 0) + "\n")
    if not isinstance(root, yaml.MappingNode):
        raise EditError("a preset is a mapping of keys")
    node, key_node, depth = _find(root, path)
    rendered = yaml_scalar(value)
    if depth == len(path):
        # Replace from the end of the key (before its colon) to the end of its value.
        start = (key_node.end_mark.line, key_node.end_mark.column)
        end = _last_end(node)
        colon = _lines(text)[start[0]][start[1]:]
        if not colon.lstrip().startswith(":"):
            raise EditError(f"cannot edit {'.'.join(path)} in this layout")
        if end < start:
            end = (start[0], start[1] + colon.index(":") + 1)
        return Edit(start, end, f": {rendered}")
    if not isinstance(node, yaml.MappingNode) or node.flow_style:
        where = ".".join(path[:depth]) or "the document"
        raise EditError(f"{where} is not a block section; cannot add {'.'.join(path)}")
    # Insert the missing keys under the deepest section that exists, after its last line.
    if node.value:
        indent = node.value[0][0].start_mark.column
    else:
        indent = (key_node.start_mark.column + 2) if key_node is not None else 0
    block = _block(path[depth:], value, indent)
    last_row = _last_end(node)[0] if node.value else key_node.end_mark.line
    lines = _lines(text)
    if last_row + 1 < len(lines):
        return Edit((last_row + 1, 0), (last_row + 1, 0), block + "\n")
    return Edit((last_row, len(lines[last_row])), (last_row, len(lines[last_row])), "\n" + block)


def _block(path: tuple[str, ...], value: Any, indent: int) -> str:
    lines = []
    for offset, part in enumerate(path[:-1]):
        lines.append(" " * (indent + 2 * offset) + f"{part}:")
    lines.append(" " * (indent + 2 * (len(path) - 1)) + f"{path[-1]}: {yaml_scalar(value)}")
    return "\n".join(lines)


def apply_edit(text: str, edit: Edit) -> str:
    """What TextArea.replace does with the edit, on a plain string."""
    lines = _lines(text)

    def offset(location: Location) -> int:
        row, column = location
        return sum(len(line) + 1 for line in lines[:row]) + column

    return text[: offset(edit.start)] + edit.insert + text[offset(edit.end):]


def set_value(text: str, path: tuple[str, ...], value: Any) -> str:
    return apply_edit(text, plan_edit(text, path, value))


# --------------------------------------------------------------------------- origin


def origin_of(text: str) -> str | None:
    for line in text.splitlines()[:5]:
        if line.startswith(ORIGIN_PREFIX):
            return line[len(ORIGIN_PREFIX):].strip() or None
    return None


def copy_of(text: str, new_name: str, origin: str | None) -> str:
    """The text saved under another name, remembering the built-in it came from."""
    renamed = set_value(text, ("name",), new_name)
    lines = [line for line in renamed.split("\n") if not line.startswith(ORIGIN_PREFIX)]
    if origin:
        lines.insert(0, ORIGIN_PREFIX + origin)
    return "\n".join(lines)
