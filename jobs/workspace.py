"""The workspace: one directory that holds everything a user backs up or moves."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_WORKSPACE = ".tunebench"
ENV_VAR = "TUNEBENCH_HOME"


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def queue_db(self) -> Path:
        return self.root / "queue.db"

    @property
    def store_db(self) -> Path:
        return self.root / "tunebench.db"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def presets_dir(self) -> Path:
        return self.root / "presets"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def engine_pid(self) -> Path:
        return self.root / "engine.pid"

    @property
    def engine_log(self) -> Path:
        return self.root / "engine.log"

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    def ensure(self) -> "Workspace":
        for path in (self.root, self.runs_dir, self.presets_dir):
            path.mkdir(parents=True, exist_ok=True)
        return self


def resolve_workspace(path: str | os.PathLike | None = None) -> Workspace:
    """--workspace, else $TUNEBENCH_HOME, else ./.tunebench."""
    chosen = path or os.environ.get(ENV_VAR) or DEFAULT_WORKSPACE
    return Workspace(Path(chosen).expanduser().resolve())
