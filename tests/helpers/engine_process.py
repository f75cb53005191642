"""Driving a real engine subprocess from a test: wait for what it does, never race it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from jobs.engine_process import engine_status
from jobs.store import open_store

REPO_ROOT = Path(__file__).resolve().parents[2]


def wait_for(predicate, timeout: float, what: str):
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def wait_state(ws, run_id: str, states, timeout: float = 60):
    states = (states,) if isinstance(states, str) else tuple(states)
    store = open_store(ws)
    return wait_for(lambda: (run := store.get_run(run_id)) is not None and run.state in states and run,
                    timeout, f"run {run_id} to be {'/'.join(states)} (it is {store.get_run(run_id).state})")


def wait_parked(ws, run_id: str, timeout: float = 300) -> int:
    """Wait until a run submitted with park_at_step=N has finished step N and waits there; returns N."""
    store = open_store(ws)
    event = wait_for(lambda: next((e for e in store.events_since(run_id) if "(test hook)" in e.text), None),
                     timeout, f"run {run_id} to park")
    return int(event.step)


def kill_engine_group(ws) -> None:
    status = engine_status(ws)
    if status.running and status.pid:
        try:
            os.killpg(status.pid, signal.SIGKILL)  # the engine leads its own session: this takes its jobs too
        except ProcessLookupError:
            pass
        wait_for(lambda: not engine_status(ws).running, 10, "the killed engine's lock to go")
