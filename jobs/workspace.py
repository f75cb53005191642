"""The workspace: one directory that holds everything a user backs up or moves.

It is private to its owner (DESIGN.md): often on a shared GPU box, it holds the databases, logs,
presets and checkpoints. Two layers keep it so. `ensure` makes its folders 0700 whatever the umask:
a private root alone shuts other users out of everything beneath it. And the entry points
(`tunebench`, the engine) run under PRIVATE_UMASK, so what they write — SQLite's -wal and -shm files
included, which no single chmod would catch — is 0600 too, should it ever be copied out.
A root that already exists is never chmodded behind the user's back: `exposure_warning` says so.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

DEFAULT_WORKSPACE = ".tunebench"
ENV_VAR = "TUNEBENCH_HOME"
PRIVATE_DIR_MODE = 0o700
PRIVATE_UMASK = 0o077  # files 0600, folders 0700


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
    def cache_dir(self) -> Path:
        """Prepared (tokenised, Arrow) datasets: safe to delete, rebuilt on demand (engine.data.cache)."""
        return self.root / "cache"

    @property
    def engine_pid(self) -> Path:
        return self.root / "engine.pid"

    @property
    def engine_log(self) -> Path:
        return self.root / "engine.log"

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    def ensure(self) -> "Workspace":
        # mkdir's mode is masked by the umask, which can only take bits away: 0700 stays 0700.
        for path in (self.root, self.runs_dir, self.presets_dir):
            path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
        return self


def fix_permissions_command(root: Path) -> str:
    return f"chmod -R go-rwx {shlex.quote(str(root))}"


def exposure_warning(workspace: Workspace) -> str | None:
    """A sentence for a workspace root that other local users may enter or read, else None."""
    try:
        mode = workspace.root.stat().st_mode & 0o777
    except OSError:  # not made yet: it will be made private
        return None
    if not mode & 0o077:
        return None
    return (f"the workspace {workspace.root} is open to other users on this machine (mode {mode:04o}): "
            f"they can read its databases, logs, presets and checkpoints. "
            f"`{fix_permissions_command(workspace.root)}` makes it private")


def resolve_workspace(path: str | os.PathLike | None = None) -> Workspace:
    """--workspace, else $TUNEBENCH_HOME, else ./.tunebench."""
    chosen = path or os.environ.get(ENV_VAR) or DEFAULT_WORKSPACE
    return Workspace(Path(chosen).expanduser().resolve())
