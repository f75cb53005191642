"""engine.flops: FLOPs per token by hand, the peak table, MFU, and the callback's mfu / tflops metrics."""

from __future__ import annotations

from types import SimpleNamespace
from unittest import mock

import pytest

from engine.flops import compute_dtype, flops_per_token, mfu, peak_flops
from engine.tiny import TINY_CONFIG


@pytest.fixture(scope="module")
def tiny():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=1024, **TINY_CONFIG)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return config, sum(p.numel() for p in model.parameters())


# The tiny Llama by hand: hidden 128, 4 layers, 4 heads of 32, 2 KV heads (k, v: 128×64), MLP 384, vocab 1024, untied.
EMBEDDING = 1024 * 128
LAYER = (128 * 128 + 2 * 128 * 64 + 128 * 128) + 3 * 128 * 384 + 2 * 128  # attention, MLP, two norms
TOTAL = EMBEDDING + 4 * LAYER + 128 + 1024 * 128  # embedding, layers, final norm, lm_head
MULTIPLIED = TOTAL - EMBEDDING  # the input embedding is a lookup


def test_flops_per_token_of_a_full_fine_tune_by_hand(tiny):
    config, total = tiny
    assert total == TOTAL == 1_049_728
    attention = 12 * 4 * 64 * (4 * 32)  # layers · seq · d_attn, forward and backward
    assert flops_per_token(config, trainable_params=total, total_params=total, seq_len=64) == 6 * MULTIPLIED + attention
    assert flops_per_token(config, trainable_params=total, total_params=total) == 6 * MULTIPLIED


def test_frozen_weights_cost_forward_and_activation_gradients_only(tiny):
    config, total = tiny
    # LoRA: every frozen weight does the forward and passes gradients back (2 + 2), adapters 2 + 4.
    adapters = 10_000
    assert flops_per_token(config, trainable_params=adapters, total_params=total + adapters) == 4 * (MULTIPLIED + adapters) + 2 * adapters


def test_a_tied_head_is_counted_once_as_the_head(tiny):
    config, total = tiny
    tied = SimpleNamespace(**{**config.to_dict(), "tie_word_embeddings": True})
    shared = total - 1024 * 128  # one matrix serves both
    assert flops_per_token(tied, trainable_params=shared, total_params=shared) == 6 * shared


@pytest.mark.parametrize(
    "name,dtype,tflops",
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989),
        ("NVIDIA H100 PCIe", "bf16", 756),
        ("NVIDIA H200", "bf16", 989),
        ("NVIDIA H200 NVL", "fp16", 835),
        ("NVIDIA A100-SXM4-80GB", "bf16", 312),
        ("NVIDIA A100 80GB PCIe", "tf32", 156),
        ("NVIDIA A10G", "bf16", 70),
        ("NVIDIA A10", "bf16", 125),
        ("NVIDIA L4", "bf16", 121),
        ("NVIDIA L40S", "bf16", 362),
        ("NVIDIA GeForce RTX 4090", "fp32", 82.6),
        ("Tesla V100-SXM2-16GB", "fp16", 125),
        ("Tesla V100-PCIE-32GB", "fp16", 112),
        ("Tesla T4", "fp16", 65),
    ],
)
def test_peak_table_by_nvml_name(name, dtype, tflops):
    assert peak_flops(name, dtype) == pytest.approx(tflops * 1e12)


def test_peak_unknown_or_missing_path_is_none():
    assert peak_flops("Tesla T4", "bf16") is None  # no bf16 before Ampere
    assert peak_flops("Some Future GPU", "bf16") is None
    with pytest.raises(ValueError, match="bf16, fp16, tf32, fp32"):
        peak_flops("NVIDIA H100 PCIe", "int8")


def test_compute_dtype():
    assert compute_dtype("bf16", tf32_matmul=True) == "bf16"
    assert compute_dtype("fp32", tf32_matmul=True) == "tf32"
    assert compute_dtype("fp32", tf32_matmul=False) == "fp32"


def test_mfu_arithmetic():
    # 10k tokens/s × 6·1e9 FLOPs per token on a 989 TFLOP/s GPU.
    assert mfu(10_000, 6e9, 989e12) == pytest.approx(6e13 / 989e12)
    with pytest.raises(ValueError):
        mfu(1.0, 1.0, 0.0)


class _Sink:
    def __init__(self):
        self.sent = []

    def metrics(self, step, values):
        self.sent.append((step, values))

    def finding(self, finding):
        pass

    def event(self, *args):
        pass


def _callback(tmp_path, device, precision="bf16"):
    import torch

    from engine.callback import EngineCallback
    from presets.loader import load_preset_text

    preset = load_preset_text("name: t\nmodel: {path: /models/base}\ndata: {train_files: [/data/t.json]}\n", "t.yaml")
    run_info = {"trainable_params": TOTAL, "total_params": TOTAL, "precision": precision}
    return EngineCallback(preset, tmp_path, _Sink(), device=torch.device(device), run_info=run_info)


def _log_once(callback, config, tokens, samples):
    args = SimpleNamespace(world_size=1)
    state = SimpleNamespace(global_step=10, num_input_tokens_seen=0, log_history=[], max_steps=100, is_world_process_zero=False, epoch=0.1)
    callback.on_train_begin(args, state, None, model=SimpleNamespace(config=config))
    callback._tokens_flushed, callback._samples_flushed = tokens, samples
    state.is_world_process_zero = True
    with mock.patch("engine.callback.memory_metrics", return_value={}):
        callback.on_log(args, state, SimpleNamespace(), logs={"loss": 1.0, "learning_rate": 1e-4})
    return callback.sink.sent[-1][1]


def test_callback_reports_mfu_and_tflops_on_cuda(tmp_path, tiny):
    config, _ = tiny
    callback = _callback(tmp_path, "cuda")
    with mock.patch("torch.cuda.get_device_name", return_value="NVIDIA H100 80GB HBM3"):
        values = _log_once(callback, config, tokens=64_000, samples=1_000)
    per_token = flops_per_token(config, trainable_params=TOTAL, total_params=TOTAL, seq_len=64)
    assert values["tflops"] == pytest.approx(values["tokens_per_s"] * per_token / 1e12)
    assert values["mfu"] == pytest.approx(values["tokens_per_s"] * per_token / 989e12)


def test_callback_gives_tflops_without_mfu_on_an_unknown_gpu(tmp_path, tiny):
    config, _ = tiny
    with mock.patch("torch.cuda.get_device_name", return_value="Some Future GPU"):
        values = _log_once(_callback(tmp_path, "cuda"), config, tokens=64_000, samples=1_000)
    assert "tflops" in values and "mfu" not in values


def test_callback_reports_no_flops_on_the_cpu(tmp_path, tiny):
    config, _ = tiny
    values = _log_once(_callback(tmp_path, "cpu", precision="fp32"), config, tokens=64_000, samples=1_000)
    assert "tokens_per_s" in values and "mfu" not in values and "tflops" not in values
