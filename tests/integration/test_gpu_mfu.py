"""MFU and achieved TFLOP/s in a real run on a CUDA GPU. Skipped without a GPU (tests/conftest.py)."""

from __future__ import annotations

import pytest

from helpers.training import RecordingSink, tiny_preset


@pytest.mark.cuda
def test_a_gpu_run_logs_tflops_and_a_plausible_mfu(tiny_model_dir, demo_data_file, tmp_path):
    import torch

    from engine.flops import peak_flops
    from engine.train import train

    sink = RecordingSink()
    preset = tiny_preset("full", tiny_model_dir, demo_data_file, "training.max_steps=6", "training.logging_steps=2")
    result = train(preset, tmp_path / "run", sink)
    assert result.status == "completed"
    logged = [values for _, values in sink.of("metrics") if "loss" in values]
    assert logged and all(values["tflops"] > 0 for values in logged)
    known = peak_flops(torch.cuda.get_device_name(), "bf16") is not None
    if known:  # a GPU missing from the table gets TFLOP/s only
        # The tiny model cannot fill a GPU, but a figure above the peak means the FLOPs are overcounted.
        assert all(0 < values["mfu"] < 1 for values in logged)
