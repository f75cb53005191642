"""`tunebench store check` and `tunebench store rebuild`: the run store from the run folders.

The store mirrors every run into runs/<id>/ as it writes it (jobs/store.py): run.json is the run
row, history.jsonl the metrics, events, checkpoints, findings and results in the order they were
recorded, checkpoints/checkpoint-<step>/ the checkpoints themselves. A rebuild replays them into a
fresh database beside the old one and only then swaps it in; the old file (and its -wal and -shm)
is renamed to tunebench.db.damaged-<stamp>, never deleted.

What a rebuild cannot bring back: transcripts and evaluation results tied to no run, and anything
of a run folder made before run.json existed but its preset and checkpoints. A run that was
`running` when the store was lost comes back `interrupted` (resumable from its last checkpoint);
a `queued` one stays queued, and the engine's start-up reconciliation (_requeue_lost_runs) enqueues
it again if queue.db no longer holds it.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from jobs.store import (JOURNAL_FILE, PRESET_FILE, RUN_RECORD_FILE, SCHEMA_VERSION, TRANSITIONS, BadTag, Store,
                        StoreError, _dumps, check_tag, finding_key, is_corruption, merge_finding, open_store,
                        run_folders, run_record, write_run_record)
from jobs.workspace import Workspace

REBUILD_SUFFIX = ".rebuilding"
SIDE_FILES = ("", "-wal", "-shm")


# --------------------------------------------------------------------------- check


@dataclass
class StoreCheck:
    path: Path
    exists: bool
    size: int | None
    readable: bool
    integrity: str | None = None  # "ok", or what `pragma quick_check` found
    error: str | None = None  # why it cannot be read
    schema_version: int | None = None
    store_runs: int = 0
    folders: int = 0
    unknown_folders: list[str] = field(default_factory=list)  # run folders the store does not know
    missing_folders: list[str] = field(default_factory=list)  # store runs with no folder

    @property
    def healthy(self) -> bool:
        return self.readable and self.integrity == "ok" and self.schema_version == SCHEMA_VERSION

    @property
    def complete(self) -> bool:
        return self.healthy and not self.unknown_folders

    def lines(self) -> list[str]:
        if not self.exists:
            state = "missing"
        elif not self.size:
            state = "empty (0 bytes)"
        elif not self.readable:
            state = f"not a readable tunebench database: {self.error}"
        else:
            state = f"readable, integrity {self.integrity}, schema version {self.schema_version} (this tunebench: {SCHEMA_VERSION})"
        out = [f"store: {self.path}: {state}"]
        if self.readable:
            out.append(f"runs in the store: {self.store_runs}")
        out.append(f"run folders: {self.folders}")
        if self.unknown_folders:
            out.append(f"run folders the store does not know ({len(self.unknown_folders)}): {', '.join(self.unknown_folders)}")
        if self.missing_folders:
            out.append(f"store runs with no folder ({len(self.missing_folders)}): {', '.join(self.missing_folders)}")
        return out


def check_store(ws: Workspace, *, full: bool = False) -> StoreCheck:
    """Look at tunebench.db read-only (never creates, migrates or repairs it) and at the run folders."""
    path = ws.store_db
    folders = [f.name for f in run_folders(ws.runs_dir)]
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return StoreCheck(path, False, None, False, folders=len(folders), unknown_folders=folders)
    report = StoreCheck(path, True, size, False, folders=len(folders))
    if not size:
        report.unknown_folders = folders
        return report
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            report.integrity = "; ".join(r[0] for r in conn.execute(
                f"pragma {'integrity_check' if full else 'quick_check'}").fetchall()[:5])
            has_version = conn.execute(
                "select 1 from sqlite_master where type='table' and name='schema_version'").fetchone()
            report.schema_version = conn.execute("select max(version) from schema_version").fetchone()[0] or 0 \
                if has_version else 0
            ids = {r[0] for r in conn.execute("select id from runs")} if report.schema_version else set()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        report.error = str(exc) if is_corruption(exc) else f"{type(exc).__name__}: {exc}"
        report.unknown_folders = folders
        return report
    report.readable = True
    report.store_runs = len(ids)
    report.unknown_folders = [f for f in folders if f not in ids]
    report.missing_folders = sorted(i for i in ids if not (ws.run_dir(i)).is_dir())
    return report


# --------------------------------------------------------------------------- reading a run folder


def _number(value):
    if value is None:
        return None
    try:
        return float(value)  # "nan" / "inf" strings as JSON cannot hold them
    except (TypeError, ValueError):
        return None


@dataclass
class FolderHistory:
    metrics: list[tuple[int, str, float | None, float]] = field(default_factory=list)
    events: list[tuple[str, str, int | None, float]] = field(default_factory=list)
    checkpoints: dict[int, dict] = field(default_factory=dict)  # step → its last checkpoint record
    findings: list[tuple[dict, float]] = field(default_factory=list)
    transcripts: list[tuple[str, object, float]] = field(default_factory=list)
    eval_results: list[tuple[object, float]] = field(default_factory=list)
    run_started: dict = field(default_factory=dict)
    last_time: float | None = None
    bad_lines: int = 0


def fold_findings(reports: list[tuple[dict, float]]) -> list[tuple[dict, float, float]]:
    """The journal holds every report of a finding; the store keeps one per rule and key (finding_key),
    as Store.add_finding left it: (the stored finding, first reported, last reported), in first-report order."""
    folded: dict[tuple, tuple[dict, float, float]] = {}
    for finding, when in reports:
        key = (finding.get("rule"), finding_key(finding))
        previous = folded.get(key)
        stored = merge_finding(previous[0] if previous else None, finding, when)
        folded[key] = (stored, previous[1] if previous else when, when)
    return list(folded.values())


def read_journal(path: Path) -> FolderHistory:
    """Replay history.jsonl: what the store held when it was last written (a torn last line is skipped)."""
    history = FolderHistory()
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return history
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            kind = record.get("type")
            when = float(record.get("time") or 0.0)
        except (ValueError, AttributeError, TypeError):
            history.bad_lines += 1
            continue
        history.last_time = max(history.last_time or when, when)
        if kind == "metrics":
            values = record.get("values") or {}
            step = int(record.get("step") or 0)
            history.metrics += [(step, str(name), _number(value), when) for name, value in values.items()]
        elif kind == "metrics_truncated":  # a resume from an earlier checkpoint dropped the later metrics
            after = int(record.get("after_step") or 0)
            history.metrics = [row for row in history.metrics if row[0] <= after]
        elif kind == "event":
            step = record.get("step")
            history.events.append((str(record.get("level") or "info"), str(record.get("text") or ""),
                                   None if step is None else int(step), when))
        elif kind == "checkpoint":
            history.checkpoints[int(record.get("step") or 0)] = record
        elif kind == "checkpoint_removed":
            history.checkpoints.pop(int(record.get("step") or 0), None)
        elif kind == "finding":
            history.findings.append((record.get("finding") or {}, when))
        elif kind == "transcript":
            history.transcripts.append((str(record.get("kind") or "chat"), record.get("payload"), when))
        elif kind == "eval_result":
            history.eval_results.append((record.get("payload"), when))
        elif kind == "run_started":  # written only while the store was lost (jobs/db_sink.py)
            history.run_started.update(record.get("info") or {})
    return history


def _tags(value) -> list[str]:
    """The tags run.json holds; one a hand edit made unusable is dropped, not the run."""
    tags = []
    for tag in value if isinstance(value, list) else []:
        try:
            tags.append(check_tag(tag))
        except BadTag:
            continue
    return list(dict.fromkeys(tags))


def _legacy_record(folder: Path, preset_yaml: str) -> dict:
    """A folder from before run.json: the preset gives kind and name, the files the outcome."""
    import yaml

    try:
        preset = yaml.safe_load(preset_yaml) or {}
    except yaml.YAMLError:
        preset = {}
    created = (folder / PRESET_FILE).stat().st_mtime
    done = (folder / "final").is_dir()
    return {"id": folder.name, "kind": str(preset.get("kind") or "train"), "name": str(preset.get("name") or folder.name),
            "state": "completed" if done else "interrupted", "created_at": created,
            "error": None if done else "recovered from a folder without run.json: how it ended is not known",
            "advice": None if done else f"`tunebench resume {folder.name}` or `tunebench retry {folder.name}`"}


# --------------------------------------------------------------------------- rebuild


@dataclass
class RebuildReport:
    path: Path
    kept_aside: list[Path] = field(default_factory=list)
    runs: dict[str, int] = field(default_factory=dict)  # state → count
    metrics: int = 0
    events: int = 0
    checkpoints: int = 0
    interrupted: list[str] = field(default_factory=list)  # were running when the store was lost
    queued: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def run_count(self) -> int:
        return sum(self.runs.values())

    def lines(self) -> list[str]:
        states = ", ".join(f"{n} {state}" for state, n in sorted(self.runs.items()))
        out = [f"rebuilt {self.path}: {self.run_count} runs ({states or 'none'}), {self.metrics} metric rows, "
               f"{self.events} events, {self.checkpoints} checkpoints"]
        out += [f"kept aside: {p}" for p in self.kept_aside]
        if self.interrupted:
            out.append(f"running when the store was lost, now interrupted (resume or retry them): {', '.join(self.interrupted)}")
        if self.queued:
            out.append(f"still queued (the engine enqueues them again when it starts): {', '.join(self.queued)}")
        out += self.notes
        return out


class RebuildError(StoreError):
    """A rebuild that must not go ahead (an engine is running, nothing to rebuild from)."""


def rebuild_store(ws: Workspace, *, force: bool = False) -> RebuildReport:
    """Rebuild tunebench.db from the run folders; the old file is kept aside, never deleted.

    A readable store that knows every run folder is left alone unless `force`.
    """
    from jobs.engine_process import engine_running

    if engine_running(ws):
        raise RebuildError("the engine is running on this workspace: it would keep writing to the old store",
                           "`tunebench engine stop`, then `tunebench store rebuild`")
    check = check_store(ws)
    if check.complete and not force:
        raise RebuildError(f"{check.path} is readable and knows every run folder: nothing to rebuild",
                           "`tunebench store rebuild --force` rebuilds it anyway (the current file is kept aside)")
    report = RebuildReport(ws.store_db)
    tmp = ws.root / f"{ws.store_db.name}{REBUILD_SUFFIX}-{os.getpid()}"
    for suffix in SIDE_FILES:
        Path(f"{tmp}{suffix}").unlink(missing_ok=True)
    fresh = Store(tmp, runs_dir=None)  # mirrors nothing: the folders are what it is read from
    try:
        for folder in run_folders(ws.runs_dir):
            try:
                _rebuild_run(fresh, folder, report)
            except (OSError, ValueError, sqlite3.DatabaseError) as exc:
                report.notes.append(f"skipped {folder.name}: {exc}")
        fresh.close()
    except BaseException:
        fresh.close()
        for suffix in SIDE_FILES:
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)
        raise
    report.kept_aside = _set_aside(ws.store_db, "damaged" if not check.healthy else "before-rebuild")
    os.replace(tmp, ws.store_db)
    # Runs whose state the rebuild changed (running → interrupted) get their run.json brought in step.
    store = open_store(ws)
    for run_id in report.interrupted:
        run = store.get_run(run_id)
        if run is not None:
            write_run_record(ws.run_dir(run_id), run_record(run))
    return report


def _set_aside(path: Path, why: str) -> list[Path]:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = []
    for suffix in SIDE_FILES:  # a stale -wal beside a new database would be replayed into it
        source = Path(f"{path}{suffix}")
        if source.exists():
            target = Path(f"{path}.{why}-{stamp}{suffix}")
            os.replace(source, target)
            moved.append(target)
    return moved


def _rebuild_run(store: Store, folder: Path, report: RebuildReport) -> None:
    from engine.artifacts import KEEP_MARKER, RunArtifacts  # pure Python: the run folder layout
    from jobs.checkpoints import trainer_state_metrics
    from jobs.db_sink import directory_size

    preset_file = folder / PRESET_FILE
    preset_yaml = preset_file.read_text(encoding="utf-8") if preset_file.is_file() else ""
    record_file = folder / RUN_RECORD_FILE
    if record_file.is_file():
        record = json.loads(record_file.read_text(encoding="utf-8"))
    else:
        if not preset_yaml:
            raise ValueError("neither run.json nor preset.yaml")
        record = _legacy_record(folder, preset_yaml)
        report.notes.append(f"{folder.name}: no run.json (made by an older tunebench): recovered its preset and checkpoints only")
    run_id = folder.name
    if record.get("id") not in (None, run_id):
        report.notes.append(f"{folder.name}: its run.json names {record.get('id')}; the folder's name is used")
    history = read_journal(folder / JOURNAL_FILE)
    if history.bad_lines:
        report.notes.append(f"{run_id}: {history.bad_lines} unreadable line(s) in {JOURNAL_FILE} skipped")
    state = record.get("state") if record.get("state") in TRANSITIONS else "interrupted"
    error, advice = record.get("error"), record.get("advice")
    on_disk = RunArtifacts(folder).checkpoints()
    info = dict(record.get("info") or {})
    info.update(history.run_started)
    now = time.time()
    lost_event = None
    if state == "running":
        state = "interrupted"
        error = "the run store was lost while this run was running"
        if on_disk and record.get("kind") == "train" and not info.get("dry_run"):
            step = max(on_disk)
            error += f"; last checkpoint at step {step}"
            advice = f"`tunebench resume {run_id}` continues from step {step}"
        else:
            advice = f"`tunebench retry {run_id}` runs it again"
        lost_event = ("warning", f"running → interrupted: {error}\n  → {advice}", None, now)
        report.interrupted.append(run_id)
    if not preset_yaml and state == "queued":
        state, error, advice = "failed", "its frozen preset (preset.yaml) was lost", "submit the preset again"
    if not preset_yaml:
        report.notes.append(f"{run_id}: no preset.yaml")
    finished_at = record.get("finished_at")
    if lost_event is not None:
        finished_at = history.last_time or now
    started_at = record.get("started_at")
    with store._write() as conn:
        name = Store._free_name(conn, str(record.get("name") or run_id))
        conn.execute(
            "insert into runs (id, kind, name, state, priority, preset_yaml, created_at, started_at, finished_at, gpu, "
            "error, advice, parent_run, parent_checkpoint, step, total_steps, last_loss, best_eval_loss, "
            "best_eval_step, info, attempt, active_seconds, tags, note) "
            "values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (run_id, str(record.get("kind") or "train"), name, state, int(record.get("priority") or 0), preset_yaml,
             float(record.get("created_at") or now), started_at, finished_at, record.get("gpu"), error, advice,
             record.get("parent_run"), record.get("parent_checkpoint"), int(record.get("step") or 0),
             record.get("total_steps") or info.get("total_steps"), _number(record.get("last_loss")),
             _number(record.get("best_eval_loss")), record.get("best_eval_step"), _dumps(info),
             int(record.get("attempt") or 1), float(record.get("active_seconds") or 0.0),
             json.dumps(_tags(record.get("tags"))), str(record.get("note") or "")),
        )
        if history.metrics:
            conn.executemany("insert into metrics (run_id, step, name, value, time) values (?, ?, ?, ?, ?)",
                             [(run_id, step, name, None if value is None or math.isnan(value) else value, t)
                              for step, name, value, t in history.metrics])
            Store._recompute_summary(conn, run_id)
        events = history.events + ([lost_event] if lost_event else [])
        conn.executemany("insert into events (run_id, level, text, step, time) values (?, ?, ?, ?, ?)",
                         [(run_id, *event) for event in events])
        # The checkpoints are what is on disk; the journal adds what was measured when each was saved.
        for step, path in on_disk.items():
            saved = history.checkpoints.get(step) or {}
            metrics = {k: _number(v) for k, v in (saved.get("metrics") or {}).items()} if saved else trainer_state_metrics(path)
            conn.execute("insert into checkpoints (run_id, step, path, metrics, size_bytes, created_at, keep) "
                         "values (?, ?, ?, ?, ?, ?, ?)",
                         (run_id, step, str(path), _dumps(metrics), saved.get("size_bytes") or directory_size(path),
                          float(saved.get("time") or path.stat().st_mtime), int((path / KEEP_MARKER).is_file())))
        findings = fold_findings(history.findings)
        for finding, first, last in findings:
            conn.execute("insert into findings (run_id, rule, key, severity, payload, time, updated_at) "
                         "values (?, ?, ?, ?, ?, ?, ?)",
                         (run_id, finding.get("rule"), finding_key(finding), finding.get("severity"), _dumps(finding),
                          first, last))
        conn.execute("update runs set findings = ? where id = ?", (len(findings), run_id))
        for kind, payload, when in history.transcripts:
            conn.execute("insert into transcripts (run_id, kind, payload, created_at) values (?, ?, ?, ?)",
                         (run_id, kind, _dumps(payload), when))
        for payload, when in history.eval_results:
            conn.execute("insert into eval_results (run_id, payload, created_at) values (?, ?, ?)",
                         (run_id, _dumps(payload), when))
    report.runs[state] = report.runs.get(state, 0) + 1
    report.metrics += len(history.metrics)
    report.events += len(events)
    report.checkpoints += len(on_disk)
    if state == "queued":
        report.queued.append(run_id)
