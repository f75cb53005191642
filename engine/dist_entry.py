"""One rank of a distributed run: `accelerate launch … -m engine.dist_entry --run-dir DIR`.

engine.distributed.launcher.launch() starts this on every rank (launch.sh in the run folder shows
the exact command). Each rank loads the frozen preset from the run folder and calls
engine.train.train with a RankSink. Rank 0 is the main process: train() writes the run's files
there, metrics.jsonl among them, which launch() replays into the job's sink (the store). The other
ranks report nothing and write their output to rank-<n>.log in the run folder.

Stopping: each rank's sink answers `should_stop()` for itself: rank 0 from the stop request that
launch() writes (engine.distributed.messages.request_stop) and from the liveness of launch()'s
process; every rank from SIGTERM / SIGINT / SIGHUP. The engine's callback agrees on one decision
across ranks (engine.distributed.rank.agree_on_stop) at each step end, so every rank stops at the
same step boundary and the checkpoint, which all ranks write together, is complete.

How the job ended is left in dist-result.json for launch() to read: rank 0 writes it, or the first
rank that fails.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from dataclasses import fields
from pathlib import Path

from engine.distributed.messages import read_stop_request, write_result
from engine.distributed.rank import pid_alive
from engine.errors import EngineError
from engine.sink import Sink

STOP_POLL_S = 0.25  # how often rank 0 looks at the stop file and the supervisor


def rank_info() -> tuple[int, int]:
    """(global rank, world size) from the launcher's environment."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


class RankSink(Sink):
    """A rank's sink: records nothing itself (rank 0's train() writes metrics.jsonl, which launch()
    passes on) and answers should_stop for this rank alone; the ranks agree in the engine's callback
    (engine.distributed.rank.agree_on_stop)."""

    def __init__(self, run_dir: Path, *, is_main: bool, supervisor_pid: int | None = None, poll_s: float = STOP_POLL_S):
        self.run_dir = Path(run_dir)
        self.is_main = is_main
        self.supervisor_pid = supervisor_pid
        self.poll_s = poll_s
        self.signalled: str | None = None
        self._latched: str | None = None
        self._checked = 0.0

    def on_signal(self, signum, _frame) -> None:
        # A signal only sets a flag: the rank stops with the others at the next step boundary.
        self.signalled = "interrupt"

    def should_stop(self):
        if self.signalled:
            return self.signalled
        if not self.is_main:
            return None
        now = time.monotonic()
        if self._latched is None and now - self._checked >= self.poll_s:
            self._checked = now
            self._latched = read_stop_request(self.run_dir)
            if self._latched is None and self.supervisor_pid is not None and not pid_alive(self.supervisor_pid):
                self._latched = "interrupt"  # whoever launched us is gone: checkpoint and stop
        return self._latched


def _redirect_output(log_file: Path) -> None:
    """Send this process's stdout and stderr (Python's and native code's) to `log_file`."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _result_payload(result) -> dict:
    """The TrainResult's plain fields (the in-memory model stays behind)."""
    payload = {}
    for item in fields(result):
        value = getattr(result, item.name)
        if isinstance(value, Path):
            value = str(value)
        if value is None or isinstance(value, (str, int, float, bool, dict)):
            payload[item.name] = value
    return payload


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.dist_entry")
    parser.add_argument("--run-dir", required=True, help="the run folder (holds preset.yaml)")
    parser.add_argument("--resume-from", help="checkpoint to resume from")
    parser.add_argument("--supervisor-pid", type=int, help="stop (interrupt) when this process is gone")
    args = parser.parse_args(argv)

    run_dir = Path(args.run_dir)
    rank, world = rank_info()
    is_main = rank == 0
    if not is_main:
        _redirect_output(run_dir / f"rank-{rank}.log")
    print(f"=== rank {rank} of {world} (pid {os.getpid()}, {time.strftime('%Y-%m-%d %H:%M:%S')})", flush=True)

    sink = RankSink(run_dir, is_main=is_main, supervisor_pid=args.supervisor_pid)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, sink.on_signal)

    code = 0
    try:
        from engine.artifacts import RunArtifacts
        from engine.train import train

        preset = RunArtifacts(run_dir).load_preset()
        result = train(preset, run_dir, sink, resume_from=args.resume_from)
        if is_main:
            write_result(run_dir, {"status": result.status, "result": _result_payload(result),
                                   "error": result.error, "advice": result.advice})
    except EngineError as exc:
        print(f"error: {exc}", flush=True)
        write_result(run_dir, {"status": "failed", "error": exc.message, "advice": exc.advice, "rank": rank}, first_only=True)
        code = 1
    except BaseException as exc:
        traceback.print_exc()
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        where = "" if is_main else f" (rank {rank}: see rank-{rank}.log)"
        write_result(run_dir, {"status": "failed", "error": last + where, "advice": "read run.log and the rank-<n>.log files in the run folder", "rank": rank},
                     first_only=True)
        code = 1
    finally:
        _leave_process_group()
    return code


def _leave_process_group() -> None:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:
        pass  # leaving is best effort: the process ends right after


if __name__ == "__main__":
    sys.exit(main())
