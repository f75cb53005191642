"""This machine's GPUs as NVML sees them: which are visible, their bf16 support, their memory and
health (utilisation, power, temperature).

The only module that talks to NVML (nvidia-ml-py). NVML needs no torch and opens no CUDA context,
so the engine process, the jobs layer and the TUI can ask without holding a GPU. Only the standard
library at import time: jobs/ and tui/ import this inside functions. Without an NVIDIA driver or
the library every answer is "no GPU" (an empty list, False, None), never an error.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping

_kept_open = False  # NVML initialised for the life of the process (readings taken again and again)
_kept_open_lock = threading.Lock()


@contextmanager
def _nvml():
    """pynvml, initialised for one query and shut down after it."""
    import pynvml

    pynvml.nvmlInit()
    try:
        yield pynvml
    finally:
        pynvml.nvmlShutdown()


def _nvml_kept_open():
    """pynvml, initialised on the first call and left open: for readings repeated every few seconds."""
    global _kept_open
    import pynvml

    with _kept_open_lock:
        if not _kept_open:
            pynvml.nvmlInit()
            _kept_open = True
    return pynvml


# --------------------------------------------------------------------------- which GPUs


def visible_gpu_ids(env: Mapping[str, str] | None = None) -> list[str]:
    """The GPUs a process started with `env` would see, without initialising CUDA.

    CUDA_VISIBLE_DEVICES when it is set (ids or UUIDs, as given), else every GPU NVML counts;
    none when there is no NVIDIA driver.
    """
    env = os.environ if env is None else env
    pinned = env.get("CUDA_VISIBLE_DEVICES")
    if pinned is not None:
        ids = [part.strip() for part in pinned.split(",") if part.strip()]
        # CUDA stops at the first invalid entry; "-1" is the usual way to hide every GPU.
        valid = []
        for part in ids:
            if part.startswith("-"):
                break
            valid.append(part)
        return valid
    try:
        with _nvml() as pynvml:
            return [str(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:  # no driver, no library: a CPU machine
        return []


def gpus_have_bf16(gpu_ids: list[str]) -> bool:
    """bf16 needs compute capability 8.0 (Ampere) or newer on every GPU of the run."""
    try:
        with _nvml() as pynvml:
            count = pynvml.nvmlDeviceGetCount()
            handles = []
            for gpu in gpu_ids:
                if gpu.isdigit() and int(gpu) < count:
                    handles.append(pynvml.nvmlDeviceGetHandleByIndex(int(gpu)))
                else:
                    handles.append(pynvml.nvmlDeviceGetHandleByUUID(gpu))
            return all(pynvml.nvmlDeviceGetCudaComputeCapability(h)[0] >= 8 for h in handles)
    except Exception:
        return False


# --------------------------------------------------------------------------- memory


def gpu_memory(index: int = 0) -> tuple[int, int] | None:
    """(free, total) bytes of GPU `index` from NVML, or None without a GPU or nvidia-ml-py."""
    try:
        with _nvml() as pynvml:
            info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index))
            return int(info.free), int(info.total)
    except Exception:  # no driver, no library, no such GPU
        return None


@lru_cache(maxsize=8)
def _handle_by_uuid(uuid: str):
    return _nvml_kept_open().nvmlDeviceGetHandleByUUID(uuid)


def gpu_memory_used(uuid: str) -> tuple[int, int] | None:
    """(used, total) bytes of the GPU or MIG slice with this NVML UUID, all processes together.

    By UUID, so that CUDA_VISIBLE_DEVICES and MIG slices map to the right device. Cheap enough for
    every logging step: NVML stays open and the handle is kept. None when NVML cannot answer (no
    library, no permission, a MIG slice NVML cannot query).
    """
    try:
        info = _nvml_kept_open().nvmlDeviceGetMemoryInfo(_handle_by_uuid(uuid))
    except Exception:
        return None
    return int(info.used), int(info.total)


# --------------------------------------------------------------------------- health


def _optional(read):
    """One NVML reading, or None where the GPU or driver does not report it (MIG slices and some
    boards answer NotSupported for utilisation, power or temperature)."""
    try:
        return read()
    except Exception:
        return None


def _temperature(pynvml, handle) -> int:
    # nvmlDeviceGetTemperatureV is the current call; drivers before it only have the deprecated one.
    try:
        return int(pynvml.nvmlDeviceGetTemperatureV(handle, pynvml.NVML_TEMPERATURE_GPU))
    except Exception:
        return int(pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU))


@dataclass(frozen=True)
class GpuHealth:
    utilization: int | None = None  # % of the last sample period with a kernel running
    power_w: float | None = None  # board power draw, watts
    temperature_c: int | None = None  # GPU core, °C


def _health(pynvml, handle) -> GpuHealth:
    return GpuHealth(
        utilization=_optional(lambda: int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)),
        power_w=_optional(lambda: pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0),  # NVML gives milliwatts
        temperature_c=_optional(lambda: _temperature(pynvml, handle)),
    )


def gpu_health(uuid: str) -> GpuHealth | None:
    """Utilisation, power and temperature of the GPU with this NVML UUID (see gpu_memory_used), each
    None when not reported; None when NVML cannot answer at all. Host-side queries, no CUDA sync."""
    try:
        pynvml = _nvml_kept_open()
        handle = _handle_by_uuid(uuid)
    except Exception:
        return None
    return _health(pynvml, handle)


@dataclass(frozen=True)
class GpuReading:
    index: int
    name: str
    memory_used: int
    memory_total: int
    health: GpuHealth = GpuHealth()


def read_gpus() -> list[GpuReading]:
    """Name, memory used / total and health of every GPU NVML counts (CUDA_VISIBLE_DEVICES does not apply).

    For a status line polled every few seconds: NVML stays open between calls. Raises when NVML
    cannot answer (no driver, no library, a GPU fell off the bus); the caller decides what that means.
    A reading one GPU does not support (utilisation on a MIG-enabled board, say) is None, not an error.
    """
    pynvml = _nvml_kept_open()
    gpus = []
    for index in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        name = pynvml.nvmlDeviceGetName(handle)
        if isinstance(name, bytes):
            name = name.decode(errors="replace")
        gpus.append(GpuReading(index, str(name), int(memory.used), int(memory.total), _health(pynvml, handle)))
    return gpus
