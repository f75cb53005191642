"""From advice to action: a doctor finding's suggested change (Finding.change, key path → new value)
applied to a copy of the run's preset, saved as <preset>-fixN through the presets functions.

Plain functions (YAML text edits that keep the user's comments, tui/preset_yaml.py); the dashboard's
fix key and `tunebench doctor RUN --fix` both call `fix_copy`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}
_FIX_SUFFIX = re.compile(r"-fix\d+$")


def fixable(findings: list[dict]) -> list[dict]:
    """The findings that carry a suggested change, the most severe first."""
    found = [f for f in findings if isinstance(f.get("change"), dict) and f["change"]]
    return sorted(found, key=lambda f: SEVERITY_ORDER.get(str(f.get("severity")), 3))


def change_text(change: dict[str, Any]) -> str:
    """`training.lr: 4e-05, training.warmup_ratio: 0.05` — what the copy will differ in."""
    from tui.preset_yaml import yaml_scalar

    return ", ".join(f"{path}: {yaml_scalar(value)}" for path, value in change.items())


def _free_name(base: str, taken: set[str]) -> str:
    stem = _FIX_SUFFIX.sub("", base)
    n = 1
    while f"{stem}-fix{n}" in taken:
        n += 1
    return f"{stem}-fix{n}"


def fix_copy(workspace, run_id: str, change: dict[str, Any]) -> tuple[str, Path]:
    """Save a copy of the preset `run_id` ran with `change` applied; returns (its name, its path).

    The copy starts from the preset file of the run's preset name when there is one (its comments and
    layout kept), with the run's --set overrides applied as they were at submit; otherwise from the
    run's frozen preset.yaml."""
    import yaml

    from jobs.store import RunNotFound, open_store
    from presets import builtin_names, save_user_preset
    from presets.loader import find_preset_file, parse_override, read_text, user_dir
    from tui.preset_yaml import copy_of, origin_of, set_value

    if not change:
        raise ValueError("this finding suggests no change to the preset")
    run = open_store(workspace).get_run(run_id)
    if run is None:
        raise RunNotFound(f"no run {run_id}")
    frozen = yaml.safe_load(run.preset_yaml) or {}
    base = str(frozen.get("name") or run.name)
    text, origin = run.preset_yaml, None
    try:
        text = read_text(find_preset_file(base, workspace.root))
        origin = base if base in builtin_names() else origin_of(text)
        for assignment in run.info.get("overrides") or []:
            path, value = parse_override(assignment)
            text = set_value(text, tuple(path), value)
    except Exception:  # no such preset any more (renamed, deleted, a path): what the run froze
        text, origin = run.preset_yaml, None
    folder = user_dir(workspace.root)
    taken = set(builtin_names()) | ({p.stem for p in folder.glob("*.yaml")} if folder.is_dir() else set())
    name = _free_name(base, taken)
    text = copy_of(text, name, origin)
    for path, value in change.items():
        text = set_value(text, tuple(path.split(".")), value)
    return name, save_user_preset(workspace.root, name, text)
