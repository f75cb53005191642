"""The layout of a run's folder, read back without the store.

    runs/<id>/preset.yaml                     the frozen preset
    runs/<id>/checkpoints/checkpoint-<step>/  Trainer checkpoints (adapter or model + optimizer state)
    runs/<id>/final/                          the result: PEFT adapter or full model, with tokenizer
    runs/<id>/metrics.jsonl                   every metric, event, checkpoint record
    runs/<id>/probes.jsonl                    the probes' answers at each save (engine/probes.py)
    runs/<id>/run.log                         the job's log
    runs/<id>/evals/<eval-run-id>/            evaluation results (JSON, Markdown)
    runs/<id>/merged/<merge-run-id>/          merged models
    runs/<id>/samples/step-<N>.jsonl          per-sample losses (engine.sample_loss; step 0 = the base model)
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from engine.errors import EngineError

PRESET_FILE = "preset.yaml"
CHECKPOINTS_DIR = "checkpoints"
FINAL_DIR = "final"
METRICS_FILE = "metrics.jsonl"
PROBES_FILE = "probes.jsonl"
LOG_FILE = "run.log"
# A file inside checkpoints/checkpoint-<step>/ that the user marked keep: the keep policy never prunes it.
KEEP_MARKER = "tunebench-keep"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# A checkpoint may grow a little over the last one (trainer state, log history): a save is let
# through only with this share of the last checkpoint's size free on top of it.
CHECKPOINT_SPACE_MARGIN = 0.1
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# How libraries that do not raise OSError say it (safetensors' SafetensorError, sqlite3's OperationalError).
_DISK_FULL_WORDS = ("no space left on device", "disk quota exceeded", "database or disk is full")


def write_atomic(path: Path, text: str, mode: int | None = None) -> None:
    """Write beside `path`, then rename over it: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: ranks may write at once
    tmp.write_text(text, encoding="utf-8")
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, path)


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def adapter_base_model(path: str | Path) -> str | None:
    """The base model an adapter was trained on, as PEFT recorded it."""
    config = Path(path) / "adapter_config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text()).get("base_model_name_or_path")


@dataclass(frozen=True)
class RunArtifacts:
    run_dir: Path

    @property
    def preset_file(self) -> Path:
        return self.run_dir / PRESET_FILE

    @property
    def final_dir(self) -> Path:
        return self.run_dir / FINAL_DIR

    @property
    def checkpoints_dir(self) -> Path:
        return self.run_dir / CHECKPOINTS_DIR

    @property
    def metrics_file(self) -> Path:
        return self.run_dir / METRICS_FILE

    @property
    def probes_file(self) -> Path:
        return self.run_dir / PROBES_FILE

    @property
    def log_file(self) -> Path:
        return self.run_dir / LOG_FILE

    def checkpoint_dir(self, step: int) -> Path:
        return self.checkpoints_dir / f"checkpoint-{step}"

    def checkpoints(self) -> dict[int, Path]:
        """Complete checkpoints on disk by step (a folder being written has no trainer_state.json yet)."""
        found = {}
        if self.checkpoints_dir.is_dir():
            for child in self.checkpoints_dir.iterdir():
                match = _CHECKPOINT_RE.match(child.name)
                if match and (child / "trainer_state.json").is_file():
                    found[int(match.group(1))] = child
        return dict(sorted(found.items()))

    def is_kept(self, step: int) -> bool:
        return (self.checkpoint_dir(step) / KEEP_MARKER).is_file()

    def latest_checkpoint(self) -> Path | None:
        checkpoints = self.checkpoints()
        return checkpoints[max(checkpoints)] if checkpoints else None

    def load_preset(self):
        from presets import load_preset_text

        return load_preset_text(self.preset_file.read_text(encoding="utf-8"), str(self.preset_file))


def resolve_resume(resume_from: str | Path, artifacts: RunArtifacts) -> Path:
    """A checkpoint folder, or a run folder (its latest checkpoint)."""
    path = Path(resume_from).expanduser()
    if (path / "trainer_state.json").is_file():
        return path
    latest = RunArtifacts(path).latest_checkpoint() if path.is_dir() else None
    if latest is not None:
        return latest
    known = ", ".join(str(p) for p in artifacts.checkpoints().values()) or "none"
    raise EngineError(
        f"cannot resume from {path}: not a complete checkpoint (no trainer_state.json)",
        f"pass a checkpoint folder such as runs/<id>/checkpoints/checkpoint-<step>; this run's checkpoints: {known}",
    )


def human_bytes(n: float) -> str:
    """A size in binary units, as the TUI and the CLI show sizes (3.2 MiB, never 3.4 MB)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{value:.1f} TiB"


# --------------------------------------------------------------------------- disk space


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether an error, or one it came from, says its filesystem is full (or over quota)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
            return True
        if any(words in str(exc).lower() for words in _DISK_FULL_WORDS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def folder_bytes(path: str | Path) -> int:
    """The bytes of the files under `path` (0 if it is gone)."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:  # removed while we walk (pruning)
                pass
    return total


def mount_point(path: str | Path) -> Path:
    """The mount point of the filesystem that holds `path` (or would, for a path not made yet)."""
    current = Path(os.path.abspath(path))
    while not current.exists() and current != current.parent:
        current = current.parent
    while not os.path.ismount(current) and current != current.parent:
        current = current.parent
    return current


@dataclass(frozen=True)
class DiskSpace:
    path: Path  # the folder asked about
    mount: Path  # the mount point of its filesystem
    free: int  # bytes an unprivileged writer may still use
    total: int

    def describe(self) -> str:
        return f"the filesystem mounted at {self.mount} (holding {self.path}) has {human_bytes(self.free)} free of {human_bytes(self.total)}"


def disk_space(path: str | Path) -> DiskSpace:
    """Free and total bytes of the filesystem that holds `path` (its nearest existing folder)."""
    existing = Path(os.path.abspath(path))
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    usage = shutil.disk_usage(existing)
    return DiskSpace(Path(path), mount_point(existing), int(usage.free), int(usage.total))


def checkpoint_space_needed(last_checkpoint_bytes: int) -> int:
    """Free bytes a new checkpoint needs, from the size of the last whole one."""
    return int(last_checkpoint_bytes * (1 + CHECKPOINT_SPACE_MARGIN))
