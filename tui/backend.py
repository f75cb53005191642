"""What the screens ask of the rest of tunebench: the store, the engine, the GPUs, the presets.

Every method here may block (SQLite, a process check, NVML, the disk), so the screens call them
from thread workers only (`TunebenchApp.call_blocking` or an `@work(thread=True)` method).
`jobs.control` and `jobs.engine_process` are imported inside the methods that use them: they may
pull in Huey, and the first frame must not wait for that.

Tests build a Backend on a Store filled with fixed data and pass `clock`, `engine_probe` and
`gpu_probe` so that ages, the engine line and the GPU line are the same on every machine.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from jobs.store import Run, Store, open_store
from jobs.workspace import Workspace


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    used: int  # bytes
    total: int  # bytes
    util: int | None = None  # %, None where NVML does not report it
    power_w: float | None = None
    temp_c: int | None = None


@dataclass(frozen=True)
class EngineInfo:
    running: bool
    pid: int | None = None
    current_run: str | None = None
    queue_length: int | None = None
    error: str | None = None  # why the status could not be read


@dataclass(frozen=True)
class Overview:
    """One poll of the store: what the Runs screen and every header line draw."""

    runs: list[Run]
    now: float

    @property
    def queue_length(self) -> int:
        return sum(1 for run in self.runs if run.state == "queued")

    def run(self, run_id: str) -> Run | None:
        return next((run for run in self.runs if run.id == run_id), None)

    def news_since(self, earlier: Overview | None, *, refresh_every: float = 30.0) -> bool:
        """Whether this poll has anything to draw that `earlier` did not: a changed run, or a live
        run whose running or waiting time moves with the clock. Relative times ("5m ago") are
        refreshed every `refresh_every` seconds all the same."""
        if earlier is None or self.runs != earlier.runs or self.now - earlier.now >= refresh_every:
            return True
        return any(run.state in ("running", "queued") for run in self.runs)


@dataclass
class LogChunk:
    text: str
    offset: int  # where the next read starts
    truncated: bool = False  # the start of the file was skipped (a long log opened late)


class NvmlProbe:
    """GPU memory used / total, utilisation, power and temperature through NVML (engine.hardware):
    no torch, no CUDA context."""

    def __init__(self) -> None:
        self._state: bool | None = None  # None: not tried, False: no NVML here
        self._lock = threading.Lock()

    def __call__(self) -> list[GpuInfo]:
        with self._lock:
            if self._state is False:
                return []
            try:
                from engine.hardware import read_gpus  # stdlib only at import: the TUI stays light

                gpus = [
                    GpuInfo(g.index, g.name, g.memory_used, g.memory_total, g.health.utilization, g.health.power_w, g.health.temperature_c)
                    for g in read_gpus()
                ]
                self._state = True
                return gpus
            except Exception:
                # No driver, no library, a GPU fell off the bus: the header says "CPU" and moves on.
                self._state = False
                return []


def engine_probe_for(workspace: Workspace) -> Callable[[], EngineInfo]:
    def probe() -> EngineInfo:
        try:
            from jobs.engine_process import engine_status

            status = engine_status(workspace)
        except Exception as exc:  # the TUI must draw even when the engine side is broken
            from tui.format import user_message

            return EngineInfo(False, error=user_message(exc))
        return EngineInfo(
            running=bool(getattr(status, "running", False)),
            pid=getattr(status, "pid", None),
            current_run=getattr(status, "current_run", None),
            queue_length=getattr(status, "queue_length", None),
        )

    return probe


@dataclass
class Backend:
    workspace: Workspace
    clock: Callable[[], float] = time.time
    engine_probe: Callable[[], EngineInfo] | None = None
    gpu_probe: Callable[[], list[GpuInfo]] | None = None
    store_override: Store | None = None
    # submit / resume / retry start the engine when it is down (tests that only check the queue say no)
    autostart_engine: bool = True
    _store: Store | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.engine_probe is None:
            self.engine_probe = engine_probe_for(self.workspace)
        if self.gpu_probe is None:
            self.gpu_probe = NvmlProbe()

    # ----------------------------------------------------------------- reads

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = self.store_override or open_store(self.workspace)
        return self._store

    def overview(self) -> Overview:
        return Overview(self.store.list_runs(), self.clock())

    def engine(self) -> EngineInfo:
        return self.engine_probe()

    def gpus(self) -> list[GpuInfo]:
        return self.gpu_probe()

    def run(self, run_id: str) -> Run | None:
        return self.store.get_run(run_id)

    def comparable_runs(self) -> list[tuple[Run, list[int], bool]]:
        """Train runs that have something to chat with, newest first: (run, checkpoint steps, has a final result)."""
        from jobs.targets import result_choices

        found = []
        for run in self.store.list_runs(kind="train"):
            _, steps, final = result_choices(self.store, self.workspace, run.id)
            if steps or final:
                found.append((run, steps, final))
        return found

    def read_log(self, run_id: str, offset: int, *, first_read_bytes: int = 64_000) -> LogChunk:
        """New text of runs/<id>/run.log since `offset`; a first read takes only the file's tail."""
        path = self.workspace.run_dir(run_id) / "run.log"
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return LogChunk("", 0)
        if size < offset:  # the log was rewritten (a retry): start over
            offset = 0
        truncated = False
        if offset == 0 and size > first_read_bytes:
            offset, truncated = size - first_read_bytes, True
        with path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read(max(0, size - offset))
        # Stop at the last full line so a line being written is not split in two.
        cut = data.rfind(b"\n") + 1
        if cut == 0 and data:
            return LogChunk("", offset, truncated)
        text = data[:cut].decode("utf-8", errors="replace")
        if truncated:
            text = text.split("\n", 1)[1] if "\n" in text else ""
        return LogChunk(text, offset + cut, truncated)

    # ----------------------------------------------------------------- actions

    def submit(self, preset: str, *, name: str | None = None, priority: int = 0,
               overrides: list[str] | None = None) -> Run:
        from jobs import control

        return control.submit(self.workspace, preset, name=name or None, priority=priority,
                              overrides=overrides or None, start=self.autostart_engine)

    def submit_text(self, text: str, source: str, *, name: str | None = None,
                    overrides: list[str] | None = None) -> Run:
        """Submit YAML as it stands in the editor (saved or not)."""
        from jobs import control
        from presets import load_preset_text

        preset = load_preset_text(text, source)
        return control.submit(self.workspace, preset, name=name or None, overrides=overrides or None,
                              start=self.autostart_engine)

    def cancel(self, run_id: str) -> Any:
        from jobs import control

        return control.cancel(self.workspace, run_id)

    def resume(self, run_id: str) -> Any:
        from jobs import control

        return control.resume(self.workspace, run_id, start=self.autostart_engine)

    def retry(self, run_id: str) -> Any:
        from jobs import control

        return control.retry(self.workspace, run_id, start=self.autostart_engine)

    def remove(self, run_id: str) -> Any:
        from jobs import control

        return control.remove(self.workspace, run_id)

    def raise_priority(self, run_id: str) -> int:
        """Put a queued run ahead of every other queued run; returns its new priority."""
        from jobs import control

        run = self.store.get_run(run_id)
        if run is None:
            raise KeyError(f"no run {run_id!r}")
        if run.state != "queued":
            raise ValueError(f"{run.name} is {run.state}: only a queued run can move up the queue")
        priority = max(r.priority for r in self.store.queued_runs() + [run]) + 1
        control.set_priority(self.workspace, run_id, priority)
        return priority

    def start_engine(self) -> Any:
        from jobs import control

        return control.ensure_engine(self.workspace)

    # ----------------------------------------------------------------- presets

    def preset_entries(self) -> list[tuple[str, str, Path]]:
        """(name, "built-in" | "workspace", path) of every preset, built-ins first."""
        from presets import builtin_names
        from presets.loader import builtin_dir, user_dir

        entries = [(name, "built-in", builtin_dir() / f"{name}.yaml") for name in builtin_names()]
        folder = user_dir(self.workspace.root)
        if folder.is_dir():
            entries += [(p.stem, "workspace", p) for p in sorted(folder.glob("*.yaml"))]
        return entries

    def read_text(self, path: Path) -> str:
        from presets.loader import read_text

        return read_text(Path(path))

    def save_preset(self, name: str, text: str) -> Path:
        from presets import save_user_preset

        return save_user_preset(self.workspace.root, name, text)

    def delete_preset(self, name: str) -> Path:
        from presets import delete_user_preset

        return delete_user_preset(self.workspace.root, name)

    def rename_preset(self, old: str, new: str) -> Path:
        from presets import rename_user_preset

        return rename_user_preset(self.workspace.root, old, new)

