"""One job, in its own process: `python -m jobs.worker RUN_ID --workspace ROOT [--engine-pid PID]`.

The engine claims the run (queued → running) and starts this process with CUDA_VISIBLE_DEVICES
pinned and stdout/stderr going to runs/<id>/run.log. It dispatches on the frozen preset's kind —
train → engine.train.train, eval → engine.evaluate.run_eval, merge → engine.merge.run_merge — with
a DbSink (the store) and a TextLogSink (run.log), and records how the run ended. When the process exits, all its (GPU) memory goes with it.

SIGTERM, SIGINT and SIGHUP do not kill it: they make the sink answer "interrupt", so training
saves a checkpoint at the next step boundary and the run ends `interrupted`.

A run store that becomes unreadable mid-run (StoreError) stops the job the same way; how the run
ended is then recorded in its folder alone (run.json, history.jsonl), the log says what to do, and
`tunebench store rebuild` brings the run back from there.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from jobs.db_sink import DbSink
from jobs.store import (Run, Store, StoreError, append_journal, event_record, open_store, run_record,
                        write_run_record)
from jobs.workspace import Workspace, resolve_workspace

DRY_RUN_TICK = 0.1

if TYPE_CHECKING:
    from engine.outcome import JobOutcome
    from engine.sink import Sink


# --------------------------------------------------------------------------- job bodies
# Each returns the engine's JobOutcome (engine.outcome, imported inside the bodies: jobs/ loads the
# engine only to run a job); settle() turns it into the run's final state.


def dry_run(run: Run, sink: Sink) -> JobOutcome:
    """The whole queue and worker path without training: one event, metrics, then done.

    `info.dry_run_seconds` keeps it "running" that long, emitting a `dry_run_tick` metric (its value
    is the wall time it was written) every 0.1 s and honouring stop requests like training does.
    """
    from engine.outcome import JobOutcome

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
            return JobOutcome.stopped(reason)
        if step < ticks:
            time.sleep(max(0.0, started + step * seconds / ticks - time.monotonic()))
    return JobOutcome("completed")


def _load_frozen(run: Run, ws: Workspace):
    from presets import load_preset_text

    return load_preset_text(run.preset_yaml, str(ws.run_dir(run.id) / "preset.yaml"))


def train_job(run: Run, ws: Workspace, store: Store, sink: Sink) -> JobOutcome:
    """A single-process preset trains here; a multi-process one runs as `accelerate launch` of
    engine.dist_entry, whose launcher passes rank 0's records to this sink and its stop requests
    (cancel, the SIGTERM interrupt, a dead engine) to every rank."""
    from engine.callback import PARK_AT_STEP_ENV
    from engine.distributed.launcher import launch
    from engine.train import train

    if run.info.get("park_at_step") is not None:
        os.environ[PARK_AT_STEP_ENV] = str(run.info["park_at_step"])  # read by every rank's callback
    from jobs.targets import resolve_train_preset

    preset = resolve_train_preset(_load_frozen(run, ws), ws, store=store)
    resume_from = run.info.get("resume_from")
    if resume_from:
        sink.event("info", f"resuming from {resume_from}", run.info.get("resume_step"))
    body = train if preset.distributed.strategy == "single" else launch
    return body(preset, ws.run_dir(run.id), sink, resume_from=resume_from)


def eval_job(run: Run, ws: Workspace, store: Store, sink: Sink) -> JobOutcome:
    from engine.evaluate import run_eval
    from jobs.targets import eval_output_dir, resolve_eval_preset

    preset = _load_frozen(run, ws)
    out_dir = eval_output_dir(ws, preset, run.id)
    outcome = run_eval(resolve_eval_preset(preset, ws, store=store), out_dir, sink)
    if outcome.status == "completed":
        store.add_eval_result(run.id, {"target_run": preset.run, "checkpoint": preset.checkpoint,
                                       "out_dir": str(out_dir), "result": outcome.details})
        final = ws.run_dir(preset.run) / "final" if preset.run and preset.checkpoint is None else None
        if final is not None and final.is_dir():
            from engine.card import write_model_card

            write_model_card(final, run_dir=final.parent)  # the result's card shows its latest evaluation
        store.update_run(run.id, info={"out_dir": str(out_dir)})
    return outcome


def merge_job(run: Run, ws: Workspace, store: Store, sink: Sink) -> JobOutcome:
    from engine.merge import run_merge
    from jobs.targets import merge_output_dir, resolve_merge_preset

    preset = _load_frozen(run, ws)
    out_dir = merge_output_dir(ws, preset, run.id)
    outcome = run_merge(resolve_merge_preset(preset, ws, store=store), out_dir, sink)
    if outcome.status == "completed":
        from engine.card import write_model_card

        write_model_card(out_dir, run_dir=ws.run_dir(preset.run) if preset.run else None, merge=outcome.details)
        store.update_run(run.id, info={"out_dir": str(out_dir), "result": outcome.details})
    return outcome


JOBS = {"train": train_job, "eval": eval_job, "merge": merge_job}


def settle(run: Run, store: Store, sink: Sink, outcome: JobOutcome) -> JobOutcome:
    """The run's final state (completed, failed, cancelled or interrupted) from how its job ended."""
    from engine.outcome import JobOutcome

    if outcome.status in ("completed", "failed", "cancelled"):
        return outcome
    if outcome.status == "interrupted":
        if outcome.stop_reason == "disk_full":  # the job's message names the full filesystem and a checkpoint's size
            return JobOutcome("interrupted", error=outcome.error, advice=f"{outcome.advice} (`tunebench resume {run.id}`)")
        if run.kind != "train" or run.dry_run:
            return JobOutcome("interrupted", error="the engine stopped before the job finished",
                              advice=f"`tunebench retry {run.id}` runs it again")
        checkpoints = store.list_checkpoints(run.id)
        if checkpoints:
            step = checkpoints[-1].step
            return JobOutcome("interrupted", error=f"the engine stopped; last checkpoint at step {step}",
                              advice=f"`tunebench resume {run.id}` continues from step {step}")
        return JobOutcome("interrupted", error="the engine stopped before the first checkpoint",
                          advice=f"`tunebench retry {run.id}` starts it again")
    if outcome.stop_reason == "early_stop":
        sink.event("info", "stopped early: the eval loss stopped improving")
        return JobOutcome("completed")
    findings = store.findings(run.id)
    advice = next((f.get("advice") for f in reversed(findings) if f.get("stop") and f.get("advice")), None)
    return JobOutcome("failed", error=f"stopped by the doctor ({outcome.stop_reason or outcome.status})", advice=advice)


# --------------------------------------------------------------------------- the process


def run_job(ws: Workspace, run_id: str, engine_pid: int | None = None) -> int:
    try:
        store = open_store(ws)
        run = store.get_run(run_id)
    except StoreError as exc:  # nothing ran; run.json still says running, which a rebuild makes interrupted
        print(f"error: {exc}", flush=True)
        return 1
    if run is None or run.state != "running":
        print(f"run {run_id}: {'removed' if run is None else run.state}, not running; nothing to do", flush=True)
        return 0
    from engine.sink import MultiSink, TextLogSink

    recorder = DbSink(store, run_id, parent_pid=engine_pid)
    # The store gets the records; stdout (run.log) gets the story in plain lines.
    sink = MultiSink(recorder, TextLogSink(sys.stdout))

    def interrupt(signum, frame):
        recorder.interrupt()  # only a flag: printing here could re-enter a write in progress

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, interrupt)
    print(f"=== run {run_id} ({run.kind}{', dry run' if run.dry_run else ''}), attempt {run.attempt}, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
    log_path = ws.run_dir(run_id) / "run.log"
    outcome: JobOutcome | None = None
    lost: StoreError | None = None
    try:
        outcome = dry_run(run, sink) if run.dry_run else JOBS[run.kind](run, ws, store, sink)
        outcome = settle(run, store, sink, outcome)
    except StoreError as exc:
        lost = exc
    except Exception as exc:
        outcome = _failure(exc, log_path)
    finally:
        try:
            sink.close()
        except Exception:
            traceback.print_exc()
    lost = lost or recorder.lost
    if lost is None:
        try:
            store.set_state(run_id, outcome.status, error=outcome.error, advice=outcome.advice, expect="running")
        except StoreError as exc:
            lost = exc
    if lost is not None:
        return _end_without_store(ws, run, outcome, lost)
    print(f"=== run {run_id}: {outcome.status}" + (f": {outcome.error}" if outcome.error else ""), flush=True)
    return 0


def _end_without_store(ws: Workspace, run: Run, outcome: JobOutcome | None, lost: StoreError) -> int:
    """The store cannot be written: record how the run ended in its folder, where a rebuild reads it."""
    from engine.artifacts import RunArtifacts

    folder = ws.run_dir(run.id)
    if outcome is not None and outcome.status in ("completed", "failed", "cancelled"):
        state, error, advice = outcome.status, outcome.error, outcome.advice
    else:  # stopped because the store went, or by the engine: resumable like any interrupted run
        latest = RunArtifacts(folder).checkpoints() if run.kind == "train" and not run.dry_run else {}
        error = "the run store became unreadable while this run ran"
        if latest:
            step = max(latest)
            error += f"; last checkpoint at step {step}"
            advice = f"`tunebench store rebuild`, then `tunebench resume {run.id}` continues from step {step}"
        else:
            advice = f"`tunebench store rebuild`, then `tunebench retry {run.id}` runs it again"
        state = "interrupted"
    now = time.time()
    record = run_record(run)
    record.update(state=state, error=error, advice=advice, finished_at=now,
                  active_seconds=run.active_seconds + max(0.0, now - (run.started_at or now)))
    text = f"running → {state}" + (f": {error}" if error else "") + (f"\n  → {advice}" if advice else "")
    try:
        append_journal(folder, [event_record("warning" if state != "completed" else "info", text, None, now)])
        write_run_record(folder, record)
        where = f"recorded in {folder / 'run.json'} only"
    except OSError as exc:
        where = f"and it could not be recorded in {folder} either ({exc})"
    print(f"error: {lost}", flush=True)
    print(f"=== run {run.id}: {state}" + (f": {error}" if error else "") + f" ({where}: the run store could not "
          f"be written; `tunebench store rebuild` brings the run back from its folder)", flush=True)
    return 1


def _failure(exc: Exception, log_path: Path) -> JobOutcome:
    """A job that raised: a TunebenchError says what to do; anything else is a bug, traceback in the log."""
    from engine.outcome import JobOutcome
    from presets import PresetError, TunebenchError

    if isinstance(exc, PresetError):
        print(f"error: {exc}", flush=True)
        return JobOutcome("failed", error=str(exc), advice="the frozen preset no longer validates: submit the preset again")
    if isinstance(exc, TunebenchError):
        print(f"error: {exc}", flush=True)
        return JobOutcome("failed", error=exc.message, advice=exc.advice)
    traceback.print_exc()
    sys.stdout.flush()
    last = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return JobOutcome("failed", error=last, advice=f"the traceback is in {log_path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.worker")
    parser.add_argument("run_id")
    parser.add_argument("--workspace", "-w")
    parser.add_argument("--engine-pid", type=int, default=None)
    args = parser.parse_args(argv)
    return run_job(resolve_workspace(args.workspace), args.run_id, args.engine_pid)


if __name__ == "__main__":
    sys.exit(main())
