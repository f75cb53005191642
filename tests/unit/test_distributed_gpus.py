"""The engine's GPU scheduler (jobs/gpus.py): N GPUs per job, pinned, shared between queued jobs."""

from __future__ import annotations

import threading

import pytest
import yaml

from jobs.gpus import GpuRequestError, GpuScheduler, cuda_visible_devices, gpus_needed
from presets.loader import load_preset_text

WAIT = 30.0  # bound on every wait for another thread: generous, never reached when things work


class Waiter:
    """acquire() in a thread; `.gpus` once it returns."""

    def __init__(self, scheduler: GpuScheduler, run_id: str, count: int, **kwargs):
        self.gpus = "pending"
        self.thread = threading.Thread(target=self._run, args=(scheduler, run_id, count), kwargs=kwargs, daemon=True)
        self.thread.start()

    def _run(self, scheduler, run_id, count, **kwargs):
        self.gpus = scheduler.acquire(run_id, count, poll_s=0.01, **kwargs)

    def result(self):
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "acquire() did not return"
        return self.gpus


def wait_until_waiting(scheduler: GpuScheduler, *run_ids: str) -> None:
    """Bounded poll until the runs are queued in the scheduler (the threads reached acquire)."""
    event = threading.Event()
    for _ in range(int(WAIT / 0.01)):
        if all(r in scheduler.waiting() for r in run_ids):
            return
        event.wait(0.01)
    raise AssertionError(f"{run_ids} never started waiting: {scheduler.waiting()}")


def test_two_one_gpu_jobs_run_side_by_side():
    scheduler = GpuScheduler(["0", "1"])
    first = scheduler.try_acquire("a", 1)
    second = scheduler.try_acquire("b", 1)
    assert first == ["0"] and second == ["1"]
    assert cuda_visible_devices(first) == "0" and scheduler.free() == []
    assert scheduler.held() == {"a": ["0"], "b": ["1"]}
    assert scheduler.try_acquire("c", 1) is None  # nothing left, and nothing left queued
    assert scheduler.waiting() == []
    scheduler.release("a")
    assert scheduler.try_acquire("c", 1) == ["0"]


def test_a_multi_gpu_job_waits_for_all_its_gpus():
    scheduler = GpuScheduler(["0", "1", "2", "3"])
    assert scheduler.try_acquire("small", 1) == ["0"]
    big = Waiter(scheduler, "big", 4)
    wait_until_waiting(scheduler, "big")
    assert scheduler.held() == {"small": ["0"]}
    scheduler.release("small")
    assert big.result() == ["0", "1", "2", "3"]
    assert cuda_visible_devices(big.gpus) == "0,1,2,3"


def test_a_waiting_job_is_not_overtaken_by_smaller_ones():
    scheduler = GpuScheduler(["0", "1"])
    assert scheduler.try_acquire("running", 1) == ["0"]
    big = Waiter(scheduler, "big", 2)
    wait_until_waiting(scheduler, "big")
    # GPU 1 is free, but taking it would starve the 2-GPU job behind a stream of 1-GPU jobs.
    small = Waiter(scheduler, "small", 1)
    wait_until_waiting(scheduler, "big", "small")
    assert scheduler.waiting() == ["big", "small"]
    scheduler.release("running")
    assert big.result() == ["0", "1"]
    assert scheduler.waiting() == ["small"]
    scheduler.release("big")
    assert small.result() == ["0"]


def test_higher_priority_is_served_first():
    scheduler = GpuScheduler(["0"])
    assert scheduler.try_acquire("running", 1) == ["0"]
    low = Waiter(scheduler, "low", 1, priority=0)
    wait_until_waiting(scheduler, "low")
    high = Waiter(scheduler, "high", 1, priority=5)
    wait_until_waiting(scheduler, "low", "high")
    assert scheduler.waiting() == ["high", "low"]
    scheduler.release("running")
    assert high.result() == ["0"]
    scheduler.release("high")
    assert low.result() == ["0"]


def test_a_request_that_can_never_fit_is_refused_at_once():
    scheduler = GpuScheduler(["0", "1"])
    with pytest.raises(GpuRequestError, match="needs 4 GPUs and this machine has 2 GPU") as info:
        scheduler.acquire("huge", 4)
    assert "num_processes to at most 2" in str(info.value)
    assert scheduler.waiting() == []
    with pytest.raises(GpuRequestError, match="no GPU"):
        GpuScheduler([]).acquire("x", 1)


def test_cancel_and_timeout_withdraw_the_request():
    scheduler = GpuScheduler(["0"])
    assert scheduler.try_acquire("running", 1) == ["0"]
    cancel = threading.Event()
    waiter = Waiter(scheduler, "cancelled", 1, cancelled=cancel.is_set)
    wait_until_waiting(scheduler, "cancelled")
    cancel.set()
    assert waiter.result() is None
    assert scheduler.waiting() == []
    assert scheduler.acquire("impatient", 1, timeout=0.05, poll_s=0.01) is None
    scheduler.release("running")
    assert scheduler.free() == ["0"]


def test_cpu_only_machine_runs_one_job_at_a_time():
    scheduler = GpuScheduler([], cpu_slots=1)
    assert scheduler.try_acquire("a", 0) == []
    assert scheduler.try_acquire("b", 0) is None
    waiter = Waiter(scheduler, "b", 0)
    wait_until_waiting(scheduler, "b")
    scheduler.release("a")
    assert waiter.result() == []
    assert scheduler.held() == {"b": []}


def test_a_run_asks_once():
    scheduler = GpuScheduler(["0", "1"])
    scheduler.try_acquire("a", 1)
    with pytest.raises(ValueError, match="already holds"):
        scheduler.try_acquire("a", 1)
    scheduler.release("never-held")  # harmless


def test_many_threads_never_share_a_gpu():
    scheduler = GpuScheduler(["0", "1", "2"])
    in_use: set[str] = set()
    lock = threading.Lock()
    clashes = []

    def job(index: int):
        count = 1 + index % 2
        gpus = scheduler.acquire(f"job-{index}", count, poll_s=0.01)
        with lock:
            if in_use & set(gpus):
                clashes.append((index, gpus))
            in_use.update(gpus)
        with lock:
            in_use.difference_update(gpus)
        scheduler.release(f"job-{index}")

    threads = [threading.Thread(target=job, args=(i,)) for i in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert not any(t.is_alive() for t in threads)
    assert clashes == []
    assert scheduler.free() == ["0", "1", "2"] and scheduler.held() == {}


def preset(distributed: dict):
    data = {"name": "p", "model": {"path": "/m"}, "data": {"train_files": ["/d.json"]}, "distributed": distributed}
    return load_preset_text(yaml.safe_dump(data), "p.yaml")


def test_gpus_needed():
    assert gpus_needed(preset({}), machine_has_gpus=True) == 1
    assert gpus_needed(preset({"strategy": "ddp", "num_processes": 4}), machine_has_gpus=True) == 4
    assert gpus_needed(preset({"strategy": "ddp", "num_processes": 4}), machine_has_gpus=False) == 0
    merge = load_preset_text("kind: merge\nname: m\nadapter: /a\n", "m.yaml")
    assert gpus_needed(merge, machine_has_gpus=True) == 1
