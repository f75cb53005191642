"""Preset schema, YAML loading and the built-in presets, and the base of every user-facing error.
Imports nothing of tunebench."""

from presets.errors import TunebenchError
from presets.loader import (
    Problem,
    PresetError,
    apply_overrides,
    builtin_names,
    check_name,
    delete_user_preset,
    dump_preset,
    find_preset_file,
    load_preset,
    load_preset_text,
    rename_user_preset,
    resolve_paths,
    save_user_preset,
    validate_preset,
)
from presets.schema import EvalPreset, MergePreset, Preset, TrainPreset

__all__ = [
    "EvalPreset", "MergePreset", "Preset", "PresetError", "Problem", "TrainPreset",
    "TunebenchError", "apply_overrides", "builtin_names", "check_name", "delete_user_preset", "dump_preset",
    "find_preset_file", "load_preset", "load_preset_text", "rename_user_preset", "resolve_paths", "save_user_preset",
    "validate_preset",
]
