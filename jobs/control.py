"""What a user does to runs: submit, cancel, resume, retry, remove — and start the engine for them.

The TUI and the `tunebench` verbs both call these; they raise ControlError (a clear sentence, no
traceback) for anything the user can fix, and PresetError for an invalid preset.

Resume is a new attempt of the same run (same id, `attempt` + 1): the run continues from a
checkpoint with its history intact. Metrics and checkpoints of the abandoned attempt past that
checkpoint's step are discarded first, so every step appears once in the run's record.
Retry is a new run (parent_run = the old one) with the same frozen preset, from step 0.

Submit and retry are all or nothing: a run that queue.db cannot take is removed again (row and
folder), and a resume that cannot be queued is not left `queued` in no queue. A full disk where the
workspace is written is a ControlError naming the filesystem, not sqlite3's traceback.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from jobs.engine_process import EngineStatus, engine_status, last_checkpoint, start_engine
from jobs.queue import JobQueue
from jobs.store import Run, RunNotFound, Store, open_store
from jobs.workspace import Workspace, resolve_workspace
from presets.errors import TunebenchError

RESUMABLE = ("interrupted", "cancelled", "failed")
RETRYABLE = ("completed", "failed", "cancelled", "interrupted")
NOT_SUBMITTED = "nothing was submitted"
NOT_RETRIED = "no new run was made"


class ControlError(TunebenchError):
    """A request that cannot be carried out as asked; the message says why and what to do."""


def _ws(workspace: Workspace | str | os.PathLike | None) -> Workspace:
    if isinstance(workspace, Workspace):
        return workspace
    return resolve_workspace(workspace)


def _resolve(store: Store, ref: str) -> Run:
    try:
        return store.resolve_run(ref)
    except RunNotFound as exc:
        raise ControlError(str(exc)) from None


def _queue(ws: Workspace) -> JobQueue:
    return JobQueue(ws)


# --------------------------------------------------------------------------- failures of the workspace's files


def _disk_full_error(ws: Workspace) -> ControlError:
    from engine.artifacts import disk_space  # pure Python: no torch

    try:
        space = disk_space(ws.root)
        where, mount = space.describe(), str(space.mount)
    except OSError:
        where = mount = f"the filesystem holding {ws.root}"
    return ControlError(f"the workspace's disk is full: {where}",
                        f"free space on {mount} (`tunebench rm RUN` deletes a run with its checkpoints), then try again")


@contextlib.contextmanager
def _disk_full_as_error(ws: Workspace):
    """A full disk where the workspace is written (tunebench.db, queue.db, run folders) is a ControlError."""
    from engine.artifacts import is_disk_full

    try:
        yield
    except (sqlite3.Error, OSError) as exc:
        if is_disk_full(exc):
            raise _disk_full_error(ws) from exc
        raise


def _queue_error(ws: Workspace, exc: Exception, outcome: str) -> ControlError:
    """queue.db could not be used: what it said, what became of the request, how to get a working queue."""
    from engine.artifacts import is_disk_full

    if is_disk_full(exc):
        return _disk_full_error(ws)
    return ControlError(
        f"the queue {ws.queue_db} cannot be used ({type(exc).__name__}: {exc}); {outcome}",
        f"if {ws.queue_db.name} is damaged, stop the engine (`tunebench engine stop`), move {ws.queue_db} aside "
        "and try again: a new queue is made, and the engine queues its waiting runs again when it starts",
    )


def _checked_queue(ws: Workspace, outcome: str) -> JobQueue:
    """The queue, read once: a damaged queue.db is found before anything is changed."""
    try:
        queue = _queue(ws)
        queue.huey.storage.queue_size()
    except Exception as exc:
        raise _queue_error(ws, exc, outcome) from exc
    return queue


def _enqueue(queue: JobQueue, ws: Workspace, run_id: str, priority: int, outcome: str) -> None:
    try:
        queue.enqueue(run_id, priority)
    except Exception as exc:
        raise _queue_error(ws, exc, outcome) from exc


def _forget_new_run(ws: Workspace, store: Store, run_id: str) -> None:
    """Undo a new run that could not be queued: its folder and its row (best effort on a failing disk)."""
    shutil.rmtree(ws.run_dir(run_id), ignore_errors=True)
    with contextlib.suppress(Exception):  # left queued, the engine queues it again when it starts
        store.delete_run(run_id)


# --------------------------------------------------------------------------- submit


def _check_local_paths(preset) -> None:
    """Absolute paths in a frozen preset must exist now, not fail minutes later in the engine."""
    from presets import PresetError, Problem

    problems = []

    def check(key: str, value: str | None) -> None:
        if value and os.path.isabs(value) and not os.path.exists(value):
            problems.append(Problem(key, f"no such file or directory: {value}"))

    model = getattr(preset, "model", None)
    if model is not None:
        check("model.path", model.path)
    data = getattr(preset, "data", None)
    if data is not None:
        for index, path in enumerate(data.train_files):
            check(f"data.train_files[{index}]", path)
        for index, path in enumerate(data.val_files):
            check(f"data.val_files[{index}]", path)
    for key in ("adapter", "base_model"):
        check(key, getattr(preset, key, None))
    check("probes.file", getattr(getattr(preset, "probes", None), "file", None))
    for index, source in enumerate(getattr(preset, "models", None) or []):
        check(f"models[{index}].path", source.path)
    if problems:
        raise PresetError(preset.name, problems)


def freeze_preset(ws: Workspace, preset: Any, overrides: list[str] | None = None, store: Store | None = None):
    """Load (a name or path) or take a preset object, apply --set overrides, validate, resolve paths.

    Raises PresetError before anything is written or queued.
    """
    from presets import PresetError, Problem, dump_preset, load_preset, load_preset_text, resolve_paths

    if isinstance(preset, (str, Path)):
        preset = load_preset(str(preset), ws.root, overrides)
    elif overrides:
        preset = load_preset_text(dump_preset(preset), preset.name, overrides)
    preset = resolve_paths(preset, ws.root)
    target = getattr(preset, "run", None)
    if target is not None and store is not None:
        # Freeze a run name or prefix to its id: the job must not follow a later rename or reuse.
        try:
            preset = preset.model_copy(update={"run": store.resolve_run(target).id})
        except RunNotFound as exc:
            raise PresetError(preset.name, [Problem("run", str(exc))]) from None
    start = preset.model.start_from if preset.kind == "train" else None
    if start and not Path(start).is_dir() and store is not None:
        # A run to start from is frozen to its id; the worker takes its result when the job starts
        # (so a DPO run can be queued behind the SFT run it follows).
        try:
            model = preset.model.model_copy(update={"start_from": store.resolve_run(start).id})
        except RunNotFound as exc:
            raise PresetError(preset.name, [Problem("model.start_from", f"{exc}: name a run id, an adapter folder or a model folder")]) from None
        preset = preset.model_copy(update={"model": model})
    _check_local_paths(preset)
    return preset


def submit(workspace, preset, *, name: str | None = None, priority: int = 0, overrides: list[str] | None = None,
           dry_run: bool = False, dry_run_seconds: float = 0.0, park_at_step: int | None = None,
           start: bool = True) -> Run:
    """Validate and freeze a preset, create a `queued` run and enqueue it; start the engine if none runs.

    `preset`: a name, a path or a preset object. `dry_run`: the job goes through the queue and a
    job process but trains nothing (it stays running `dry_run_seconds`). `start=False` leaves the
    engine alone (tests, batch submissions followed by one ensure_engine). `park_at_step`, a test
    hook: training waits after step N (its logging and checkpoint done) until a stop is asked for,
    so that a cancel, a SIGTERM or a kill lands at a known step.
    """
    from presets import check_name, dump_preset

    if name is not None:
        check_name(name, "run name")  # before anything is written
    ws = _ws(workspace)
    with _disk_full_as_error(ws):
        ws.ensure()
        store = open_store(ws)
        frozen = freeze_preset(ws, preset, overrides, store)
        text = dump_preset(frozen)
        info: dict[str, Any] = {}
        if dry_run:
            info.update(dry_run=True, dry_run_seconds=float(dry_run_seconds))
        if overrides:
            info["overrides"] = list(overrides)
        if park_at_step is not None:
            info["park_at_step"] = int(park_at_step)
        queue = _checked_queue(ws, NOT_SUBMITTED)
        # All or nothing: a run that cannot be queued is not left behind `queued` in no queue.
        run = store.create_run(frozen.kind, name or frozen.name, text, priority=priority, info=info)
        try:
            run_dir = ws.run_dir(run.id)
            run_dir.mkdir(parents=True, exist_ok=True)
            tmp = run_dir / f".preset.yaml.{secrets.token_hex(3)}"
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, run_dir / "preset.yaml")
            _enqueue(queue, ws, run.id, priority, NOT_SUBMITTED)
        except BaseException:
            _forget_new_run(ws, store, run.id)
            raise
    if start:
        ensure_engine(ws)
    return run


def ensure_engine(workspace) -> EngineStatus:
    """The workspace's engine status, starting a detached engine when none runs."""
    ws = _ws(workspace)
    status = engine_status(ws)
    return status if status.running else start_engine(ws)


# --------------------------------------------------------------------------- cancel


def cancel(workspace, ref: str) -> Run:
    """Queued: it never starts. Running: it stops at the next step boundary, checkpoints, ends `cancelled`.

    Returns the run as it is now (still `running` until the job has saved its checkpoint).
    """
    ws = _ws(workspace)
    store = open_store(ws)
    run = _resolve(store, ref)
    if run.state == "queued" and store.set_state(run.id, "cancelled", expect="queued"):
        _queue(ws).discard(run.id)
        return store.get_run(run.id)
    run = store.get_run(run.id)
    if run.state == "running":
        store.request_stop(run.id, "cancel")
        store.add_event(run.id, "info", "cancel requested: stopping at the next step boundary")
        return store.get_run(run.id)
    raise ControlError(f"run {run.id} is {run.state}: there is nothing to cancel")


def set_priority(workspace, ref: str, priority: int) -> Run:
    """Move a queued run in the queue: higher priorities start first."""
    ws = _ws(workspace)
    store = open_store(ws)
    run = _resolve(store, ref)
    if run.state != "queued":
        raise ControlError(f"run {run.id} is {run.state}: only a queued run can change its place in the queue")
    queue = _checked_queue(ws, f"run {run.id} keeps its priority")
    store.update_run(run.id, priority=priority)
    queue.discard(run.id)
    # Failing here leaves the run queued in no queue: the engine queues such runs again when it starts.
    _enqueue(queue, ws, run.id, priority, f"run {run.id} is queued again when the engine starts")
    store.add_event(run.id, "info", f"priority {run.priority} → {priority}")
    return store.get_run(run.id)


# --------------------------------------------------------------------------- resume / retry


def resume(workspace, ref: str, from_step: int | None = None, *, start: bool = True) -> Run:
    """Queue the run again to continue from its last checkpoint (or the one at `from_step`)."""
    ws = _ws(workspace)
    store = open_store(ws)
    run = _resolve(store, ref)
    if run.kind != "train":
        raise ControlError(f"run {run.id} is a {run.kind} job: only training resumes", f"`tunebench retry {run.id}` runs it again")
    if run.state not in RESUMABLE:
        raise ControlError(f"run {run.id} is {run.state}; only {', '.join(RESUMABLE)} runs resume")
    if run.dry_run:
        checkpoint = (from_step or 0, "")
    else:
        checkpoint = _choose_checkpoint(store, ws, run, from_step)
    step, path = checkpoint
    queue = _checked_queue(ws, f"run {run.id} was not resumed")
    if not run.dry_run:
        for row in store.list_checkpoints(run.id):
            if row.step > step:  # the abandoned attempt's: the resumed run writes its own
                store.delete_checkpoint(run.id, row.step)
        for later, later_path in _disk_checkpoints(ws, run.id).items():
            if later > step:
                shutil.rmtree(later_path, ignore_errors=True)
        store.delete_metrics_after(run.id, step)
    store.update_run(run.id, info={"resume_from": path or None, "resume_step": step})
    store.set_state(run.id, "queued")
    store.add_event(run.id, "info", f"resume from the checkpoint at step {step}" if path else "resume", step)
    try:
        _enqueue(queue, ws, run.id, run.priority, f"run {run.id} was not resumed")
    except ControlError as exc:
        # Not left `queued` in no queue: back to a state it resumes from (queued → interrupted is no transition).
        back = "failed" if run.state == "failed" else "cancelled"
        with contextlib.suppress(Exception):
            store.set_state(run.id, back, error=exc.message, advice=exc.advice, expect="queued")
        raise
    if start:
        ensure_engine(ws)
    return store.get_run(run.id)


def _disk_checkpoints(ws: Workspace, run_id: str) -> dict[int, Path]:
    from engine.artifacts import RunArtifacts  # pure Python: the run folder layout

    return RunArtifacts(ws.run_dir(run_id)).checkpoints()


def _choose_checkpoint(store: Store, ws: Workspace, run: Run, from_step: int | None) -> tuple[int, str]:
    available = {row.step: row.path for row in store.list_checkpoints(run.id) if Path(row.path).exists()}
    available.update({s: str(p) for s, p in _disk_checkpoints(ws, run.id).items()})
    if not available:
        raise ControlError(f"run {run.id} has no checkpoint to resume from", f"`tunebench retry {run.id}` starts it again")
    if from_step is None:
        latest = last_checkpoint(store, ws, run.id)
        return latest if latest else (max(available), available[max(available)])
    if from_step not in available:
        steps = ", ".join(str(s) for s in sorted(available))
        raise ControlError(f"run {run.id} has no checkpoint at step {from_step}", f"its checkpoints: {steps}")
    return from_step, available[from_step]


def retry(workspace, ref: str, *, start: bool = True) -> Run:
    """A new run with the same frozen preset, from the start (parent_run = the old run)."""
    ws = _ws(workspace)
    store = open_store(ws)
    old = _resolve(store, ref)
    if old.state not in RETRYABLE:
        raise ControlError(f"run {old.id} is {old.state}", "retry a run once it has ended")
    info = {key: old.info[key] for key in ("dry_run", "dry_run_seconds", "overrides") if key in old.info}
    base_name = re.sub(r"-\d+$", "", old.name)  # "demo-3" retried is "demo-4", not "demo-3-2"
    with _disk_full_as_error(ws):
        queue = _checked_queue(ws, NOT_RETRIED)
        run = store.create_run(old.kind, base_name, old.preset_yaml, priority=old.priority, parent_run=old.id, info=info)
        try:  # all or nothing, as in submit
            run_dir = ws.run_dir(run.id)
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "preset.yaml").write_text(old.preset_yaml, encoding="utf-8")
            store.add_event(run.id, "info", f"retry of {old.id} ({old.state})")
            _enqueue(queue, ws, run.id, run.priority, NOT_RETRIED)
        except BaseException:
            _forget_new_run(ws, store, run.id)
            raise
    if start:
        ensure_engine(ws)
    return run


# --------------------------------------------------------------------------- remove


def remove(workspace, ref: str) -> Run:
    """Delete a run's rows and its folder. A queued run is cancelled first; a running one is refused."""
    ws = _ws(workspace)
    store = open_store(ws)
    run = _resolve(store, ref)
    if run.state == "running":
        raise ControlError(f"run {run.id} is running", f"`tunebench cancel {run.id}` first")
    if run.state == "queued":
        store.set_state(run.id, "cancelled", expect="queued")
        if store.get_run(run.id).state == "running":
            raise ControlError(f"run {run.id} started just now", f"`tunebench cancel {run.id}` first")
    folder = ws.run_dir(run.id)
    trash = None
    if folder.exists():
        # Out of runs/ first (atomic), so a crash never leaves a half-deleted run folder in place.
        trash = ws.runs_dir / f".deleting-{run.id}-{secrets.token_hex(3)}"
        os.replace(folder, trash)
    store.delete_run(run.id)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
    return run
