"""engine.hardware: which GPUs a process sees, and every answer NVML gives, on a machine without it."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from engine.hardware import GpuHealth, gpu_health, gpu_memory, gpu_memory_used, gpus_have_bf16, read_gpus, visible_gpu_ids


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
    assert gpu_health("GPU-5b1c") is None
    with pytest.raises(ImportError):
        read_gpus()  # the caller (the TUI's probe) decides what no NVML means


class FakeNvml:
    """A stand-in for pynvml: two GPUs, the second a board that reports no power or utilisation."""

    NVML_TEMPERATURE_GPU = 0

    def __init__(self):
        self.boards = [
            dict(uuid="GPU-aaaa", name=b"NVIDIA H100 80GB HBM3", used=30 * 2**30, total=80 * 2**30, util=87, mw=612_345, temp=71),
            dict(uuid="GPU-bbbb", name="NVIDIA A100-SXM4-80GB", used=2**30, total=80 * 2**30, util=None, mw=None, temp=40),
        ]

    def nvmlInit(self):
        pass

    def nvmlDeviceGetCount(self):
        return len(self.boards)

    def nvmlDeviceGetHandleByIndex(self, index):
        return self.boards[index]

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return next(b for b in self.boards if b["uuid"] == uuid)

    def nvmlDeviceGetName(self, handle):
        return handle["name"]

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(used=handle["used"], total=handle["total"], free=handle["total"] - handle["used"])

    def _reading(self, handle, key):
        if handle[key] is None:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        return handle[key]

    def nvmlDeviceGetUtilizationRates(self, handle):
        return SimpleNamespace(gpu=self._reading(handle, "util"), memory=0)

    def nvmlDeviceGetPowerUsage(self, handle):
        return self._reading(handle, "mw")

    def nvmlDeviceGetTemperatureV(self, handle, sensor):
        raise RuntimeError("NVML_ERROR_FUNCTION_NOT_FOUND")  # an older driver: the deprecated call answers

    def nvmlDeviceGetTemperature(self, handle, sensor):
        assert sensor == self.NVML_TEMPERATURE_GPU
        return handle["temp"]


@pytest.fixture
def fake_nvml(monkeypatch):
    from engine import hardware

    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml())
    monkeypatch.setattr(hardware, "_kept_open", False)
    hardware._handle_by_uuid.cache_clear()
    yield
    hardware._handle_by_uuid.cache_clear()


def test_read_gpus_gives_health_per_gpu_and_none_for_what_a_board_does_not_report(fake_nvml):
    h100, a100 = read_gpus()
    assert (h100.index, h100.name, h100.memory_used, h100.memory_total) == (0, "NVIDIA H100 80GB HBM3", 30 * 2**30, 80 * 2**30)
    assert h100.health == GpuHealth(utilization=87, power_w=pytest.approx(612.345), temperature_c=71)
    assert a100.name == "NVIDIA A100-SXM4-80GB"
    assert a100.health == GpuHealth(utilization=None, power_w=None, temperature_c=40)


def test_gpu_health_by_uuid(fake_nvml):
    assert gpu_health("GPU-aaaa").utilization == 87
    assert gpu_health("GPU-nope") is None  # NVML does not know it: nothing rather than an error


def test_the_engine_stores_gpu_health_as_metrics(fake_nvml, monkeypatch):
    from engine import metering

    monkeypatch.setattr(metering, "_device_uuid", lambda device: "GPU-aaaa")
    cuda = SimpleNamespace(type="cuda")
    assert metering.nvml_health(cuda) == {"gpu_util": 87.0, "gpu_power_w": pytest.approx(612.345), "gpu_temp_c": 71.0}
    monkeypatch.setattr(metering, "_device_uuid", lambda device: "GPU-bbbb")
    assert metering.nvml_health(cuda) == {"gpu_temp_c": 40.0}
    assert metering.nvml_health(SimpleNamespace(type="cpu")) == {}
