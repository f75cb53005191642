"""The GPU path's kernels on a CUDA GPU: Liger Kernel's fused linear cross-entropy gives the plain
loss, and fused AdamW steps. Skipped without a GPU (tests/conftest.py); the Liger ones also without
liger-kernel (pip install 'tunebench[gpu]')."""

from __future__ import annotations

import math

import pytest
import torch

from helpers.training import RecordingSink, tiny_preset


def _tiny_on_cuda(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16, device_map={"": "cuda"})


@pytest.mark.cuda
def test_liger_fused_linear_cross_entropy_equals_the_plain_loss(tiny_model_dir):
    pytest.importorskip("liger_kernel")
    from transformers.integrations.liger import apply_liger_kernel

    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (4, 128), device="cuda")
    labels = ids.clone()
    labels[:, :32] = -100  # prompt tokens carry no loss, as in the engine's batches
    plain, fused = _tiny_on_cuda(tiny_model_dir), _tiny_on_cuda(tiny_model_dir)
    apply_liger_kernel(fused, None)  # what TrainingArguments.use_liger_kernel does at train()
    fused.train(), plain.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        expected = plain(input_ids=ids, labels=labels).loss
        out = fused(input_ids=ids, labels=labels)
    assert out.logits is None  # training with labels: no full logits materialised
    assert math.isclose(out.loss.item(), expected.item(), rel_tol=1e-2)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in fused.parameters() if p.grad is not None)


@pytest.mark.cuda
def test_a_run_with_liger_says_so_and_trains(tiny_model_dir, demo_data_file, tmp_path):
    pytest.importorskip("liger_kernel")
    from engine.train import train

    sink = RecordingSink()
    result = train(tiny_preset("lora", tiny_model_dir, demo_data_file, "training.kernels=liger"), tmp_path / "run", sink)
    assert result.status == "completed"
    assert any("loss: liger_fused_linear_cross_entropy" in text for _, text, _ in sink.of("event"))
    assert all(math.isfinite(loss) for loss in sink.series("loss").values())


@pytest.mark.cuda
def test_fused_adamw_steps_a_full_fine_tune(tiny_model_dir, demo_data_file, tmp_path):
    from engine.artifacts import RunArtifacts
    from engine.train import train, training_arguments

    preset = tiny_preset("full", tiny_model_dir, demo_data_file)
    args = training_arguments(preset, RunArtifacts(tmp_path / "args"), precision="bf16", device=torch.device("cuda"), steps=3, has_eval=False)
    assert args.optim == "adamw_torch_fused"

    sink = RecordingSink()
    result = train(preset, tmp_path / "run", sink)
    assert result.status == "completed"
    losses = sink.series("loss")
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses.values())
    assert result.metrics["grad_norm"] > 0
