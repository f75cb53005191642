"""One job, in its own process: `python -m jobs.worker RUN_ID --workspace ROOT [--engine-pid PID]`.

The engine claims the run (queued → running) and starts this process with CUDA_VISIBLE_DEVICES
pinned and stdout/stderr going to runs/<id>/run.log. It dispatches on the frozen preset's kind —
train → engine.train.train, eval → engine.evaluate.run_eval, merge → engine.merge.run_merge — with
a DbSink, and records how the run ended. When the process exits, all its (GPU) memory goes with it.

SIGTERM, SIGINT and SIGHUP do not kill it: they make the sink answer "interrupt", so training
saves a checkpoint at the next step boundary and the run ends `interrupted`.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
import traceback
from pathlib import Path

from jobs.db_sink import DbSink
from jobs.store import Run, Store, open_store
from jobs.workspace import Workspace, resolve_workspace

DRY_RUN_TICK = 0.1


class Outcome:
    """How a job ended: the final state, and for failures what happened and what to do."""

    def __init__(self, state: str, error: str | None = None, advice: str | None = None):
        self.state, self.error, self.advice = state, error, advice


# --------------------------------------------------------------------------- job bodies


def dry_run(run: Run, sink: DbSink) -> Outcome:
    """The whole queue and worker path without training: one event, metrics, then done.

    `info.dry_run_seconds` keeps it "running" that long, emitting a `dry_run_tick` metric (its value
    is the wall time it was written) every 0.1 s and honouring stop requests like training does.
    """
    seconds = float(run.info.get("dry_run_seconds") or 0.0)
    ticks = max(1, int(seconds / DRY_RUN_TICK))
    sink.run_started({"total_steps": ticks, "method": "dry-run", "device": "none"})
    sink.event("info", "dry run: nothing is trained", 0)
    started = time.monotonic()
    for step in range(1, ticks + 1):
        sink.metrics(step, {"dry_run_tick": time.time()})
        reason = sink.should_stop()
        if reason:
            sink.event("info", f"dry run stopped ({reason}) at step {step}", step)
            return Outcome("cancelled" if reason == "cancel" else "interrupted",
                           None if reason == "cancel" else "the engine stopped during a dry run")
        if step < ticks:
            time.sleep(max(0.0, started + step * seconds / ticks - time.monotonic()))
    return Outcome("completed")


def _load_frozen(run: Run, ws: Workspace):
    from presets import load_preset_text

    return load_preset_text(run.preset_yaml, str(ws.run_dir(run.id) / "preset.yaml"))


def train_job(run: Run, ws: Workspace, store: Store, sink: DbSink) -> Outcome:
    from engine.train import train

    preset = _load_frozen(run, ws)
    resume_from = run.info.get("resume_from")
    if resume_from:
        sink.event("info", f"resuming from {resume_from}", run.info.get("resume_step"))
    if preset.distributed.strategy != "single":
        result = _distributed_train(run, ws, preset, resume_from, sink)
    else:
        result = train(preset, ws.run_dir(run.id), sink, resume_from=resume_from)
    status = getattr(result, "status", "completed")
    reason = getattr(result, "stop_reason", None) or getattr(result, "reason", None) or sink.last_stop_reason
    if status == "completed":
        return Outcome("completed")
    if status == "cancelled" or (status == "stopped" and reason == "cancel"):
        return Outcome("cancelled")
    if status == "interrupted" or (status == "stopped" and reason == "interrupt"):
        return _interrupted(run, store, "the engine stopped")
    if reason == "early_stop":
        sink.event("info", "stopped early: the eval loss stopped improving")
        return Outcome("completed")
    findings = store.findings(run.id)
    advice = next((f.get("advice") for f in reversed(findings) if f.get("stop") and f.get("advice")), None)
    return Outcome("failed", f"stopped by the doctor ({reason or status})", advice)


def _distributed_train(run: Run, ws: Workspace, preset, resume_from, sink: DbSink):
    """A multi-process preset runs as `accelerate launch` of engine.dist_entry (engine.distributed):
    launch() passes rank 0's metrics, events and checkpoints to this sink and its stop requests
    (cancel, the SIGTERM interrupt, a dead engine) to every rank."""
    from types import SimpleNamespace

    from engine.distributed import launch
    from engine.errors import EngineError

    launched = launch(preset, ws.run_dir(run.id), sink, resume_from=resume_from)
    if launched.status == "failed":
        raise EngineError(launched.error or "the distributed job failed", launched.advice)
    return SimpleNamespace(status=launched.status, stop_reason=launched.result.get("stop_reason"))


def _interrupted(run: Run, store: Store, why: str) -> Outcome:
    checkpoints = store.list_checkpoints(run.id)
    if checkpoints:
        step = checkpoints[-1].step
        return Outcome("interrupted", f"{why}; last checkpoint at step {step}",
                       f"`tunebench resume {run.id}` continues from step {step}")
    return Outcome("interrupted", f"{why} before the first checkpoint", f"`tunebench retry {run.id}` starts it again")


def eval_job(run: Run, ws: Workspace, store: Store, sink: DbSink) -> Outcome:
    from engine.evaluate import run_eval
    from jobs.targets import eval_output_dir, resolve_eval_preset

    preset = _load_frozen(run, ws)
    out_dir = eval_output_dir(ws, preset, run.id)
    result = run_eval(resolve_eval_preset(preset, ws, store=store), out_dir, sink)
    if isinstance(result, dict) and result.get("status") == "cancelled":
        return _stopped(run, store, result.get("reason"))
    store.add_eval_result(run.id, {"target_run": preset.run, "checkpoint": preset.checkpoint,
                                   "out_dir": str(out_dir), "result": result})
    store.update_run(run.id, info={"out_dir": str(out_dir)})
    return Outcome("completed")


def _stopped(run: Run, store: Store, reason: str | None) -> Outcome:
    """An eval or merge that honoured a stop request."""
    if reason == "cancel":
        return Outcome("cancelled")
    return Outcome("interrupted", "the engine stopped before the job finished",
                   f"`tunebench retry {run.id}` runs it again")


def merge_job(run: Run, ws: Workspace, store: Store, sink: DbSink) -> Outcome:
    from engine.merge import run_merge
    from jobs.targets import merge_output_dir, resolve_merge_preset

    preset = _load_frozen(run, ws)
    out_dir = merge_output_dir(ws, preset, run.id)
    result = run_merge(resolve_merge_preset(preset, ws, store=store), out_dir, sink)
    if isinstance(result, dict) and result.get("status") == "cancelled":
        return _stopped(run, store, result.get("reason"))
    store.update_run(run.id, info={"out_dir": str(out_dir), "result": result})
    return Outcome("completed")


JOBS = {"train": train_job, "eval": eval_job, "merge": merge_job}


# --------------------------------------------------------------------------- the process


def run_job(ws: Workspace, run_id: str, engine_pid: int | None = None) -> int:
    store = open_store(ws)
    run = store.get_run(run_id)
    if run is None or run.state != "running":
        print(f"run {run_id}: {'removed' if run is None else run.state}, not running; nothing to do", flush=True)
        return 0
    sink = DbSink(store, run_id, parent_pid=engine_pid)

    def interrupt(signum, frame):
        sink.interrupt()  # only a flag: printing here could re-enter a write in progress

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, interrupt)
    print(f"=== run {run_id} ({run.kind}{', dry run' if run.dry_run else ''}), attempt {run.attempt}, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
    log_path = ws.run_dir(run_id) / "run.log"
    try:
        outcome = dry_run(run, sink) if run.dry_run else JOBS[run.kind](run, ws, store, sink)
    except Exception as exc:
        outcome = _failure(exc, log_path) or _stopped(run, store, getattr(exc, "reason", None))
    finally:
        try:
            sink.close()
        except Exception:
            traceback.print_exc()
    store.set_state(run_id, outcome.state, error=outcome.error, advice=outcome.advice, expect="running")
    print(f"=== run {run_id}: {outcome.state}" + (f": {outcome.error}" if outcome.error else ""), flush=True)
    return 0


def _failure(exc: Exception, log_path: Path) -> Outcome | None:
    from engine.errors import EngineError
    from presets import PresetError

    if isinstance(exc, EngineError) and getattr(exc, "reason", None) in ("cancel", "interrupt"):
        return None  # a merge that stopped on request (engine.merge.MergeStopped): not a failure
    if isinstance(exc, EngineError):
        print(f"error: {exc}", flush=True)
        return Outcome("failed", exc.message, exc.advice)
    if isinstance(exc, PresetError):
        print(f"error: {exc}", flush=True)
        return Outcome("failed", str(exc), "the frozen preset no longer validates: submit the preset again")
    traceback.print_exc()
    sys.stdout.flush()
    last = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return Outcome("failed", last, f"the traceback is in {log_path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.worker")
    parser.add_argument("run_id")
    parser.add_argument("--workspace", "-w")
    parser.add_argument("--engine-pid", type=int, default=None)
    args = parser.parse_args(argv)
    return run_job(resolve_workspace(args.workspace), args.run_id, args.engine_pid)


if __name__ == "__main__":
    sys.exit(main())
