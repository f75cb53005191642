"""Load, validate, override and save presets.

Validation reports every problem at once, each with its key path, the YAML line where the key
stands, and for an unknown key the closest valid name.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from presets.errors import TunebenchError
from presets.other_tools import KEYS_FROM_OTHER_TOOLS
from presets.schema import EvalPreset, MergePreset, Preset, TrainPreset

_PRESET_ADAPTER = TypeAdapter(Preset)
_KIND_MODELS = {"train": TrainPreset, "eval": EvalPreset, "merge": MergePreset}
WORKSPACE_TOKEN = "{workspace}"


@dataclass(frozen=True)
class Problem:
    path: str  # dotted key path, "" for the whole document
    message: str
    line: int | None = None  # 1-based line in the YAML source

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        key = f"{self.path}: " if self.path else ""
        return f"{where}{key}{self.message}"


class PresetError(TunebenchError, ValueError):
    """A preset that cannot be used; `problems` lists every reason."""

    def __init__(self, source: str, problems: list[Problem], advice: str | None = None):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}", advice)


# --------------------------------------------------------------------------- parsing


def _key_lines(text: str) -> dict[tuple, int]:
    """Map each key path in a YAML document to the 1-based line of its key."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    lines: dict[tuple, int] = {}

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key_path = path + (key_node.value,)
                lines[key_path] = key_node.start_mark.line + 1
                walk(value_node, key_path)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                lines[path + (index,)] = item.start_mark.line + 1
                walk(item, path + (index,))

    walk(root, ())
    return lines


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that records every key given twice in one mapping; PyYAML would keep the last
    silently, so a second `training:` block would replace the first without a word."""

    def __init__(self, stream):
        super().__init__(stream)
        self.duplicates: list[Problem] = []
        self._root = None

    def construct_document(self, node):
        self._root = node
        return super().construct_document(node)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first_key_node: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # keys merged in with `<<: *anchor` may be overridden: that is what merging is for
                try:
                    first = first_key_node.setdefault(self.construct_object(key_node, deep=deep), key_node)
                except TypeError:
                    continue  # an unhashable key: SafeLoader reports it itself
                if first is not key_node:
                    self.duplicates.append(self._duplicate(node, first, key_node))
        return super().construct_mapping(node, deep=deep)

    def _duplicate(self, mapping, first, again) -> Problem:
        first_line, again_line = first.start_mark.line + 1, again.start_mark.line + 1
        where = f"lines {first_line} and {again_line}" if first_line != again_line else f"both on line {first_line}"
        path = ".".join(str(p) for p in (*_node_path(self._root, mapping), again.value))
        return Problem(path, f"key appears twice ({where}); keep one", again_line)


def _node_path(root, target) -> tuple:
    """Key path from the document's root node to `target`, a node inside it."""
    visited: set[int] = set()  # an alias can make the node graph cyclic

    def search(node, path):
        if node is target:
            return path
        if id(node) in visited:
            return None
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            children = [(key.value, value) for key, value in node.value]
        elif isinstance(node, yaml.SequenceNode):
            children = list(enumerate(node.value))
        else:
            return None
        for step, child in children:
            found = search(child, path + (step,))
            if found is not None:
                return found
        return None

    return search(root, ()) or ()


def _load_unique_keys(text: str):
    loader = _UniqueKeyLoader(text)
    try:
        return loader.get_single_data(), loader.duplicates
    finally:
        loader.dispose()


def parse_yaml(text: str, source: str) -> dict:
    try:
        data, duplicates = _load_unique_keys(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise PresetError(source, [Problem("", f"invalid YAML: {problem}", line)]) from None
    if duplicates:
        raise PresetError(source, sorted(duplicates, key=lambda p: p.line))
    if data is None:
        raise PresetError(source, [Problem("", "the preset is empty")])
    if not isinstance(data, dict):
        raise PresetError(source, [Problem("", f"a preset is a mapping of keys, got {type(data).__name__}")])
    return data


# --------------------------------------------------------------------------- validation


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (dict, list)):
        return type(value).__name__
    return repr(value)


def _section_model(kind_model: type[BaseModel], path: tuple) -> type[BaseModel] | None:
    """The pydantic model that holds the keys at `path` (for 'did you mean')."""
    model: Any = kind_model
    for part in path:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _has_key(model: type[BaseModel], dotted: str) -> bool:
    *sections, last = dotted.split(".")
    section = _section_model(model, tuple(sections))
    return section is not None and any(last in (name, field.alias) for name, field in section.model_fields.items())


def _our_name_for(key: str, kind_model: type[BaseModel] | None, path: tuple) -> str | None:
    """Our key path for a name another tool uses (presets/other_tools.py), when this kind of preset has it."""
    ours = KEYS_FROM_OTHER_TOOLS.get(key)
    if ours is None or kind_model is None or ours == ".".join(map(str, path)) or not _has_key(kind_model, ours):
        return None
    return ours


def _message(error: dict, kind_model: type[BaseModel] | None, path: tuple) -> str:
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        ours = _our_name_for(str(path[-1]), kind_model, path)
        if ours is not None:
            if ours.rsplit(".", 1)[-1] == str(path[-1]):
                return f"unknown key here; it belongs at {ours}"
            return f"unknown key; tunebench calls it {ours}"
        section = _section_model(kind_model, path[:-1]) if kind_model else None
        names = list(section.model_fields) if section else []
        aliases = [f.alias for f in section.model_fields.values() if f.alias] if section else []
        close = difflib.get_close_matches(str(path[-1]), names + aliases, n=1, cutoff=0.5)
        hint = f"; did you mean {'.'.join(map(str, path[:-1] + (close[0],)))}?" if close else ""
        return f"unknown key{hint}"
    if kind == "missing":
        return "required key is missing"
    if kind in ("float_parsing", "float_type", "int_parsing", "int_type", "int_from_float"):
        wanted = "an integer" if kind.startswith("int") else "a number"
        return f"expected {wanted}, got {_describe(value)}"
    if kind in ("bool_parsing", "bool_type"):
        return f"expected true or false, got {_describe(value)}"
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return f"expected one of {expected}, got {_describe(value)}"
    if kind in ("string_type",):
        return f"expected text, got {_describe(value)}"
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    return message


def _clean_loc(loc: tuple) -> tuple:
    # pydantic puts union-member tags ("list[str]", "literal['all-linear']", the discriminator) in locations.
    return tuple(part for part in loc if not (isinstance(part, str) and ("[" in part or part in _KIND_MODELS)))


def validate_preset(data: dict, source: str = "<preset>", text: str | None = None):
    """Validate a parsed preset mapping; raise PresetError listing every problem."""
    kind = data.get("kind", "train")
    kind_model = _KIND_MODELS.get(kind)
    if kind_model is None:
        line = _key_lines(text).get(("kind",)) if text else None
        raise PresetError(source, [Problem("kind", f'expected one of "train", "eval", "merge", got {_describe(kind)}', line)])
    data = {"kind": kind, **data}
    try:
        return _check_probe_file(_PRESET_ADAPTER.validate_python(data), source, text)
    except ValidationError as exc:
        lines = _key_lines(text) if text else {}
        problems: list[Problem] = []
        seen: set[tuple[str, str]] = set()
        for error in exc.errors():
            loc = _clean_loc(tuple(error["loc"]))
            message = _message(error, kind_model, loc)
            path = ".".join(str(p) for p in loc)
            if (path, message) in seen:
                continue
            seen.add((path, message))
            line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)
            problems.append(Problem(path, message, line))
        problems.sort(key=lambda p: (p.line is None, p.line or 0))
        raise PresetError(source, problems) from None


def _check_probe_file(preset, source: str, text: str | None):
    """A train preset's probes.file, read now: a bad line is reported at load, not at the first save.
    A file not there (yet) is left to submit and the engine, as data files are."""
    from presets.probes import ProbeFileError, read_probe_file

    path = getattr(getattr(preset, "probes", None), "file", None)
    if not path or WORKSPACE_TOKEN in path or not Path(path).expanduser().is_file():
        return preset
    try:
        read_probe_file(Path(path).expanduser())
    except ProbeFileError as exc:
        line = _key_lines(text).get(("probes", "file")) if text else None
        raise PresetError(source, [Problem("probes.file", str(exc), line)]) from None
    return preset


# --------------------------------------------------------------------------- overrides


def parse_override(assignment: str) -> tuple[list[str], Any]:
    """'training.lr=1e-4' -> (['training', 'lr'], 0.0001); the value is read as YAML."""
    if "=" not in assignment:
        raise PresetError("--set", [Problem("", f"{assignment!r} is not key.path=value")])
    key, raw = assignment.split("=", 1)
    key = key.strip()
    if not key:
        raise PresetError("--set", [Problem("", f"{assignment!r} has no key before '='")])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Return a copy of `data` with each key.path=value applied (validation happens afterwards)."""
    import copy

    data = copy.deepcopy(data)
    for assignment in overrides or []:
        path, value = parse_override(assignment)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = value
    return data


# --------------------------------------------------------------------------- files and names

NAME_MAX_LENGTH = 64
NAME_RULE = f"use 1 to {NAME_MAX_LENGTH} ASCII letters, digits, '-', '_' or '.', starting with a letter, digit or '_'"
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def check_name(name: str, what: str = "preset name") -> str:
    """Refuse a name that cannot safely become a file name (a preset's, a run's); return it unchanged.

    A preset name becomes <workspace>/presets/<name>.yaml, so a separator or a leading dot would
    write outside that folder or hide the file."""
    reasons = []
    if not name:
        reasons.append("it is empty")
    if len(name) > NAME_MAX_LENGTH:
        reasons.append(f"it is {len(name)} characters long; the limit is {NAME_MAX_LENGTH}")
    if "/" in name or "\\" in name or os.sep in name:
        reasons.append("it holds a path separator: a name is a file name, not a path")
    if name.startswith("."):
        reasons.append("it starts with a dot (a hidden file, or a step up the folder tree)")
    elif name.startswith("-"):
        reasons.append("it starts with '-', which reads as an option on the command line")
    if not name.isprintable():
        reasons.append("it holds a control character")
    others = sorted({c for c in name if c not in _NAME_CHARS and c.isprintable() and c not in "/\\"})
    if others:
        reasons.append("it holds " + " ".join(repr(c) for c in others) + ", which a name may not")
    if name.lower().endswith((".yaml", ".yml")):
        reasons.append("it ends in a YAML suffix, which tunebench adds itself")
    if reasons:
        shown = name if len(name) <= NAME_MAX_LENGTH else name[:NAME_MAX_LENGTH] + "…"
        raise PresetError(f"{what} {shown!r}", [Problem("", reason) for reason in reasons], advice=NAME_RULE)
    return name


def builtin_dir() -> Path:
    return Path(str(resources.files("presets") / "builtin"))


def builtin_names() -> list[str]:
    return sorted(p.stem for p in builtin_dir().glob("*.yaml"))


def user_dir(workspace: str | os.PathLike) -> Path:
    return Path(workspace) / "presets"


def find_preset_file(name_or_path: str, workspace: str | os.PathLike | None = None) -> Path:
    """A path, a user preset name in the workspace, or a built-in name — in that order."""
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix in (".yaml", ".yml") or os.sep in name_or_path:
        if candidate.is_file():
            return candidate
        raise PresetError(name_or_path, [Problem("", f"no such file: {candidate}")])
    if workspace is not None:
        for suffix in (".yaml", ".yml"):
            user = user_dir(workspace) / f"{name_or_path}{suffix}"
            if user.is_file():
                return user
    builtin = builtin_dir() / f"{name_or_path}.yaml"
    if builtin.is_file():
        return builtin
    names = builtin_names() + (sorted(p.stem for p in user_dir(workspace).glob("*.y*ml")) if workspace else [])
    close = difflib.get_close_matches(name_or_path, names, n=1)
    hint = f"; did you mean {close[0]}?" if close else f"; known presets: {', '.join(names)}"
    raise PresetError(name_or_path, [Problem("", f"no preset file or name {name_or_path!r}{hint}")])


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PresetError(str(path), [Problem("", f"not UTF-8 text (byte {exc.start}); save it as UTF-8")]) from None
    except OSError as exc:
        raise PresetError(str(path), [Problem("", f"cannot read: {exc.strerror}")]) from None


def load_preset_text(text: str, source: str = "<preset>", overrides: list[str] | None = None):
    data = apply_overrides(parse_yaml(text, source), overrides)
    return validate_preset(data, source, text if not overrides else None)


def load_preset(name_or_path: str, workspace: str | os.PathLike | None = None, overrides: list[str] | None = None):
    """Load and validate a preset by path or name, with --set overrides applied."""
    path = find_preset_file(name_or_path, workspace)
    return load_preset_text(read_text(path), str(path), overrides)


def dump_preset(preset) -> str:
    """YAML of a preset, every field explicit (the frozen form stored with a run)."""
    data = preset.model_dump(mode="json", by_alias=True)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def save_user_preset(workspace: str | os.PathLike, name: str, text: str) -> Path:
    """Validate, then write atomically so a failed save never leaves a half-written preset."""
    check_name(name)
    load_preset_text(text, name)
    target = user_dir(workspace) / f"{name}.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".yaml.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)
    return target



def _user_file(workspace: str | os.PathLike, name: str) -> Path | None:
    for suffix in (".yaml", ".yml"):
        path = user_dir(workspace) / f"{name}{suffix}"
        if path.is_file():
            return path
    return None


def _missing_user_preset(workspace: str | os.PathLike, name: str, verb: str) -> PresetError:
    if name in builtin_names():
        return PresetError(name, [Problem("", f"{name} is a built-in preset; built-ins ship with tunebench and "
                                               f"cannot be {verb}")],
                           advice=f"copy it into the workspace (tunebench presets copy {name} NEW) and change the copy")
    names = sorted(p.stem for p in user_dir(workspace).glob("*.y*ml"))
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return PresetError(name, [Problem("", f"no workspace preset named {name!r}{hint}")])


def delete_user_preset(workspace: str | os.PathLike, name: str) -> Path:
    """Delete a workspace preset; return the path it had. Built-ins are never deleted."""
    check_name(name)
    path = _user_file(workspace, name)
    if path is None:
        raise _missing_user_preset(workspace, name, "deleted")
    path.unlink()
    return path


def rename_user_preset(workspace: str | os.PathLike, old: str, new: str) -> Path:
    """Rename a workspace preset (its file and its top-level `name:`); return the new path.

    Refuses a built-in, and a new name that any preset has already: a workspace preset named like a
    built-in would hide it. The text is not validated, so a broken preset can be renamed too."""
    check_name(old)
    check_name(new, "new preset name")
    source = _user_file(workspace, old)
    if source is None:
        raise _missing_user_preset(workspace, old, "renamed")
    if new == old:
        raise PresetError(new, [Problem("", "the new name is the old name")])
    if _user_file(workspace, new) is not None:
        raise PresetError(new, [Problem("", f"a workspace preset named {new} exists already; delete it first "
                                            "or pick another name")])
    if new in builtin_names():
        raise PresetError(new, [Problem("", f"{new} is a built-in preset's name; a workspace preset of that name "
                                            "would hide it")])
    text = read_text(source)
    target = user_dir(workspace) / f"{new}.yaml"
    tmp = target.with_suffix(".yaml.tmp")
    tmp.write_text(_renamed(text, old, new), encoding="utf-8")
    os.replace(tmp, target)
    source.unlink()
    return target


def _renamed(text: str, old: str, new: str) -> str:
    """The text with its top-level `name: old` line now naming `new`; the rest (comments) untouched."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if not isinstance(data, dict) or data.get("name") != old:
        return text
    lines = text.split("\n")
    for index, line in enumerate(lines):
        if line.startswith("name:"):
            lines[index] = f"name: {new}"
            break
    return "\n".join(lines)


def _resolve_path(value: str, workspace: Path, base: Path) -> str:
    if WORKSPACE_TOKEN in value:
        return value.replace(WORKSPACE_TOKEN, str(workspace))
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    local = (base / path)
    # A relative path that exists locally is a file; otherwise it may be a hub id ("org/name").
    return str(local.resolve()) if local.exists() else value


def resolve_paths(preset, workspace: str | os.PathLike, base: str | os.PathLike | None = None):
    """Expand {workspace} and make local relative paths absolute, so a frozen preset runs anywhere."""
    workspace = Path(workspace).resolve()
    base = Path(base or os.getcwd())
    data = preset.model_dump(mode="python", by_alias=True)

    def fix(section: dict | None, keys: tuple[str, ...]):
        if not section:
            return
        for key in keys:
            value = section.get(key)
            if isinstance(value, str):
                section[key] = _resolve_path(value, workspace, base)
            elif isinstance(value, list):
                section[key] = [_resolve_path(v, workspace, base) if isinstance(v, str) else v for v in value]

    fix(data.get("model"), ("path", "start_from"))
    fix(data.get("data"), ("train_files", "val_files"))
    fix(data.get("probes"), ("file",))
    fix(data, ("adapter", "base_model", "output"))
    for source in data.get("models") or []:
        fix(source, ("path",))
    return type(preset).model_validate(data)
