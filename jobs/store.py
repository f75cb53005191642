"""The run store: `tunebench.db`, the one place runs, metrics, events and checkpoints are kept.

SQLite in WAL mode so the TUI reads while the engine writes; every write is a short
`BEGIN IMMEDIATE` transaction (so two writers queue on the busy timeout instead of failing to
upgrade a read lock). One connection per thread and per process: the TUI's worker threads, the
engine's worker threads and the job process each get their own.

The schema is versioned: `MIGRATIONS` is an ordered list; a database is brought up to date when it
is opened, and a database written by a newer tunebench is refused rather than misread.

The run folders are the users' history and the store can be rebuilt from them (jobs/rebuild.py),
so a workspace's store mirrors each run into runs/<id>/ as it writes it: `run.json` (the run row,
rewritten atomically whenever the row changes) and `history.jsonl` (metrics, events, checkpoints,
findings, results, appended in the order they were recorded). The mirror is written here, inside the same write transaction, rather
than by each caller (control.py, the worker, the engine, the TUI): every change of a run reaches its
folder whoever makes it, and the transaction's lock orders the writes of concurrent processes.
A damaged database raises StoreError (never a raw sqlite3 error), and a new or empty one beside
existing run folders is refused: it would hide the runs instead of showing them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets
import shutil
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from jobs.workspace import Workspace
from presets.errors import TunebenchError

BUSY_TIMEOUT_MS = 15_000
STORE_FILE = "tunebench.db"
RUN_RECORD_FILE = "run.json"
# Not the engine's metrics.jsonl: that one is engine.sink.JsonlSink's (training's rank 0 writes it, the
# distributed launcher tails it into the sink), so records appended there would be fed back in.
JOURNAL_FILE = "history.jsonl"
PRESET_FILE = "preset.yaml"
RUN_RECORD_FORMAT = 1
_RUN_FOLDER_RE = re.compile(r"^r-\d{6}-\d{6}-[0-9a-z]{4}$")
# What to do about a store that cannot be used; `store check` and `store rebuild` live in tui/commands/store_cmd.py.
RECOVERY_ADVICE = ("`tunebench store check` says what is wrong; `tunebench store rebuild` rebuilds the run store "
                   "from the run folders (the damaged file is kept aside)")
_CORRUPTION_ERRORS = ("SQLITE_CORRUPT", "SQLITE_NOTADB")

log = logging.getLogger("tunebench.store")

STATES = ("queued", "running", "completed", "failed", "cancelled", "interrupted")
ACTIVE_STATES = ("queued", "running")
FINAL_STATES = ("completed", "failed", "cancelled", "interrupted")
# The transitions a run may make; anything else is a bug in the caller and raises.
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "queued": ("running", "cancelled", "failed"),
    "running": ("completed", "failed", "cancelled", "interrupted"),
    "failed": ("queued",),
    "cancelled": ("queued",),
    "interrupted": ("queued", "failed"),
    "completed": (),
}
_STATE_LEVEL = {"failed": "error", "interrupted": "warning", "cancelled": "warning"}

# Ordered migrations: index + 1 is the schema version the step brings the database to.
MIGRATIONS: list[list[str]] = [
    [
        """create table runs (
            id text primary key,
            kind text not null,
            name text not null unique,
            state text not null,
            priority integer not null default 0,
            preset_yaml text not null,
            created_at real not null,
            started_at real,
            finished_at real,
            engine_pid integer,
            worker_pid integer,
            gpu text,
            error text,
            advice text,
            parent_run text,
            parent_checkpoint integer,
            step integer not null default 0,
            total_steps integer,
            last_loss real,
            best_eval_loss real,
            best_eval_step integer,
            findings integer not null default 0,
            info text not null default '{}',
            stop_request text,
            attempt integer not null default 1
        )""",
        "create index runs_state on runs (state, priority desc, created_at)",
        """create table metrics (
            id integer primary key autoincrement,
            run_id text not null references runs (id) on delete cascade,
            step integer not null,
            name text not null,
            value real,
            time real not null
        )""",
        "create index metrics_run on metrics (run_id, id)",
        """create table events (
            id integer primary key autoincrement,
            run_id text not null references runs (id) on delete cascade,
            level text not null,
            text text not null,
            step integer,
            time real not null
        )""",
        "create index events_run on events (run_id, id)",
        """create table checkpoints (
            run_id text not null references runs (id) on delete cascade,
            step integer not null,
            path text not null,
            metrics text not null default '{}',
            size_bytes integer,
            created_at real not null,
            keep integer not null default 0,
            primary key (run_id, step)
        )""",
        """create table findings (
            id integer primary key autoincrement,
            run_id text not null references runs (id) on delete cascade,
            rule text,
            severity text,
            payload text not null,
            time real not null
        )""",
        "create index findings_run on findings (run_id, id)",
        """create table transcripts (
            id integer primary key autoincrement,
            run_id text references runs (id) on delete cascade,
            kind text not null,
            payload text not null,
            created_at real not null
        )""",
        "create index transcripts_run on transcripts (run_id, kind, id)",
        """create table eval_results (
            id integer primary key autoincrement,
            run_id text references runs (id) on delete cascade,
            payload text not null,
            created_at real not null
        )""",
        "create index eval_results_run on eval_results (run_id, id)",
    ],
    # The running time of a run's attempts that ended: started_at is only the current attempt's
    # start, and the time a run sat cancelled or queued between attempts is no part of how long it ran.
    ["alter table runs add column active_seconds real not null default 0"],
    # One finding per rule and key (finding_key): a finding that lasts is updated in place
    # instead of added once per report or per attempt. Rows already there are folded the same way:
    # the first row keeps its place and step_start and takes the latest figures.
    [
        "alter table findings add column key text not null default ''",
        "alter table findings add column updated_at real",
        "update findings set updated_at = time",
        """update findings set key = coalesce(json_extract(payload, '$.key'), json_extract(payload, '$.evidence.kind'), '')
           where json_valid(payload) and json_type(payload) = 'object'""",
        """update findings set
               payload = (select case when json_valid(latest.payload) and json_valid(findings.payload)
                                      then json_set(latest.payload, '$.step_start',
                                                    coalesce(json_extract(findings.payload, '$.step_start'),
                                                             json_extract(latest.payload, '$.step_start')))
                                      else latest.payload end
                          from findings latest
                          where latest.run_id = findings.run_id and latest.rule is findings.rule and latest.key = findings.key
                          order by latest.id desc limit 1),
               severity = (select latest.severity from findings latest
                           where latest.run_id = findings.run_id and latest.rule is findings.rule and latest.key = findings.key
                           order by latest.id desc limit 1),
               updated_at = (select max(latest.time) from findings latest
                             where latest.run_id = findings.run_id and latest.rule is findings.rule and latest.key = findings.key)
           where id in (select min(id) from findings group by run_id, rule, key having count(*) > 1)""",
        "delete from findings where id not in (select min(id) from findings group by run_id, rule, key)",
        "update runs set findings = (select count(*) from findings where findings.run_id = runs.id)",
        "create unique index findings_key on findings (run_id, rule, key)",
    ],
    # The user's labels of a run: tags (a JSON list) and a free-text note, for filtering and comparing;
    # and one metric of a run read without walking its other metrics (Compare reads whole series).
    [
        "alter table runs add column tags text not null default '[]'",
        "alter table runs add column note text not null default ''",
        "create index metrics_run_name on metrics (run_id, name)",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(TunebenchError):
    """The database cannot be used (e.g. written by a newer tunebench, damaged, or lost)."""


def is_corruption(exc: BaseException) -> bool:
    """A damaged or foreign file, as opposed to a busy database or a bug in a statement."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    return type(exc) is sqlite3.DatabaseError or getattr(exc, "sqlite_errorname", "") in _CORRUPTION_ERRORS


def unreadable_store(path: Path, exc: BaseException) -> StoreError:
    return StoreError(f"{path} is not a readable tunebench database ({exc})", RECOVERY_ADVICE)


@contextmanager
def _corruption_as_store_error(path: Path) -> Iterator[None]:
    try:
        yield
    except sqlite3.DatabaseError as exc:
        if is_corruption(exc):
            raise unreadable_store(path, exc) from exc
        raise


class RunNotFound(TunebenchError, KeyError):
    """`resolve_run` found no run, or several, for a reference."""


class AmbiguousRun(RunNotFound):
    """Several runs start with the reference."""


class InvalidTransition(TunebenchError, ValueError):
    """A state change the run's current state does not allow (a cancel of a finished run, say)."""


@dataclass
class Run:
    id: str
    kind: str
    name: str
    state: str
    priority: int
    preset_yaml: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    engine_pid: int | None
    gpu: str | None
    error: str | None
    advice: str | None
    parent_run: str | None
    parent_checkpoint: int | None
    step: int
    total_steps: int | None
    last_loss: float | None
    best_eval_loss: float | None
    best_eval_step: int | None
    info: dict = field(default_factory=dict)
    findings: int = 0
    worker_pid: int | None = None
    stop_request: str | None = None
    attempt: int = 1
    active_seconds: float = 0.0  # running time of the attempts that ended
    tags: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def dry_run(self) -> bool:
        return bool(self.info.get("dry_run"))

    @property
    def progress(self) -> float | None:
        """Share of the steps done, 0..1, when the total is known."""
        if not self.total_steps:
            return None
        return min(1.0, self.step / self.total_steps)

    def running_time(self, now: float | None = None) -> float | None:
        """Seconds spent running, summed over attempts: time queued or stopped between them is not counted."""
        if self.state == "running" and self.started_at is not None:
            return self.active_seconds + max(0.0, (time.time() if now is None else now) - self.started_at)
        if self.active_seconds:
            return self.active_seconds
        if self.started_at is not None and self.finished_at is not None:  # a run finished before active_seconds
            return max(0.0, self.finished_at - self.started_at)
        return None


@dataclass(frozen=True)
class MetricRow:
    id: int
    step: int
    name: str
    value: float
    time: float


@dataclass(frozen=True)
class EventRow:
    id: int
    level: str
    text: str
    step: int | None
    time: float


@dataclass
class CheckpointRow:
    step: int
    path: str
    metrics: dict
    size_bytes: int | None
    created_at: float
    keep: bool
    best: bool


@dataclass(frozen=True)
class TranscriptRow:
    id: int
    run_id: str | None
    kind: str
    payload: Any
    created_at: float


@dataclass(frozen=True)
class EvalResultRow:
    id: int
    run_id: str | None
    payload: Any
    created_at: float


_RUN_COLUMNS = (
    "id, kind, name, state, priority, preset_yaml, created_at, started_at, finished_at, engine_pid, gpu, "
    "error, advice, parent_run, parent_checkpoint, step, total_steps, last_loss, best_eval_loss, "
    "best_eval_step, info, findings, worker_pid, stop_request, attempt, active_seconds, tags, note"
)
_RUN_UPDATABLE = {
    "priority", "engine_pid", "worker_pid", "gpu", "error", "advice", "step", "total_steps", "last_loss",
    "best_eval_loss", "best_eval_step", "started_at", "finished_at", "stop_request", "parent_run",
    "parent_checkpoint", "active_seconds",
}
_ID_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32: no i, l, o, u


def new_run_id(now: float | None = None) -> str:
    """'r-261123-052611-k3f9': sorts by creation second; the suffix keeps same-second ids apart."""
    stamp = time.strftime("%y%m%d-%H%M%S", time.localtime(now or time.time()))
    return f"r-{stamp}-{''.join(secrets.choice(_ID_ALPHABET) for _ in range(4))}"


def is_run_folder(path: Path) -> bool:
    """A run's folder: it has a run.json, or (made before run.json existed) a run id for a name and a
    frozen preset. Headless `tunebench train` folders and `.deleting-*` tombstones are not."""
    if path.name.startswith(".") or not path.is_dir():
        return False
    return (path / RUN_RECORD_FILE).is_file() or bool(_RUN_FOLDER_RE.match(path.name) and (path / PRESET_FILE).is_file())


def run_folders(runs_dir: Path) -> list[Path]:
    try:
        return sorted(child for child in runs_dir.iterdir() if is_run_folder(child))
    except FileNotFoundError:
        return []


def run_record(run: "Run") -> dict:
    """What runs/<id>/run.json holds: everything of the run row a rebuild needs but the preset."""
    return {
        "format": RUN_RECORD_FORMAT, "id": run.id, "kind": run.kind, "name": run.name, "state": run.state,
        "priority": run.priority, "parent_run": run.parent_run, "parent_checkpoint": run.parent_checkpoint,
        "created_at": run.created_at, "started_at": run.started_at, "finished_at": run.finished_at,
        "active_seconds": run.active_seconds, "error": run.error, "advice": run.advice, "gpu": run.gpu,
        "step": run.step, "total_steps": run.total_steps, "last_loss": run.last_loss,
        "best_eval_loss": run.best_eval_loss, "best_eval_step": run.best_eval_step, "attempt": run.attempt,
        "info": run.info, "tags": run.tags, "note": run.note,
    }


def write_run_record(folder: Path, record: dict) -> None:
    """Write beside run.json, then rename over it: a reader (or a crash) never sees half a record."""
    path = folder / RUN_RECORD_FILE
    tmp = folder / f".{RUN_RECORD_FILE}.{os.getpid()}.{threading.get_ident()}.tmp"
    tmp.write_text(json.dumps(record, default=str, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _json_number(value: Any) -> Any:
    # JSON has no NaN/Inf: written as strings (as engine.sink.JsonlSink does), read back with float().
    if value is None:
        return "nan"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def metric_records(rows: Iterable[tuple[int, str, float, float]]) -> list[dict]:
    """history.jsonl records of (step, name, value, time) rows: one per step and time."""
    records: list[dict] = []
    for step, name, value, t in rows:
        last = records[-1] if records else None
        if last is None or last["step"] != int(step) or last["time"] != t or name in last["values"]:
            last = {"type": "metrics", "step": int(step), "time": t, "values": {}}
            records.append(last)
        last["values"][str(name)] = _json_number(value)
    return records


def checkpoint_record(step: int, path: Any, metrics: dict | None, size_bytes: int | None, now: float) -> dict:
    return {"type": "checkpoint", "step": int(step), "path": str(path),
            "metrics": {k: _json_number(v) for k, v in (metrics or {}).items()}, "size_bytes": size_bytes, "time": now}


def event_record(level: str, text: str, step: int | None, now: float) -> dict:
    return {"type": "event", "level": level, "text": text, "step": step, "time": now}


def append_journal(folder: Path, records: list[dict]) -> None:
    """Append records to the run's history.jsonl in one O_APPEND write, so lines of concurrent
    writers never interleave. A folder that is gone (the run was removed) is not made again."""
    if not records or not folder.is_dir():
        return
    data = "".join(json.dumps(record, default=str) + "\n" for record in records).encode("utf-8")
    fd = os.open(folder / JOURNAL_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def finding_key(finding: dict) -> str:
    """Which of its rule's findings this is (engine.doctor.finding_key: one rule for the live doctor
    and the store; imported here, as jobs imports engine only inside functions)."""
    from engine.doctor import finding_key as rule_and_key

    return rule_and_key(finding)[1]


def merge_finding(previous: dict | None, finding: dict, now: float) -> dict:
    """The stored finding after `finding` is reported: its figures, the first report's step_start,
    and when it was last reported (reported_at, seconds since the epoch)."""
    merged = {**finding, "reported_at": now}
    if previous is not None and previous.get("step_start") is not None:
        merged["step_start"] = previous["step_start"]
    return merged


def _loads_finding(payload: str) -> dict:
    try:
        value = json.loads(payload)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


TAG_MAX = 32
_TAG_RE = re.compile(r"^[\w.:+-]+$")


class BadTag(TunebenchError, ValueError):
    """A tag that cannot be one: empty, too long, or with spaces or commas."""


def check_tag(tag: str) -> str:
    """A tag as stored: lowercase, one word of letters, digits and . _ : + - (so `tag:x` filters find it)."""
    text = str(tag).strip().lower()
    if not text or len(text) > TAG_MAX or not _TAG_RE.match(text):
        raise BadTag(f"{tag!r} is not a tag", f"a tag is one word of up to {TAG_MAX} letters, digits and . _ : + - "
                     "(e.g. baseline, lr-sweep, v2)")
    return text


def _loads_tags(text: str | None) -> list[str]:
    try:
        tags = json.loads(text or "[]")
    except ValueError:
        return []
    return [str(tag) for tag in tags] if isinstance(tags, list) else []


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str, allow_nan=True)


def _float_or_nan(value: float | None) -> float:
    # SQLite stores NaN as NULL; a metric row always has a value, so NULL reads back as NaN.
    return float("nan") if value is None else value


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


_WORKSPACE_RUNS = object()


class Store:
    """Thread-safe access to one `tunebench.db` (each thread gets its own connection).

    `runs_dir`: where the run folders are mirrored (see the module's docstring). By default a
    workspace's store (a file named tunebench.db) mirrors into the runs/ beside it; None mirrors
    nothing (a scratch database, or the one a rebuild fills) and refuses nothing.
    """

    def __init__(self, path: str | os.PathLike, runs_dir: Any = _WORKSPACE_RUNS):
        self.path = Path(path)
        if runs_dir is _WORKSPACE_RUNS:
            runs_dir = self.path.parent / "runs" if self.path.name == STORE_FILE else None
        self.runs_dir: Path | None = Path(runs_dir) if runs_dir is not None else None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        if self.runs_dir is not None:
            self._refuse_new_file_beside_run_folders()
        self._migrate()
        if self.runs_dir is not None:
            self._refuse_empty_store_beside_run_folders()

    # ----------------------------------------------------------------- a lost store

    def _refuse_new_file_beside_run_folders(self) -> None:
        """A missing or 0-byte tunebench.db would be made anew and hide every run: refuse before it is."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = None
        if size:
            return
        folders = run_folders(self.runs_dir)
        if folders:
            what = "is missing" if size is None else "is empty (0 bytes)"
            raise self._lost(f"the run store {self.path} {what}", len(folders))

    def _refuse_empty_store_beside_run_folders(self) -> None:
        """A store that knows no run while run folders exist (one made anew by an older tunebench, say)."""
        if self._read("select 1 from runs limit 1"):
            return
        # Under the write lock: a run being created makes its folder inside its transaction, so once
        # we hold the lock a folder we see has its row committed (no false alarm on a first submit).
        with self._write() as conn:
            if conn.execute("select 1 from runs limit 1").fetchone():
                return
            folders = run_folders(self.runs_dir)
        if folders:
            raise self._lost(f"the run store {self.path} knows no runs", len(folders))

    def _lost(self, what: str, folders: int) -> StoreError:
        return StoreError(
            f"{what}, but {self.runs_dir} holds {folders} run folder{'s' if folders != 1 else ''}",
            "`tunebench store rebuild` rebuilds the run store from them (`tunebench store check` lists them)",
        )

    # ----------------------------------------------------------------- the run folders

    def _record_run(self, conn: sqlite3.Connection, run_id: str, *, create: bool = False) -> None:
        """Rewrite runs/<id>/run.json from the row as this transaction leaves it."""
        if self.runs_dir is None:
            return
        folder = self.runs_dir / run_id
        try:
            if create:
                folder.mkdir(parents=True, exist_ok=True)
            elif not folder.is_dir():
                return  # a run being removed: its folder is not brought back
            row = conn.execute(f"select {_RUN_COLUMNS} from runs where id = ?", (run_id,)).fetchone()
            if row is not None:
                write_run_record(folder, run_record(self._row_to_run(row)))
        except OSError as exc:  # the database still has it; a full disk must not fail the run
            log.warning("could not write %s: %s", folder / RUN_RECORD_FILE, exc)

    def journal(self, run_id: str, records: list[dict]) -> None:
        """Append to runs/<id>/history.jsonl (nothing for a store that mirrors nothing)."""
        if self.runs_dir is None or not records:
            return
        try:
            append_journal(self.runs_dir / run_id, records)
        except OSError as exc:
            log.warning("could not append to %s: %s", self.runs_dir / run_id / JOURNAL_FILE, exc)

    # ----------------------------------------------------------------- connections

    def _conn(self) -> sqlite3.Connection:
        local = self._local
        conn = getattr(local, "conn", None)
        # A forked child must not reuse its parent's connection.
        if conn is None or local.pid != os.getpid():
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                   check_same_thread=False)
            try:
                with _corruption_as_store_error(self.path):
                    conn.execute(f"pragma busy_timeout = {BUSY_TIMEOUT_MS}")
                    self._set_wal(conn)
                    conn.execute("pragma synchronous = normal")
                    conn.execute("pragma foreign_keys = on")
            except BaseException:
                conn.close()
                raise
            local.conn, local.pid = conn, os.getpid()
        return conn

    @staticmethod
    def _set_wal(conn: sqlite3.Connection) -> None:
        # Switching a fresh file to WAL needs a write lock; retry briefly when another opener holds it.
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                conn.execute("pragma journal_mode = wal")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        with _corruption_as_store_error(self.path):
            conn.execute("begin immediate")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:  # SQLite may have rolled back already (a damaged page, say)
                    conn.execute("rollback")
                raise
            else:
                conn.execute("commit")

    def _read(self, sql: str, params: Iterable = ()) -> list[tuple]:
        conn = self._conn()
        with _corruption_as_store_error(self.path):
            return conn.execute(sql, params if isinstance(params, dict) else tuple(params)).fetchall()

    # ----------------------------------------------------------------- schema

    def schema_version(self) -> int:
        conn = self._conn()
        with _corruption_as_store_error(self.path):
            return self._version(conn)

    @staticmethod
    def _version(conn: sqlite3.Connection) -> int:
        exists = conn.execute("select 1 from sqlite_master where type='table' and name='schema_version'").fetchone()
        if not exists:
            return 0
        row = conn.execute("select max(version) from schema_version").fetchone()
        return row[0] or 0

    def _migrate(self, migrations: list[list[str]] | None = None) -> None:
        migrations = MIGRATIONS if migrations is None else migrations
        if self.schema_version() == len(migrations):
            return
        with self._write() as conn:  # re-read under the write lock: another process may have migrated
            conn.execute("create table if not exists schema_version (version integer not null, applied_at real not null)")
            version = self._version(conn)
            if version > len(migrations):
                raise StoreError(
                    f"{self.path} has schema version {version}, newer than this tunebench knows ({len(migrations)})",
                    "upgrade tunebench, or point --workspace at another directory"
                )
            for number, statements in enumerate(migrations[version:], start=version + 1):
                for statement in statements:
                    conn.execute(statement)
                conn.execute("insert into schema_version (version, applied_at) values (?, ?)", (number, time.time()))

    # ----------------------------------------------------------------- runs

    def _row_to_run(self, row: tuple) -> Run:
        values = list(row)
        values[20] = json.loads(values[20] or "{}")
        (rid, kind, name, state, priority, preset_yaml, created_at, started_at, finished_at, engine_pid, gpu,
         error, advice, parent_run, parent_checkpoint, step, total_steps, last_loss, best_eval_loss,
         best_eval_step, info, findings, worker_pid, stop_request, attempt, active_seconds, tags, note) = values
        return Run(rid, kind, name, state, priority, preset_yaml, created_at, started_at, finished_at,
                   engine_pid, gpu, error, advice, parent_run, parent_checkpoint, step, total_steps, last_loss,
                   best_eval_loss, best_eval_step, info, findings, worker_pid, stop_request, attempt, active_seconds,
                   _loads_tags(tags), note or "")

    def create_run(self, kind: str, name: str, preset_yaml: str, *, priority: int = 0,
                   parent_run: str | None = None, parent_checkpoint: int | None = None,
                   info: dict | None = None, run_id: str | None = None) -> Run:
        """A new `queued` run. A taken name gets a suffix (-2, -3, …) so names stay unique references."""
        for _ in range(50):
            now = time.time()
            rid = run_id or new_run_id(now)
            try:
                with self._write() as conn:
                    unique = self._free_name(conn, name)
                    conn.execute(
                        "insert into runs (id, kind, name, state, priority, preset_yaml, created_at, parent_run, "
                        "parent_checkpoint, info) values (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
                        (rid, kind, unique, priority, preset_yaml, now, parent_run, parent_checkpoint,
                         _dumps(info or {})),
                    )
                    self._record_run(conn, rid, create=True)  # the folder exists from the moment the run does
                    self._event(conn, rid, "info", f"queued ({kind} {unique})", None, now)
                return self.get_run(rid)
            except sqlite3.IntegrityError:
                if run_id is not None:
                    raise
                continue  # same-second id collision: draw another suffix
        raise StoreError("could not draw a unique run id")

    @staticmethod
    def _free_name(conn: sqlite3.Connection, name: str) -> str:
        taken = {r[0] for r in conn.execute("select name from runs where name = ? or name like ?", (name, f"{name}-%"))}
        if name not in taken:
            return name
        n = 2
        while f"{name}-{n}" in taken:
            n += 1
        return f"{name}-{n}"

    def get_run(self, run_id: str) -> Run | None:
        rows = self._read(f"select {_RUN_COLUMNS} from runs where id = ?", (run_id,))
        return self._row_to_run(rows[0]) if rows else None

    def list_runs(self, *, states: Iterable[str] | None = None, kind: str | None = None) -> list[Run]:
        """Newest first; optionally only some states or one kind."""
        sql, params = f"select {_RUN_COLUMNS} from runs where 1=1", []
        if states is not None:
            states = list(states)
            sql += f" and state in ({','.join('?' * len(states))})"
            params += states
        if kind is not None:
            sql += " and kind = ?"
            params.append(kind)
        sql += " order by created_at desc, rowid desc"
        return [self._row_to_run(r) for r in self._read(sql, params)]

    def queued_runs(self) -> list[Run]:
        """Queued runs in the order the engine takes them: priority first, then age."""
        rows = self._read(f"select {_RUN_COLUMNS} from runs where state = 'queued' order by priority desc, created_at, rowid")
        return [self._row_to_run(r) for r in rows]

    def count_runs(self, state: str | None = None) -> int:
        if state is None:
            return self._read("select count(*) from runs")[0][0]
        return self._read("select count(*) from runs where state = ?", (state,))[0][0]

    def resolve_run(self, ref: str, *, exact: bool = False) -> Run:
        """A run by id, name, or (unless `exact`) unique id or name prefix; RunNotFound says what matched."""
        ref = (ref or "").strip()
        if not ref:
            raise RunNotFound("no run given")
        run = self.get_run(ref)
        if run is not None:
            return run
        rows = self._read(f"select {_RUN_COLUMNS} from runs where name = ?", (ref,))
        if rows:
            return self._row_to_run(rows[0])
        if exact:
            raise RunNotFound(f"no run has the id or name {ref!r}", "`tunebench ls` lists the runs")
        escaped = ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        prefixes = [f"{escaped}%"] if ref.startswith("r-") else [f"{escaped}%", f"r-{escaped}%"]
        matches: dict[str, tuple] = {}
        for pattern in prefixes:
            for row in self._read(f"select {_RUN_COLUMNS} from runs where id like ? escape '\\' "
                                  "or name like ? escape '\\'", (pattern, pattern)):
                matches[row[0]] = row
        if len(matches) == 1:
            return self._row_to_run(next(iter(matches.values())))
        if not matches:
            raise RunNotFound(f"no run matches {ref!r}", "`tunebench ls` lists the runs")
        listed = ", ".join(f"{row[0]} ({row[2]})" for row in sorted(matches.values())[:8])
        raise AmbiguousRun(f"{ref!r} matches {len(matches)} runs: {listed}", "give more of the id")

    def update_run(self, run_id: str, **fields: Any) -> None:
        """Set plain columns (not the state: use set_state). `info` is merged, not replaced."""
        info = fields.pop("info", None)
        unknown = set(fields) - _RUN_UPDATABLE
        if unknown:
            raise ValueError(f"not updatable run fields: {sorted(unknown)}")
        with self._write() as conn:
            if fields:
                assignments = ", ".join(f"{key} = ?" for key in fields)
                conn.execute(f"update runs set {assignments} where id = ?", (*fields.values(), run_id))
            if info:
                self._merge_info(conn, run_id, info)
            if fields.keys() - {"engine_pid", "worker_pid"} or info:  # pids mean nothing to a rebuild
                self._record_run(conn, run_id)

    @staticmethod
    def _merge_info(conn: sqlite3.Connection, run_id: str, info: dict) -> None:
        row = conn.execute("select info from runs where id = ?", (run_id,)).fetchone()
        if row is None:
            return
        merged = json.loads(row[0] or "{}")
        merged.update(info)
        conn.execute("update runs set info = ? where id = ?", (_dumps(merged), run_id))

    def set_labels(self, run_id: str, *, add: Iterable[str] = (), remove: Iterable[str] = (),
                   note: str | None = None) -> Run:
        """Add and remove tags (each checked by check_tag) and, unless None, replace the note ("" clears it).
        Kept in run.json too, so a store rebuild keeps them."""
        add = [check_tag(tag) for tag in add]
        drop = {check_tag(tag) for tag in remove}
        with self._write() as conn:
            row = conn.execute("select tags from runs where id = ?", (run_id,)).fetchone()
            if row is None:
                raise RunNotFound(f"no run {run_id!r}", "`tunebench ls` lists the runs")
            tags = [tag for tag in _loads_tags(row[0]) if tag not in drop]
            tags += [tag for tag in dict.fromkeys(add) if tag not in tags]
            conn.execute("update runs set tags = ? where id = ?", (json.dumps(tags), run_id))
            if note is not None:
                conn.execute("update runs set note = ? where id = ?", (" ".join(note.split()), run_id))
            self._record_run(conn, run_id)
        return self.get_run(run_id)

    def set_state(self, run_id: str, state: str, *, error: str | None = None, advice: str | None = None,
                  expect: str | Iterable[str] | None = None) -> bool:
        """Move a run to `state` and record the transition as an event.

        With `expect`, the move happens only if the run is in one of those states (atomically) and
        the return value says whether it did — how the engine claims a queued run while a cancel
        may be racing it. Without it, an impossible transition raises InvalidTransition.
        """
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        expected = (expect,) if isinstance(expect, str) else (tuple(expect) if expect is not None else None)
        with self._write() as conn:
            row = conn.execute("select state from runs where id = ?", (run_id,)).fetchone()
            if row is None:
                if expected is not None:
                    return False
                raise RunNotFound(f"no run {run_id!r}")
            current = row[0]
            if expected is not None and current not in expected:
                return False
            if state not in TRANSITIONS[current]:
                if expected is not None:
                    return False
                raise InvalidTransition(f"run {run_id} cannot go from {current} to {state}")
            now = time.time()
            sets, params = ["state = ?"], [state]
            if current == "running":
                sets.append("active_seconds = active_seconds + max(0, ? - coalesce(started_at, ?))")
                params += [now, now]
            if state == "running":
                sets += ["started_at = ?", "finished_at = null", "stop_request = null", "error = null", "advice = null"]
                params.append(now)
            elif state == "queued":
                sets += ["finished_at = null", "stop_request = null", "error = null", "advice = null",
                         "engine_pid = null", "worker_pid = null", "attempt = attempt + 1"]
            else:
                sets += ["finished_at = ?", "error = ?", "advice = ?"]
                params += [now, error, advice]
            conn.execute(f"update runs set {', '.join(sets)} where id = ?", (*params, run_id))
            self._record_run(conn, run_id)
            text = f"{current} → {state}"
            if error:
                text += f": {error}"
            if advice:
                text += f"\n  → {advice}"
            self._event(conn, run_id, _STATE_LEVEL.get(state, "info"), text, None, now)
        return True

    def request_stop(self, run_id: str, reason: str) -> None:
        """Ask a running run to stop at its next step boundary (the sink reads it)."""
        with self._write() as conn:
            conn.execute("update runs set stop_request = ? where id = ?", (reason, run_id))

    def stop_requested(self, run_id: str) -> str | None:
        rows = self._read("select stop_request from runs where id = ?", (run_id,))
        return rows[0][0] if rows else None

    def delete_run(self, run_id: str) -> None:
        """The run's rows and everything hanging off them (files are the caller's: see jobs.control.remove)."""
        with self._write() as conn:
            conn.execute("delete from runs where id = ?", (run_id,))

    # ----------------------------------------------------------------- metrics

    def add_metrics(self, run_id: str, rows: list[tuple[int, str, float, float]]) -> None:
        """Insert a batch of (step, name, value, time) and keep the run's summary columns current."""
        if not rows:
            return
        with self._write() as conn:
            self._insert_metrics(conn, run_id, rows)
            self.journal(run_id, metric_records(rows))

    @staticmethod
    def _insert_metrics(conn: sqlite3.Connection, run_id: str, rows: list[tuple[int, str, float, float]]) -> None:
        conn.executemany(
            "insert into metrics (run_id, step, name, value, time) values (?, ?, ?, ?, ?)",
            [(run_id, int(step), name, None if value is None or (isinstance(value, float) and math.isnan(value))
              else float(value), t) for step, name, value, t in rows],
        )
        current = conn.execute("select step, best_eval_loss from runs where id = ?", (run_id,)).fetchone()
        if current is None:
            return
        step, best = current
        last_loss = None
        for row_step, name, value, _ in rows:
            step = max(step or 0, int(row_step))
            if name == "loss":
                last_loss = value
            elif name == "eval_loss" and _finite(value) and (best is None or value < best):
                best = value
                conn.execute("update runs set best_eval_step = ? where id = ?", (int(row_step), run_id))
        conn.execute("update runs set step = ?, best_eval_loss = ? where id = ?", (step, best, run_id))
        if last_loss is not None:
            value = None if isinstance(last_loss, float) and math.isnan(last_loss) else last_loss
            conn.execute("update runs set last_loss = ? where id = ?", (value, run_id))

    def metrics_since(self, run_id: str, after_id: int = 0, names: Iterable[str] | None = None) -> list[MetricRow]:
        """Metric rows newer than `after_id` (the id of the last row a reader has seen), oldest first."""
        sql = "select id, step, name, value, time from metrics where run_id = ? and id > ?"
        params: list[Any] = [run_id, after_id]
        if names is not None:
            names = list(names)
            sql += f" and name in ({','.join('?' * len(names))})"
            params += names
        sql += " order by id"
        return [MetricRow(i, s, n, _float_or_nan(v), t) for i, s, n, v, t in self._read(sql, params)]

    def metric_series(self, run_id: str, name: str, buckets: int | None = None) -> tuple[int, list[tuple[int, float, float]]]:
        """A metric's finite rows as plain (step, value, time) tuples, oldest first, with how many rows
        it has. With `buckets`, a long series comes back drawn small: its rows cut into that many
        consecutive id ranges, each giving its lowest and its highest row (a spike survives).

        The cut is made inside SQLite, one statement, each range read through the (run, metric)
        index: 50 000 rows never become Python tuples (Compare reads six such series at once)."""
        count, first, last = self._read("select count(*), min(id), max(id) from metrics where run_id = ? and name = ?",
                                        (run_id, name))[0]
        finite = "value is not null and abs(value) <= 1.7e308"
        if not count or buckets is None or count <= 2 * buckets:
            return count, self._read(f"select step, value, time from metrics where run_id = ? and name = ? and {finite} "
                                     "order by id", (run_id, name))
        width = -(-(last - first + 1) // buckets)
        pick = (f"select id from metrics where run_id = :run and name = :name and id >= lo and id < lo + :width "
                f"and {finite} order by value {{}}, id limit 1")
        rows = self._read(
            "with recursive edges(lo) as (select :first union all select lo + :width from edges where lo + :width <= :last) "
            f"select step, value, time from metrics where id in (select ({pick.format('asc')}) from edges "
            f"union select ({pick.format('desc')}) from edges) order by id",
            {"run": run_id, "name": name, "first": first, "last": last, "width": width})
        return count, rows

    def first_metric_time(self, run_id: str) -> float | None:
        rows = self._read("select time from metrics where run_id = ? order by id limit 1", (run_id,))
        return rows[0][0] if rows else None

    def metric_last(self, run_id: str, name: str) -> float | None:
        """The metric's last finite value (None without one)."""
        rows = self._read("select value from metrics where run_id = ? and name = ? and value is not null "
                          "and abs(value) <= 1.7e308 order by id desc limit 1", (run_id, name))
        return rows[0][0] if rows else None

    def metric_summary(self, run_id: str, name: str, *, higher_is_better: bool = False
                       ) -> tuple[float, float, int] | None:
        """(last value, best value, the best one's step) of a metric, NaN rows left out; None without rows."""
        last = self._read("select value from metrics where run_id = ? and name = ? and value is not null "
                          "order by id desc limit 1", (run_id, name))
        if not last:
            return None
        # SQLite takes a bare column (step) from the row that min() or max() picked.
        best = self._read(f"select {'max' if higher_is_better else 'min'}(value), step from metrics "
                          "where run_id = ? and name = ? and value is not null", (run_id, name))
        return last[0][0], best[0][0], best[0][1]

    def metric_names(self, run_id: str) -> list[str]:
        return [r[0] for r in self._read("select distinct name from metrics where run_id = ? order by name", (run_id,))]

    def delete_metrics_after(self, run_id: str, step: int) -> int:
        """Forget metrics past `step` (an abandoned attempt's, when a run resumes from an earlier checkpoint)."""
        with self._write() as conn:
            count = conn.execute("delete from metrics where run_id = ? and step > ?", (run_id, step)).rowcount
            self._recompute_summary(conn, run_id)
            self.journal(run_id, [{"type": "metrics_truncated", "after_step": int(step), "time": time.time()}])
        return count

    @staticmethod
    def _recompute_summary(conn: sqlite3.Connection, run_id: str) -> None:
        step = conn.execute("select coalesce(max(step), 0) from metrics where run_id = ?", (run_id,)).fetchone()[0]
        loss = conn.execute("select value from metrics where run_id = ? and name = 'loss' order by id desc limit 1",
                            (run_id,)).fetchone()
        best = conn.execute("select value, step from metrics where run_id = ? and name = 'eval_loss' and value is not null "
                            "order by value, step limit 1", (run_id,)).fetchone()
        conn.execute("update runs set step = ?, last_loss = ?, best_eval_loss = ?, best_eval_step = ? where id = ?",
                     (step, loss[0] if loss else None, best[0] if best else None, best[1] if best else None, run_id))

    # ----------------------------------------------------------------- events

    def _event(self, conn: sqlite3.Connection, run_id: str, level: str, text: str, step: int | None, now: float) -> None:
        conn.execute("insert into events (run_id, level, text, step, time) values (?, ?, ?, ?, ?)",
                     (run_id, level, text, step, now))
        self.journal(run_id, [event_record(level, text, step, now)])

    def add_event(self, run_id: str, level: str, text: str, step: int | None = None) -> None:
        with self._write() as conn:
            self._event(conn, run_id, level, text, step, time.time())

    def events_since(self, run_id: str, after_id: int = 0) -> list[EventRow]:
        rows = self._read("select id, level, text, step, time from events where run_id = ? and id > ? order by id",
                          (run_id, after_id))
        return [EventRow(*row) for row in rows]

    # ----------------------------------------------------------------- checkpoints

    def add_checkpoint(self, run_id: str, step: int, path: str | os.PathLike, metrics: dict | None = None,
                       size_bytes: int | None = None) -> None:
        """Record a checkpoint; the same step again (a resumed run saving over it) replaces the row."""
        now = time.time()
        with self._write() as conn:
            conn.execute(
                "insert into checkpoints (run_id, step, path, metrics, size_bytes, created_at) values (?, ?, ?, ?, ?, ?) "
                "on conflict (run_id, step) do update set path = excluded.path, metrics = excluded.metrics, "
                "size_bytes = excluded.size_bytes, created_at = excluded.created_at",
                (run_id, int(step), str(path), _dumps(metrics or {}), size_bytes, now),
            )
            self.journal(run_id, [checkpoint_record(step, path, metrics, size_bytes, now)])

    def list_checkpoints(self, run_id: str) -> list[CheckpointRow]:
        """By step; `best` marks the one with the lowest eval_loss in its metrics."""
        rows = [
            CheckpointRow(step, path, json.loads(metrics or "{}"), size, created, bool(keep), False)
            for step, path, metrics, size, created, keep in self._read(
                "select step, path, metrics, size_bytes, created_at, keep from checkpoints where run_id = ? order by step",
                (run_id,))
        ]
        scored = [r for r in rows if _finite(r.metrics.get("eval_loss"))]
        if scored:
            min(scored, key=lambda r: (r.metrics["eval_loss"], r.step)).best = True
        return rows

    def set_checkpoint_keep(self, run_id: str, step: int, keep: bool) -> None:
        with self._write() as conn:
            conn.execute("update checkpoints set keep = ? where run_id = ? and step = ?", (int(bool(keep)), run_id, step))

    def delete_checkpoint(self, run_id: str, step: int, *, remove_files: bool = True) -> None:
        """Remove a checkpoint from disk and from the store.

        Crash-safe order: the folder is first renamed out of the `checkpoint-N` pattern (atomic; from
        then on nothing loads it), then the row goes, then the files. A crash leaves at worst a
        `.deleting-*` folder, which `sweep_deleted_checkpoints` removes.
        """
        rows = self._read("select path from checkpoints where run_id = ? and step = ?", (run_id, step))
        path = Path(rows[0][0]) if rows else None
        trash = None
        if remove_files and path is not None and path.exists():
            trash = path.with_name(f".deleting-{path.name}-{secrets.token_hex(3)}")
            os.replace(path, trash)
        with self._write() as conn:
            conn.execute("delete from checkpoints where run_id = ? and step = ?", (run_id, step))
            self.journal(run_id, [{"type": "checkpoint_removed", "step": int(step), "time": time.time()}])
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    @staticmethod
    def sweep_deleted_checkpoints(run_dir: str | os.PathLike) -> None:
        """Finish deletions a crash interrupted (see delete_checkpoint)."""
        folder = Path(run_dir) / "checkpoints"
        if folder.is_dir():
            for child in folder.glob(".deleting-*"):
                shutil.rmtree(child, ignore_errors=True)

    # ----------------------------------------------------------------- findings

    def add_finding(self, run_id: str, finding: dict) -> dict | None:
        """Record a doctor finding, or update the run's finding of the same rule and key
        (finding_key): a condition that lasts, or comes back in a resumed attempt, stays one finding
        with its latest figures and its first step_start. Returns the finding it updated, None when new."""
        now = time.time()
        rule, key = finding.get("rule"), finding_key(finding)
        with self._write() as conn:
            row = conn.execute("select id, payload from findings where run_id = ? and rule is ? and key = ?",
                               (run_id, rule, key)).fetchone()
            previous = _loads_finding(row[1]) if row else None
            stored = merge_finding(previous, finding, now)
            if row is None:
                conn.execute("insert into findings (run_id, rule, key, severity, payload, time, updated_at) "
                             "values (?, ?, ?, ?, ?, ?, ?)",
                             (run_id, rule, key, finding.get("severity"), _dumps(stored), now, now))
                conn.execute("update runs set findings = findings + 1 where id = ?", (run_id,))
            else:
                conn.execute("update findings set severity = ?, payload = ?, updated_at = ? where id = ?",
                             (finding.get("severity"), _dumps(stored), now, row[0]))
            self.journal(run_id, [{"type": "finding", "finding": finding, "time": now}])
        return previous

    def findings(self, run_id: str) -> list[dict]:
        return [json.loads(p) for (p,) in self._read("select payload from findings where run_id = ? order by id", (run_id,))]

    def findings_updated_at(self, run_id: str) -> float | None:
        """When the run's findings last changed: a poller compares it, as an update leaves their count as it was."""
        return self._read("select max(updated_at) from findings where run_id = ?", (run_id,))[0][0]

    # ----------------------------------------------------------------- transcripts and evaluations

    def add_transcript(self, run_id: str | None, kind: str, payload: Any) -> int:
        """A chat or probe transcript (any JSON-able payload); run_id None for one not tied to a run."""
        now = time.time()
        with self._write() as conn:
            cursor = conn.execute("insert into transcripts (run_id, kind, payload, created_at) values (?, ?, ?, ?)",
                                  (run_id, kind, _dumps(payload), now))
            if run_id is not None:
                self.journal(run_id, [{"type": "transcript", "kind": kind, "payload": payload, "time": now}])
            return cursor.lastrowid

    def transcripts(self, run_id: str | None, kind: str | None = None) -> list[TranscriptRow]:
        """A run's transcripts, oldest first; run_id None lists every transcript."""
        sql, params = "select id, run_id, kind, payload, created_at from transcripts where 1=1", []
        if run_id is not None:
            sql += " and run_id = ?"
            params.append(run_id)
        if kind is not None:
            sql += " and kind = ?"
            params.append(kind)
        rows = self._read(sql + " order by id", params)
        return [TranscriptRow(i, r, k, json.loads(p), c) for i, r, k, p, c in rows]

    def add_eval_result(self, run_id: str | None, payload: Any) -> int:
        now = time.time()
        with self._write() as conn:
            cursor = conn.execute("insert into eval_results (run_id, payload, created_at) values (?, ?, ?)",
                                  (run_id, _dumps(payload), now))
            if run_id is not None:
                self.journal(run_id, [{"type": "eval_result", "payload": payload, "time": now}])
            return cursor.lastrowid

    def eval_results(self, run_id: str | None) -> list[EvalResultRow]:
        """A run's evaluation results, oldest first; run_id None lists all of them."""
        if run_id is None:
            rows = self._read("select id, run_id, payload, created_at from eval_results order by id")
        else:
            rows = self._read("select id, run_id, payload, created_at from eval_results where run_id = ? order by id",
                              (run_id,))
        return [EvalResultRow(i, r, json.loads(p), c) for i, r, p, c in rows]


_STORES: dict[Path, tuple[Store, int]] = {}
_STORES_LOCK = threading.Lock()


def open_store(workspace) -> Store:
    """The process-wide Store of a workspace (a Workspace or a path to its root).

    A workspace deleted and made anew at the same path gets a fresh Store, not one that still
    holds the deleted database open.
    """
    root = Path(workspace.root if isinstance(workspace, Workspace) else workspace).resolve()
    with _STORES_LOCK:
        cached = _STORES.get(root)
        try:
            inode = (root / "tunebench.db").stat().st_ino
        except FileNotFoundError:
            inode = None
        if cached is not None and cached[1] == inode:
            return cached[0]
        root.mkdir(parents=True, exist_ok=True)
        store = Store(root / "tunebench.db")
        _STORES[root] = (store, store.path.stat().st_ino)
        return store
