"""engine.hardware: which GPUs a process sees, and every answer NVML gives, on a machine without it."""

from __future__ import annotations

import sys

import pytest

from engine.hardware import gpu_memory, gpu_memory_used, gpus_have_bf16, read_gpus, visible_gpu_ids


@pytest.mark.parametrize(
    "value,ids",
    [("0,1", ["0", "1"]), ("", []), ("-1", []), ("2,-1,3", ["2"]), (" 3 , 1 ", ["3", "1"]), ("GPU-5b1c", ["GPU-5b1c"])],
)
def test_visible_gpu_ids_follow_cuda_visible_devices(value, ids):
    assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": value}) == ids


def test_without_nvml_every_answer_is_no_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # as if nvidia-ml-py were not installed
    assert visible_gpu_ids({}) == []
    assert gpus_have_bf16(["0"]) is False
    assert gpu_memory() is None
    assert gpu_memory_used("GPU-5b1c") is None
    with pytest.raises(ImportError):
        read_gpus()  # the caller (the TUI's probe) decides what no NVML means
