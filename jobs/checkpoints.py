"""A run's checkpoints as the user sees them: list, keep, delete — and repair after a crash.

The store's `checkpoints` rows and the run folder's checkpoints/checkpoint-<step>/ must agree. They
are changed together in a crash-safe order (Store.delete_checkpoint: the folder is renamed to a
`.deleting-*` tombstone, then the row goes, then the files), and `repair_checkpoints` brings back
agreement after a crash at any point: tombstones are removed, rows whose folder is gone are
dropped, complete folders without a row (the job died before reporting them) get one, and the
keep marker file follows the row's keep flag.

`keep` lives in two places on purpose: the row (what the TUI and CLI show) and a marker file in
the folder (engine/artifacts.KEEP_MARKER), which the engine's keep policy reads without the store.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from jobs.db_sink import directory_size
from jobs.store import Store
from jobs.workspace import Workspace
from presets.errors import TunebenchError

TOMBSTONE_PREFIX = ".deleting-"


class CheckpointError(TunebenchError, ValueError):
    """A checkpoint action that cannot be done; the message says why."""


@dataclass
class CheckpointInfo:
    step: int
    path: Path
    train_loss: float | None
    eval_loss: float | None
    size_bytes: int | None
    created_at: float
    keep: bool
    best: bool = False
    latest: bool = False
    on_disk: bool = True
    recorded: bool = True  # has a row in the store

    @property
    def age_s(self) -> float:
        return max(0.0, time.time() - self.created_at)

    @property
    def protected(self) -> bool:
        """Deleting it asks twice."""
        return self.keep or self.best

    def markers(self) -> str:
        return " ".join(m for m, on in (("★best", self.best), ("keep", self.keep), ("latest", self.latest)) if on)


def _finite(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def trainer_state_metrics(path: Path) -> dict[str, float]:
    """loss and eval_loss at a checkpoint's step, from its trainer_state.json (for folders without a row)."""
    try:
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    step = state.get("global_step")
    metrics: dict[str, float] = {}
    for entry in state.get("log_history", []):
        if entry.get("step", 0) > (step or 0):
            continue
        if "loss" in entry:
            metrics["loss"] = float(entry["loss"])
        if "eval_loss" in entry and entry.get("step") == step:
            metrics["eval_loss"] = float(entry["eval_loss"])
    return metrics


def _artifacts(ws: Workspace, run_id: str):
    from engine.artifacts import RunArtifacts  # pure Python: the run folder layout

    return RunArtifacts(ws.run_dir(run_id))


# --------------------------------------------------------------------------- listing


def list_checkpoints(store: Store, ws: Workspace, run_id: str) -> list[CheckpointInfo]:
    """Every checkpoint of a run, from the store and the disk, by step; best = lowest eval loss."""
    artifacts = _artifacts(ws, run_id)
    on_disk = artifacts.checkpoints()
    infos: dict[int, CheckpointInfo] = {}
    for row in store.list_checkpoints(run_id):
        path = Path(row.path)
        infos[row.step] = CheckpointInfo(
            step=row.step, path=path, train_loss=_finite(row.metrics.get("loss")), eval_loss=_finite(row.metrics.get("eval_loss")),
            size_bytes=row.size_bytes, created_at=row.created_at, keep=row.keep,
            on_disk=(path / "trainer_state.json").is_file() or row.step in on_disk,
        )
    for step, path in on_disk.items():
        if step in infos:
            if infos[step].train_loss is None or infos[step].eval_loss is None:
                metrics = trainer_state_metrics(path)
                infos[step].train_loss = infos[step].train_loss or _finite(metrics.get("loss"))
                infos[step].eval_loss = infos[step].eval_loss or _finite(metrics.get("eval_loss"))
            continue
        metrics = trainer_state_metrics(path)
        infos[step] = CheckpointInfo(
            step=step, path=path, train_loss=_finite(metrics.get("loss")), eval_loss=_finite(metrics.get("eval_loss")),
            size_bytes=directory_size(path), created_at=path.stat().st_mtime, keep=artifacts.is_kept(step), recorded=False,
        )
    result = [infos[s] for s in sorted(infos)]
    scored = [c for c in result if c.eval_loss is not None and c.on_disk]
    if scored:
        min(scored, key=lambda c: (c.eval_loss, c.step)).best = True
    present = [c for c in result if c.on_disk]
    if present:
        present[-1].latest = True
    return result


def find_checkpoint(store: Store, ws: Workspace, run_id: str, step: int) -> CheckpointInfo:
    for info in list_checkpoints(store, ws, run_id):
        if info.step == step:
            return info
    steps = ", ".join(str(c.step) for c in list_checkpoints(store, ws, run_id)) or "none"
    raise CheckpointError(f"run {run_id} has no checkpoint at step {step}", f"its checkpoints: {steps}")


# --------------------------------------------------------------------------- keep


def _write_marker(path: Path, keep: bool) -> None:
    from engine.artifacts import KEEP_MARKER

    marker = path / KEEP_MARKER
    if keep:
        if path.is_dir() and not marker.exists():
            marker.write_text("kept by the user: the keep policy does not prune this checkpoint\n", encoding="utf-8")
    else:
        marker.unlink(missing_ok=True)


def set_keep(store: Store, ws: Workspace, run_id: str, step: int, keep: bool) -> CheckpointInfo:
    """Mark (or unmark) a checkpoint keep: the row's flag and the marker file the engine's pruning reads."""
    info = find_checkpoint(store, ws, run_id, step)
    if not info.on_disk:
        raise CheckpointError(f"the checkpoint at step {step} is gone from disk ({info.path})", f"`tunebench checkpoints {run_id} --repair` forgets it")
    if not info.recorded:
        store.add_checkpoint(run_id, step, str(info.path), trainer_state_metrics(info.path), info.size_bytes)
    _write_marker(info.path, keep)
    store.set_checkpoint_keep(run_id, step, keep)
    return find_checkpoint(store, ws, run_id, step)


# --------------------------------------------------------------------------- delete


def _tombstone(path: Path) -> Path:
    return path.with_name(f"{TOMBSTONE_PREFIX}{path.name}-{secrets.token_hex(3)}")


def delete_checkpoint(store: Store, ws: Workspace, run_id: str, step: int) -> CheckpointInfo:
    """Remove a checkpoint's folder and its row together (crash-safe; see the module docstring).

    Confirmation (twice for kept or best ones) is the caller's: this deletes.
    """
    info = find_checkpoint(store, ws, run_id, step)
    if info.recorded:
        try:
            store.delete_checkpoint(run_id, step)
        except FileNotFoundError:
            # The engine's keep policy pruned it in the same instant: only the row is left to go.
            store.delete_checkpoint(run_id, step, remove_files=False)
    if info.path.exists():  # no row (or a row pointing elsewhere): the same rename-then-delete order
        trash = _tombstone(info.path)
        os.replace(info.path, trash)
        shutil.rmtree(trash, ignore_errors=True)
    return info


# --------------------------------------------------------------------------- repair


def repair_checkpoints(store: Store, ws: Workspace, run_ids: list[str] | None = None) -> list[str]:
    """Bring the store's checkpoint rows and the run folders back into agreement; say what was done.

    Safe to run at any time (the TUI and the engine run it at start): for a running run it only
    finishes deletions and drops rows of vanished folders; rows for unreported folders are added
    only once the run has ended.
    """
    from engine.artifacts import KEEP_MARKER

    done: list[str] = []
    runs = [store.get_run(r) for r in run_ids] if run_ids is not None else store.list_runs(kind="train")
    for run in runs:
        if run is None:
            continue
        artifacts = _artifacts(ws, run.id)
        folder = artifacts.checkpoints_dir
        if folder.is_dir():
            for tomb in folder.glob(f"{TOMBSTONE_PREFIX}*"):
                shutil.rmtree(tomb, ignore_errors=True)
                done.append(f"{run.id}: finished deleting {tomb.name}")
        on_disk = artifacts.checkpoints()
        rows = store.list_checkpoints(run.id)
        for row in rows:
            path = Path(row.path)
            if row.step not in on_disk and not (path / "trainer_state.json").is_file():
                store.delete_checkpoint(run.id, row.step, remove_files=False)
                done.append(f"{run.id}: forgot checkpoint {row.step} (its folder {path} is gone)")
            elif row.step in on_disk:
                kept_on_disk = (on_disk[row.step] / KEEP_MARKER).is_file()
                if kept_on_disk != row.keep:
                    _write_marker(on_disk[row.step], row.keep)
                    done.append(f"{run.id}: keep marker of checkpoint {row.step} set to {row.keep}")
        if not run.active:
            recorded = {row.step for row in rows}
            for step, path in on_disk.items():
                if step not in recorded:
                    store.add_checkpoint(run.id, step, str(path), trainer_state_metrics(path), directory_size(path))
                    if artifacts.is_kept(step):
                        store.set_checkpoint_keep(run.id, step, True)
                    done.append(f"{run.id}: recorded checkpoint {step} found on disk")
    return done


def repair_workspace(ws: Workspace) -> list[str]:
    """repair_checkpoints over every training run of the workspace (call at engine / TUI start)."""
    from jobs.store import open_store

    return repair_checkpoints(open_store(ws), ws)


# --------------------------------------------------------------------------- export


def export_weights(source: Path, destination: Path, *, base_model: str | None = None) -> list[str]:
    """Copy an adapter or model with its tokenizer into `destination` (trainer state and optimizer left out).

    Written to a temporary folder beside it and renamed in, so a failed copy leaves nothing half-done.
    """
    skip = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "training_args.bin", "scaler.pt"}
    from engine.artifacts import KEEP_MARKER

    skip.add(KEEP_MARKER)
    destination = destination.expanduser().resolve()
    if destination.exists() and any(destination.iterdir()):
        raise CheckpointError(f"{destination} exists and is not empty", "choose a new folder")
    tmp = destination.with_name(f".{destination.name}.partial-{secrets.token_hex(3)}")
    copied = []
    try:
        tmp.mkdir(parents=True)
        for item in sorted(source.iterdir()):
            if item.name in skip or item.name.startswith("rng_state"):
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copy2(item, tmp / item.name)
            copied.append(item.name)
        if base_model and (tmp / "adapter_config.json").is_file() and not (tmp / "tokenizer_config.json").is_file():
            # An adapter without its tokenizer is half a model: bring the base's along.
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(base_model).save_pretrained(tmp)
            copied.append("tokenizer (from the base model)")
        from engine.card import result_origin, write_model_card

        write_model_card(tmp, **result_origin(source))  # rewritten: evaluations since training belong on it
        if "README.md" not in copied:
            copied.append("README.md")
        if destination.exists():
            destination.rmdir()
        os.replace(tmp, destination)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return copied
