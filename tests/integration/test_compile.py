"""training.compile: torch.compile through TrainingArguments.torch_compile, on the CPU with the tiny
model. A short compiled run trains, and its losses are those of the same run uncompiled."""

from __future__ import annotations

import math

import pytest

from helpers.training import RecordingSink, tiny_preset


@pytest.mark.slow  # compiling forward and backward on the CPU takes minutes
def test_a_compiled_run_trains_to_the_uncompiled_losses(tiny_model_dir, demo_data_file, tmp_path):
    from engine.train import train

    losses = {}
    for compiled in (False, True):
        sink = RecordingSink()
        preset = tiny_preset("lora", tiny_model_dir, demo_data_file, f"training.compile={str(compiled).lower()}", "training.save_steps=null",
                             "data.packing=true")  # one batch shape: one compilation, not one per length
        result = train(preset, tmp_path / f"run-{compiled}", sink)
        assert result.status == "completed"
        losses[compiled] = sink.series("loss")
        assert any("loss: plain" in text for level, text, step in sink.of("event"))  # the run says its loss path
    assert losses[True].keys() == losses[False].keys() and len(losses[True]) == 3
    for step, loss in losses[True].items():
        assert math.isfinite(loss) and math.isclose(loss, losses[False][step], rel_tol=1e-3), (step, loss, losses[False][step])
