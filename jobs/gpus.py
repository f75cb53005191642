"""GPU scheduling: a job asks for N GPUs and starts when N are free; the engine pins them.

`GpuScheduler` is the engine's book of which run holds which GPU. Pure Python and thread-safe:
each engine worker thread calls `acquire()` for its run before starting the job process (it
blocks until the GPUs are free), pins the returned ids with CUDA_VISIBLE_DEVICES, records them in
`runs.gpu` (the Runs screen shows them), and calls `release()` when the job process has exited.

Order: waiting runs are served by priority (higher first), then in the order they asked. A run
that does not fit yet holds back the runs behind it, even small ones that would fit: otherwise a
stream of 1-GPU jobs could starve a 4-GPU job forever. Two 1-GPU jobs on a 2-GPU box run side by
side. A request for more GPUs than the box has is refused at once (GpuRequestError), never queued.

A job that needs no GPU (every job on a CPU-only machine) takes one of `cpu_slots` instead.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from typing import Callable, Sequence

from presets.errors import TunebenchError


class GpuRequestError(TunebenchError, ValueError):
    """A request that can never be granted on this machine; the message says what to change."""


@dataclass(frozen=True)
class _Request:
    run_id: str
    count: int
    priority: int
    seq: int

    @property
    def order(self) -> tuple[int, int]:
        return (-self.priority, self.seq)


def gpus_needed(preset, *, machine_has_gpus: bool) -> int:
    """GPUs a job of this preset holds on this node: 0 on a CPU-only machine, else its processes per
    node for a distributed train preset, else one."""
    if not machine_has_gpus:
        return 0
    distributed = getattr(preset, "distributed", None)
    if distributed is not None and distributed.strategy != "single":
        return distributed.num_processes
    return 1


def cuda_visible_devices(gpu_ids: Sequence[str]) -> str:
    """The CUDA_VISIBLE_DEVICES value that pins a job to `gpu_ids` (an empty string hides all GPUs)."""
    return ",".join(gpu_ids)


class GpuScheduler:
    def __init__(self, gpu_ids: Sequence[str], *, cpu_slots: int = 1):
        if len(set(gpu_ids)) != len(gpu_ids):
            raise ValueError(f"duplicate GPU ids in {list(gpu_ids)}")
        self.gpu_ids = [str(g) for g in gpu_ids]
        self.cpu_slots = cpu_slots
        self._held: dict[str, list[str]] = {}  # run id -> its GPUs ([] for a CPU slot)
        self._waiting: list[_Request] = []
        self._granted: dict[str, list[str]] = {}  # decided but not yet picked up by the waiting thread
        self._seq = itertools.count()
        self._changed = threading.Condition()

    # ----------------------------------------------------------------- queries

    def free(self) -> list[str]:
        with self._changed:
            return self._free()

    def held(self) -> dict[str, list[str]]:
        """Run id -> the GPUs it holds (an empty list: a CPU slot)."""
        with self._changed:
            return {run: list(gpus) for run, gpus in {**self._held, **self._granted}.items()}

    def waiting(self) -> list[str]:
        """Run ids waiting for GPUs, in the order they will be served."""
        with self._changed:
            return [r.run_id for r in sorted(self._waiting, key=lambda r: r.order)]

    def check(self, count: int) -> None:
        """GpuRequestError when `count` GPUs can never be granted here."""
        if count < 0:
            raise GpuRequestError(f"a job cannot ask for {count} GPUs")
        if count > len(self.gpu_ids):
            have = f"{len(self.gpu_ids)} GPU(s) ({', '.join(self.gpu_ids)})" if self.gpu_ids else "no GPU"
            raise GpuRequestError(
                f"the job needs {count} GPUs and this machine has {have}",
                f"lower distributed.num_processes to at most {len(self.gpu_ids)}, or run it on a larger node"
            )

    # ----------------------------------------------------------------- acquire / release

    def acquire(
        self,
        run_id: str,
        count: int,
        *,
        priority: int = 0,
        timeout: float | None = None,
        cancelled: Callable[[], bool] | None = None,
        poll_s: float = 0.5,
    ) -> list[str] | None:
        """Block until `count` GPUs are this run's; return their ids ([] for a CPU slot).

        None when `timeout` passes or `cancelled()` turns true first (it is asked every `poll_s`);
        the request is withdrawn then. GpuRequestError for a request that can never fit.
        """
        self.check(count)
        with self._changed:
            if run_id in self._held or run_id in self._granted or any(r.run_id == run_id for r in self._waiting):
                raise ValueError(f"run {run_id} already holds or waits for GPUs")
            request = _Request(run_id, count, priority, next(self._seq))
            self._waiting.append(request)
            self._grant()
            waited = 0.0
            while run_id not in self._granted:
                if cancelled is not None and cancelled():
                    self._withdraw(request)
                    return None
                if timeout is not None and waited >= timeout:
                    self._withdraw(request)
                    return None
                step = poll_s if timeout is None else min(poll_s, timeout - waited)
                self._changed.wait(step)
                waited += step
            gpus = self._granted.pop(run_id)
            self._held[run_id] = gpus
            return list(gpus)

    def try_acquire(self, run_id: str, count: int, *, priority: int = 0) -> list[str] | None:
        """acquire() without waiting: the GPUs now, or None (nothing is left queued)."""
        return self.acquire(run_id, count, priority=priority, timeout=0)

    def release(self, run_id: str) -> None:
        """Give back what the run holds (nothing happens for a run that holds nothing)."""
        with self._changed:
            self._held.pop(run_id, None)
            self._grant()
            self._changed.notify_all()

    # ----------------------------------------------------------------- internals (lock held)

    def _busy(self) -> set[str]:
        return {g for gpus in itertools.chain(self._held.values(), self._granted.values()) for g in gpus}

    def _free(self) -> list[str]:
        busy = self._busy()
        return [g for g in self.gpu_ids if g not in busy]

    def _cpu_jobs(self) -> int:
        return sum(1 for gpus in itertools.chain(self._held.values(), self._granted.values()) if not gpus)

    def _withdraw(self, request: _Request) -> None:
        if request in self._waiting:
            self._waiting.remove(request)
        # Granted in the same instant it gave up: the GPUs go back to the pool.
        self._granted.pop(request.run_id, None)
        self._grant()
        self._changed.notify_all()

    def _grant(self) -> None:
        """Serve waiting requests in order; stop at the first that does not fit (no overtaking)."""
        granted_any = False
        for request in sorted(self._waiting, key=lambda r: r.order):
            if request.count == 0:
                if self._cpu_jobs() >= self.cpu_slots:
                    break
                gpus: list[str] = []
            else:
                free = self._free()
                if len(free) < request.count:
                    break
                gpus = free[: request.count]
            self._waiting.remove(request)
            self._granted[request.run_id] = gpus
            granted_any = True
        if granted_any:
            self._changed.notify_all()
