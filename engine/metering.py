"""GPU memory readings for the metric stream: torch's allocator and the device as NVML sees it.

All readings are host-side queries (no kernel launch, no synchronisation), and each source is
optional: no CUDA, no NVML library or an NVML error just leaves its keys out.
"""

from __future__ import annotations

from engine.hardware import gpu_health, gpu_memory_used


def torch_memory(device) -> dict[str, float]:
    """Bytes allocated now, peak allocated and peak reserved by torch's caching allocator."""
    import torch

    if device is None or device.type != "cuda" or not torch.cuda.is_available():
        return {}
    return {
        "mem_allocated": float(torch.cuda.memory_allocated(device)),
        "mem_peak_allocated": float(torch.cuda.max_memory_allocated(device)),
        "mem_peak_reserved": float(torch.cuda.max_memory_reserved(device)),
    }


def _device_uuid(device) -> str | None:
    import torch

    uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
    if uuid is None:
        return None
    text = str(uuid)
    # torch prints a bare UUID; NVML wants it with its GPU- (or MIG-) prefix.
    return text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"


def _nvml_uuid(device) -> str | None:
    """The UUID NVML knows a CUDA device by; None off CUDA or when torch cannot describe it."""
    if device is None or device.type != "cuda":
        return None
    try:
        return _device_uuid(device)
    except Exception:  # torch cannot describe the device: leave it out
        return None


def nvml_memory(device) -> dict[str, float]:
    """Bytes used and total on the device, all processes together (NVML), found by UUID so that
    CUDA_VISIBLE_DEVICES and MIG slices map to the right device."""
    uuid = _nvml_uuid(device)
    reading = gpu_memory_used(uuid) if uuid is not None else None
    if reading is None:  # no NVML library, no permission, a MIG slice NVML cannot query: leave it out
        return {}
    used, total = reading
    return {"gpu_mem_used": float(used), "gpu_mem_total": float(total)}


def nvml_health(device) -> dict[str, float]:
    """Utilisation %, power (W) and temperature (°C) of the device, those NVML reports."""
    uuid = _nvml_uuid(device)
    health = gpu_health(uuid) if uuid is not None else None
    if health is None:
        return {}
    values = {"gpu_util": health.utilization, "gpu_power_w": health.power_w, "gpu_temp_c": health.temperature_c}
    return {key: float(value) for key, value in values.items() if value is not None}


def memory_metrics(device) -> dict[str, float]:
    """Memory, and the GPU's health beside it (the same NVML handle, as cheap)."""
    return {**torch_memory(device), **nvml_memory(device), **nvml_health(device)}
