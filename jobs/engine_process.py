"""The engine: a Huey consumer that runs the workspace's jobs, one at a time per GPU.

    tunebench engine start    detached (own session, engine.pid, engine.log); survives the terminal
    tunebench engine run      the same in the foreground
    tunebench engine stop     SIGTERM: running jobs checkpoint and end `interrupted`, then it exits
    tunebench engine status   EngineStatus(running, pid, gpus, current_run, queue_length)

One Huey worker thread per visible GPU (one on a CPU-only machine). A worker takes a run id off
the queue, asks the GPU scheduler (jobs/gpus.py) for the GPUs the run needs (one; N for a
distributed preset; a CPU slot on a CPU-only machine), claims the run (queued → running,
atomically, so a racing cancel either wins or becomes a stop request) and runs its body in a fresh
`python -m jobs.worker RUN_ID` process pinned with CUDA_VISIBLE_DEVICES: when that process exits,
all of its GPU memory is released. The engine itself never imports torch.

"Is an engine running?" is answered by an flock on `engine.lock`, which the kernel releases however
the engine dies, so a stale pid file never fools it. At start, runs left `running` by an engine
that died are marked `interrupted` (with their last checkpoint), and queued runs whose task the
dead engine had taken off the queue are enqueued again. The same happens whenever the consumer
refuses a queue entry (not tunebench's JSON, see jobs/queue.py): nothing runs from it, and a queued
run it may have stood for is not left waiting.

The engine stops taking jobs and exits when its workspace is removed or replaced (engine.lock's
inode changes) and likewise when tunebench.db is deleted or replaced under it: it would otherwise
go on writing into a file no one else can see. `tunebench store rebuild` then recovers the runs.

engine.log (the detached engine's stdout and stderr) is rotated at each start once it passes
LOG_MAX_BYTES: engine.log.1 … engine.log.LOG_BACKUPS keep the older ones.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from jobs.gpus import GpuRequestError, GpuScheduler, cuda_visible_devices, gpus_needed
from jobs.queue import JobQueue, QueueMessageError, consumer_options
from jobs.store import Store, open_store
from jobs.workspace import PRIVATE_UMASK, Workspace, exposure_warning, resolve_workspace
from presets.errors import TunebenchError

log = logging.getLogger("tunebench.engine")

LOCK_NAME = "engine.lock"
INFO_NAME = "engine.json"
START_TIMEOUT = 30.0
# How long a job may take to write its checkpoint and exit after SIGTERM before it is killed.
JOB_STOP_TIMEOUT = 600.0
# SIGTERM, SIGINT and SIGHUP all stop the engine once the running jobs have checkpointed.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
HEALTH_CHECK_S = 5.0  # how often dead Huey worker threads are replaced
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3


class EngineProcessError(TunebenchError):
    """The engine process cannot be started or stopped; the message says why and where to look."""


@dataclass
class EngineStatus:
    running: bool
    pid: int | None = None
    gpus: list[str] = field(default_factory=list)
    current_run: str | None = None
    queue_length: int = 0
    current_runs: list[str] = field(default_factory=list)  # one per busy GPU; current_run is the first
    started_at: float | None = None

    def describe(self) -> str:
        if not self.running:
            return f"engine not running; {self.queue_length} queued"
        devices = ", ".join(f"GPU {g}" for g in self.gpus) if self.gpus else "CPU"
        busy = ", ".join(self.current_runs) if self.current_runs else "idle"
        return f"engine running (pid {self.pid}, {devices}): {busy}; {self.queue_length} queued"


# --------------------------------------------------------------------------- GPUs


def visible_gpus() -> list[str]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES when set, else every device NVML sees.

    NVML (nvidia-ml-py) rather than torch: the engine stays light and never holds a CUDA context.
    """
    from engine.hardware import visible_gpu_ids  # stdlib only: no torch

    return visible_gpu_ids()


# --------------------------------------------------------------------------- lock and status


def _lock_path(ws: Workspace) -> Path:
    return ws.root / LOCK_NAME


def _info_path(ws: Workspace) -> Path:
    return ws.root / INFO_NAME


def _engine_alive(ws: Workspace) -> bool:
    path = _lock_path(ws)
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def engine_running(ws: Workspace) -> bool:
    """Does an engine hold the workspace's lock (without reading the store)?"""
    return _engine_alive(ws)


def _read_info(ws: Workspace) -> dict:
    try:
        return json.loads(_info_path(ws).read_text())
    except (OSError, ValueError):
        return {}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def engine_status(ws: Workspace, store: Store | None = None) -> EngineStatus:
    store = store or open_store(ws)
    queued = store.count_runs("queued")
    if not _engine_alive(ws):
        return EngineStatus(False, queue_length=queued)
    info = _read_info(ws)
    pid = info.get("pid")
    current = [r.id for r in store.list_runs(states=["running"]) if pid is None or r.engine_pid == pid]
    current.reverse()  # oldest first
    return EngineStatus(True, pid, list(info.get("gpus", [])), current[0] if current else None, queued, current,
                        info.get("started_at"))


# --------------------------------------------------------------------------- start / stop

# The folder our packages live in (the checkout, or site-packages).
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def python_module(module: str, *args: str, env: dict | None = None) -> tuple[list[str], dict]:
    """Command and environment that run `python -m module` with our packages, whatever the cwd.

    `-P` keeps the cwd off sys.path: a workspace holds a `presets/` folder, which would otherwise
    shadow the `presets` package as a namespace package.
    """
    env = dict(os.environ if env is None else env)
    paths = [str(PACKAGE_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(PACKAGE_ROOT)]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return [sys.executable, "-P", "-m", module, *args], env


_launched: list[subprocess.Popen] = []  # engines this process started, reaped when they exit


def start_engine(ws: Workspace, *, timeout: float = START_TIMEOUT) -> EngineStatus:
    """Start a detached engine for the workspace (if none runs) and wait until it holds its lock."""
    ws.ensure()
    for proc in list(_launched):
        if proc.poll() is not None:
            _launched.remove(proc)
    status = engine_status(ws)
    if status.running:
        return status
    command, env = python_module("jobs.engine_process", "run", "--workspace", str(ws.root))
    rotate_log(ws.engine_log, LOG_MAX_BYTES, LOG_BACKUPS)
    with open(ws.engine_log, "ab") as log_file:
        # Its own session: no controlling terminal, so closing the SSH session sends it no SIGHUP.
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True, cwd=str(ws.root), env=env)
    _launched.append(proc)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _engine_alive(ws) and _read_info(ws).get("pid"):
            return engine_status(ws)
        if proc.poll() is not None and not _engine_alive(ws):
            if proc.returncode == EXIT_ALREADY_RUNNING:
                continue  # another submitter started one a moment ago: it will show up
            raise EngineProcessError(f"the engine exited at start (code {proc.returncode}); see {ws.engine_log}:\n"
                              + _tail(ws.engine_log))
        time.sleep(0.02)
    raise EngineProcessError(f"the engine did not come up within {timeout:.0f} s; see {ws.engine_log}")


def stop_engine(ws: Workspace, *, timeout: float = JOB_STOP_TIMEOUT) -> bool:
    """SIGTERM the engine and wait until it has exited (its jobs checkpoint first). False if none ran."""
    if not _engine_alive(ws):
        return False
    pid = _read_info(ws).get("pid")
    if not pid:
        raise EngineProcessError(f"an engine holds {_lock_path(ws)} but wrote no pid to {_info_path(ws)}")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _engine_alive(ws):
            return True
        time.sleep(0.05)
    raise EngineProcessError(f"the engine (pid {pid}) is still stopping after {timeout:.0f} s; see {ws.engine_log}")


def rotate_log(path: Path, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS) -> bool:
    """If `path` is over `max_bytes`, move it to path.1 (path.1 to path.2, …; the oldest beyond
    `backups` is dropped). True if it was rotated.

    Only before the engine opens it: a running engine would go on writing to the moved file.
    """
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    if backups < 1:
        path.unlink(missing_ok=True)
        return True

    def backup(index: int) -> Path:
        return path.with_name(f"{path.name}.{index}")

    for index in range(backups - 1, 0, -1):
        if backup(index).exists():
            os.replace(backup(index), backup(index + 1))  # replaces (drops) the oldest
    os.replace(path, backup(1))
    return True


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --------------------------------------------------------------------------- the engine

EXIT_ALREADY_RUNNING = 3
EXIT_STORE_UNUSABLE = 4


def _process_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        try:
            import psutil

            return psutil.Process(pid).cmdline()
        except Exception:
            return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def is_job_process(pid: int | None, run_id: str) -> bool:
    """Is `pid` a live `jobs.worker` process of this run (and not a reused pid)?"""
    if not pid:
        return False
    cmdline = _process_cmdline(pid)
    return bool(cmdline) and "jobs.worker" in cmdline and run_id in cmdline


def last_checkpoint(store: Store, ws: Workspace, run_id: str) -> tuple[int, str] | None:
    """(step, path) of the run's latest complete checkpoint, from the store or, failing that, the disk."""
    from engine.artifacts import RunArtifacts  # pure Python: reads the run folder layout

    rows = {row.step: row.path for row in store.list_checkpoints(run_id) if Path(row.path).exists()}
    rows.update({step: str(path) for step, path in RunArtifacts(ws.run_dir(run_id)).checkpoints().items()})
    if not rows:
        return None
    step = max(rows)
    return step, rows[step]


class Engine:
    def __init__(self, ws: Workspace):
        self.ws = ws.ensure()
        self.store = open_store(ws)
        self.queue = JobQueue(ws, executor=self.execute, on_refused=self._entry_refused)
        self.gpus = visible_gpus()
        self.scheduler = GpuScheduler(self.gpus, cpu_slots=1)
        self.workers = max(1, len(self.gpus))
        self.stopping = threading.Event()
        self.children: dict[str, subprocess.Popen] = {}
        self._children_lock = threading.Lock()
        self._in_hand: set[str] = set()  # runs some worker thread is executing (under _children_lock)
        self._lock_fd: int | None = None
        self._replaced_checked = 0.0
        self._store_inode = self._inode(ws.store_db)  # open_store above made sure it exists
        self.replaced: str | None = None  # what workspace_replaced found, for the log line

    # ----------------------------------------------------------------- lifetime

    def acquire(self, wait: float = 3.0) -> bool:
        """Take the workspace's engine lock (a status probe may hold it for a moment)."""
        fd = os.open(_lock_path(self.ws), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    return False
                time.sleep(0.02)
        self._lock_fd = fd
        info = {"pid": os.getpid(), "gpus": self.gpus, "started_at": time.time(), "log": str(self.ws.engine_log)}
        _write_atomic(_info_path(self.ws), json.dumps(info))
        _write_atomic(self.ws.engine_pid, f"{os.getpid()}\n")
        return True

    @staticmethod
    def _inode(path: Path) -> int | None:
        try:
            return os.stat(path).st_ino
        except FileNotFoundError:
            return None

    def workspace_replaced(self) -> bool:
        """Was our workspace, or its run store, deleted (or deleted and made anew) under us?
        Checked at most once a second; `replaced` says which."""
        now = time.monotonic()
        if self._lock_fd is None or now - self._replaced_checked < 1.0:
            return False
        self._replaced_checked = now
        if self._inode(_lock_path(self.ws)) != os.fstat(self._lock_fd).st_ino:
            self.replaced = f"the workspace {self.ws.root} was removed or replaced"
            return True
        inode = self._inode(self.ws.store_db)
        if inode != self._store_inode:
            self.replaced = (f"the run store {self.ws.store_db} was {'deleted' if inode is None else 'replaced'}; "
                             "`tunebench store check` and `tunebench store rebuild` recover the runs from their folders")
            return True
        return False

    def release(self) -> None:
        for path in (self.ws.engine_pid, _info_path(self.ws)):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    def run(self) -> int:
        if not self.acquire():
            log.error("an engine is already running for %s", self.ws.root)
            return EXIT_ALREADY_RUNNING
        try:
            log.info("engine %s for %s on %s", os.getpid(), self.ws.root,
                     ", ".join(f"GPU {g}" for g in self.gpus) if self.gpus else "CPU")
            warning = exposure_warning(self.ws)
            if warning:
                log.warning("%s", warning)
            self.recover()
            self.consume()
            log.info("engine stopped")
            return 0
        finally:
            self.release()

    # ----------------------------------------------------------------- recovery

    def recover(self) -> None:
        """Settle what a previous engine left behind (it died: we hold the lock now)."""
        for run in self.store.list_runs(states=["running"]):
            if is_job_process(run.worker_pid, run.id):
                # An orphaned job of a killed engine: let it checkpoint and end itself.
                log.warning("run %s: its job process %s outlived the engine; interrupting it", run.id, run.worker_pid)
                self._terminate(run.worker_pid, run.id)
            run = self.store.get_run(run.id)
            if run is not None and run.state == "running":
                self._mark_interrupted(run.id, "the engine stopped while this run was running")
        self._requeue_lost_runs("taken by a stopped engine, or its entry was unreadable")
        from jobs.checkpoints import repair_workspace

        # A checkpoint delete cut short by a crash is finished (or rolled back) before any job runs.
        for note in repair_workspace(self.ws):
            log.info("checkpoint repair: %s", note)

    def _requeue_lost_runs(self, why: str) -> None:
        """Enqueue again the runs the store holds `queued` that are neither in the queue nor in hand."""
        pending = set(self.queue.pending_run_ids())
        with self._children_lock:
            in_hand = set(self._in_hand)
        for run in reversed(self.store.queued_runs()):
            if run.id not in pending and run.id not in in_hand:
                log.info("run %s: queued but not in the queue (%s); enqueued again", run.id, why)
                self.queue.enqueue(run.id, run.priority)

    def _entry_refused(self, error: QueueMessageError) -> None:
        """The consumer took an entry off the queue and refused it (the queue logged it; nothing ran).
        It may have been a run's only entry (a queue.db row written by an older tunebench, or
        damaged): such a run is enqueued again rather than left waiting for ever."""
        try:
            self._requeue_lost_runs(f"its entry was refused{f' (it named {error.run_id})' if error.run_id else ''}")
        except Exception:
            log.exception("could not look for runs a refused queue entry left stranded")

    def _terminate(self, pid: int, run_id: str) -> None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + JOB_STOP_TIMEOUT
        while is_job_process(pid, run_id) and time.monotonic() < deadline:
            time.sleep(0.1)
        if is_job_process(pid, run_id):
            os.kill(pid, signal.SIGKILL)

    def _mark_interrupted(self, run_id: str, why: str) -> None:
        checkpoint = last_checkpoint(self.store, self.ws, run_id)
        if checkpoint is None:
            advice = f"no checkpoint was saved: `tunebench retry {run_id}` starts it again"
        else:
            step, path = checkpoint
            if step not in {row.step for row in self.store.list_checkpoints(run_id)}:
                self.store.add_checkpoint(run_id, step, path, {})  # written, but the job died before reporting it
            why += f"; last checkpoint at step {step}"
            advice = f"`tunebench resume {run_id}` continues from step {step}"
        self.store.set_state(run_id, "interrupted", error=why, advice=advice, expect="running")

    # ----------------------------------------------------------------- jobs

    def _gpus_needed(self, run) -> int:
        if run.dry_run:
            return 1 if self.gpus else 0
        from presets import load_preset_text

        return gpus_needed(load_preset_text(run.preset_yaml, run.id), machine_has_gpus=bool(self.gpus))

    def execute(self, run_id: str) -> None:
        """The body of the Huey task: get the run its GPUs, claim it, run its job process to the end."""
        with self._children_lock:
            if run_id in self._in_hand:  # a second entry for the same run (re-enqueued while taken)
                log.info("run %s: already in hand; its duplicate queue entry skipped", run_id)
                return
            self._in_hand.add(run_id)
        try:
            self._execute(run_id)
        finally:
            with self._children_lock:
                self._in_hand.discard(run_id)

    def _execute(self, run_id: str) -> None:
        run = self.store.get_run(run_id)
        if run is None or run.state != "queued":
            log.info("run %s: %s; skipped", run_id, "removed" if run is None else run.state)
            return
        if self.stopping.is_set():
            self.queue.enqueue(run_id, run.priority)  # for the next engine
            return
        try:
            count = self._gpus_needed(run)
            self.scheduler.check(count)
        except (GpuRequestError, ValueError) as exc:  # ValueError: a frozen preset that no longer validates
            self.store.set_state(run_id, "failed", error=str(exc), expect="queued")
            return

        def given_up() -> bool:
            current = self.store.get_run(run_id)
            return self.stopping.is_set() or current is None or current.state != "queued"

        gpus = self.scheduler.acquire(run_id, count, priority=run.priority, cancelled=given_up, poll_s=0.1)
        if gpus is None:
            if self.stopping.is_set():
                self.queue.enqueue(run_id, run.priority)
            return
        try:
            if self.store.set_state(run_id, "running", expect="queued"):
                try:
                    self._run_job(run_id, gpus)
                except Exception as exc:  # e.g. the job process could not be started
                    log.exception("run %s: the engine could not run the job", run_id)
                    self.store.set_state(run_id, "failed", error=f"the engine could not run the job: {exc}",
                                         advice=f"see {self.ws.engine_log}", expect="running")
            else:
                log.info("run %s: cancelled before it started", run_id)
        finally:
            self.scheduler.release(run_id)

    def _run_job(self, run_id: str, gpus: list[str]) -> None:
        self.store.update_run(run_id, engine_pid=os.getpid(), gpu=",".join(gpus) or "cpu")
        run_dir = self.ws.run_dir(run_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        command, env = python_module("jobs.worker", run_id, "--workspace", str(self.ws.root),
                                     "--engine-pid", str(os.getpid()))
        env["PYTHONUNBUFFERED"] = "1"
        if self.gpus:  # a CPU-only machine keeps its environment as it is
            env["CUDA_VISIBLE_DEVICES"] = cuda_visible_devices(gpus)
        log.info("run %s: starting on %s", run_id, f"GPU {','.join(gpus)}" if gpus else "CPU")
        with open(run_dir / "run.log", "ab") as log_file:
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                    env=env, cwd=str(run_dir), close_fds=True)
        with self._children_lock:
            self.children[run_id] = proc
        self.store.update_run(run_id, worker_pid=proc.pid)
        if self.stopping.is_set():  # the stop came while we were spawning: it did not reach this child
            proc.send_signal(signal.SIGTERM)
        code = proc.wait()
        with self._children_lock:
            self.children.pop(run_id, None)
        self._settle(run_id, code)

    def _settle(self, run_id: str, code: int) -> None:
        """A job process exited: a run it left `running` ended abnormally."""
        run = self.store.get_run(run_id)
        if run is None or run.state != "running":
            log.info("run %s: %s", run_id, run.state if run else "removed")
            return
        log_path = self.ws.run_dir(run_id) / "run.log"
        if self.stopping.is_set() or code in (-signal.SIGTERM, -signal.SIGKILL):
            self._mark_interrupted(run_id, f"the job process ended without finishing (exit code {code})")
        else:
            self.store.set_state(run_id, "failed", error=f"the job process exited with code {code} before it finished",
                                 advice=f"see {log_path}", expect="running")
        log.warning("run %s: job process exited with code %s", run_id, code)

    def interrupt_children(self) -> None:
        with self._children_lock:
            children = list(self.children.items())
        for run_id, proc in children:
            if proc.poll() is None:
                log.info("run %s: asking the job to checkpoint and stop", run_id)
                proc.send_signal(signal.SIGTERM)

    # ----------------------------------------------------------------- the consumer

    def consume(self) -> None:
        """Run Huey's consumer until a stop signal, or until our workspace is removed or replaced;
        then ask the running jobs to checkpoint and stop, and wait for them (JOB_STOP_TIMEOUT)."""
        stop_signals = StopSignals()
        try:
            consumer = self.queue.huey.create_consumer(**consumer_options(self.workers, JOB_STOP_TIMEOUT))
            consumer.start()
            stop_signals.install()  # again: the consumer put in its own (SIGHUP would restart it)
            next_health_check = time.monotonic() + HEALTH_CHECK_S
            while True:
                signum = stop_signals.wait(0.1)
                if signum is not None:
                    log.info("received %s: stopping", signal.Signals(signum).name)
                    break
                if self.workspace_replaced():
                    log.warning("%s: taking no more jobs; stopping", self.replaced)
                    break
                if time.monotonic() >= next_health_check:
                    next_health_check = time.monotonic() + HEALTH_CHECK_S
                    consumer.check_worker_health()
            self.stopping.set()
            self.interrupt_children()
            consumer.stop(graceful=True)  # waits for the worker threads, at most JOB_STOP_TIMEOUT
            with self._children_lock:
                stuck = list(self.children.values())
            for proc in stuck:  # did not stop in time: the next engine marks its run interrupted
                proc.kill()
        finally:
            stop_signals.close()


class StopSignals:
    """The engine's stop signals (STOP_SIGNALS), read from a wakeup pipe.

    Python writes every signal number to the pipe whichever Python handler is in place, so a
    signal that comes while Huey's consumer has its own handlers installed (it sets them as it
    starts) is not lost. The handlers here do nothing but keep the default action (death) away.
    """

    def __init__(self):
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)  # set_wakeup_fd needs it
        self._previous_fd = signal.set_wakeup_fd(self._write)
        self._previous_handlers = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
        self.install()

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, _noted_in_the_pipe)

    def wait(self, timeout: float) -> int | None:
        """The first stop signal that comes within `timeout` seconds, else None."""
        ready, _, _ = select.select([self._read], [], [], timeout)
        if not ready:
            return None
        received = os.read(self._read, 64)
        return next((signum for signum in received if signum in STOP_SIGNALS), None)

    def close(self) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        os.close(self._read)
        os.close(self._write)


def _noted_in_the_pipe(signum, frame) -> None:
    pass


# --------------------------------------------------------------------------- entry point


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_engine(ws: Workspace) -> int:
    """Run the engine in this process until SIGTERM/SIGINT/SIGHUP (foreground `tunebench engine run`)."""
    configure_logging()
    try:
        engine = Engine(ws)
    except TunebenchError as exc:  # a damaged or lost run store: a clear line, no traceback
        log.error("%s", exc)
        return EXIT_STORE_UNUSABLE
    return engine.run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.engine_process")
    parser.add_argument("action", choices=["run"])
    parser.add_argument("--workspace", "-w")
    args = parser.parse_args(argv)
    os.umask(PRIVATE_UMASK)  # everything the engine writes is its owner's alone (see jobs/workspace.py)
    return run_engine(resolve_workspace(args.workspace))


if __name__ == "__main__":
    sys.exit(main())
