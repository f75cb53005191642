"""The TUI's settings: one typed object, built once in `run_app` and injected into the app.

Every field has a default; `from_env` reads the few a user may want to change without a flag
(TUNEBENCH_POLL, TUNEBENCH_THEME, TUNEBENCH_ANSI, TUNEBENCH_START_ENGINE=0, TUNEBENCH_BELL=0,
TUNEBENCH_NOTIFY=osc9|osc777|off). Colour depth itself follows the terminal
(TERM/COLORTERM) or Textual's TEXTUAL_COLOR_SYSTEM=256|standard; NO_COLOR turns colour off (Textual reads it).
The theme, the bell and the desktop notifications picked in the command palette are remembered in the
workspace's tui.json (the environment wins).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from typing import Any

from jobs.workspace import Workspace, resolve_workspace

SETTINGS_FILE = "tui.json"
DESKTOP_MODES = ("osc9", "osc777", "off")  # tui/notify.py writes the escape


def saved_settings(workspace: Workspace) -> dict[str, Any]:
    """What the TUI remembered in this workspace ({} when nothing, or an unreadable file)."""
    try:
        data = json.loads((workspace.root / SETTINGS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def remember(workspace: Workspace, **settings: Any) -> None:
    """Keep settings for the next start (written whole, private like the rest of the workspace)."""
    path = workspace.ensure().root / SETTINGS_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**saved_settings(workspace), **settings}, indent=1), encoding="utf-8")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


@dataclass(frozen=True)
class TuiConfig:
    workspace: Workspace
    # Runs table and dashboard metrics: a metric written reaches the screen within one interval
    # plus the engine sink's flush (≤ 0.5 s), so 0.4 s keeps the 1 s promise.
    poll_interval: float = 0.4
    # Engine status and GPU memory change slowly and cost a process check + NVML calls.
    status_interval: float = 2.0
    theme: str = "textual-dark"
    # Use the terminal's own 16-colour palette instead of the theme's RGB colours.
    ansi_color: bool = False
    # Snapshot tests turn blinking off so every frame is the same.
    cursor_blink: bool = True
    log_tail_lines: int = 400
    # Points drawn per series; the store keeps every point, the screen draws at most this many.
    plot_points: int = 600
    smoothing: float = 0.9
    # Open this run's dashboard at start; when that run completes, open this registered screen.
    open_run: str | None = None
    open_when_done: str | None = None
    # Start the engine at start-up when it is down (the CLI does; tests do not).
    start_engine: bool = False
    # When a run ends or the doctor warns (tui/notify.py): a toast always, the terminal bell, and a
    # desktop notification through the terminal's OSC 9 or OSC 777 escape ("off": none).
    bell: bool = True
    desktop_notify: str = "osc9"

    @classmethod
    def from_env(cls, workspace_arg: str | None = None, **overrides: Any) -> "TuiConfig":
        workspace = resolve_workspace(workspace_arg)
        values: dict[str, Any] = {}
        saved = saved_settings(workspace)
        if isinstance(theme := saved.get("theme"), str):
            values["theme"] = theme
        if isinstance(bell := saved.get("bell"), bool):
            values["bell"] = bell
        if saved.get("desktop_notify") in DESKTOP_MODES:
            values["desktop_notify"] = saved["desktop_notify"]
        if bell_env := os.environ.get("TUNEBENCH_BELL"):
            values["bell"] = bell_env.lower() not in ("0", "false", "no", "off")
        if os.environ.get("TUNEBENCH_NOTIFY", "").lower() in DESKTOP_MODES:
            values["desktop_notify"] = os.environ["TUNEBENCH_NOTIFY"].lower()
        if poll := os.environ.get("TUNEBENCH_POLL"):
            try:
                values["poll_interval"] = max(0.05, float(poll))
            except ValueError:
                pass  # an unreadable setting falls back to the default rather than stopping the app
        if theme := os.environ.get("TUNEBENCH_THEME"):
            values["theme"] = theme
        if os.environ.get("TUNEBENCH_ANSI", "").lower() in ("1", "true", "yes"):
            values["ansi_color"] = True
        values.update(overrides)
        if os.environ.get("TUNEBENCH_START_ENGINE", "").lower() in ("0", "false", "no"):
            values["start_engine"] = False  # e.g. a read-only look at a workspace, or a benchmark
        return cls(workspace=workspace, **values)

    def with_(self, **changes: Any) -> "TuiConfig":
        return replace(self, **changes)
