"""Model FLOPs per token, the GPU's dense peak, and MFU (model FLOPs utilisation).

Only the standard library: the callback calls it at logging steps, bench/gpu_check.py and the
doctor may call it without a model in memory.

MFU = achieved model FLOP/s ÷ the GPU's dense peak for the compute dtype. *Model* FLOPs, as in the
PaLM paper: recomputation by activation checkpointing is not counted, so MFU says how much of the
GPU's peak went into the model's own arithmetic.
"""

from __future__ import annotations

import re


def _text_config(config):
    """The language model's part of a multimodal config (the config itself for a plain LM)."""
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def flops_per_token(config, *, trainable_params: int, total_params: int, seq_len: int = 0) -> float:
    """Training FLOPs per token (forward + backward) of a dense decoder-only transformer.

    Matrix-multiply parameters do 2 FLOPs per parameter per token in the forward (one multiply-add).
    The backward needs the gradient with respect to the activations everywhere (2 per parameter:
    LoRA's adapters and partly frozen models pass gradients through frozen layers too) and the
    gradient with respect to the weights only for trainable ones (2 more):

        F = 2·N  +  2·N_frozen + 4·N_trainable  =  4·N + 2·N_trainable      (6·N for a full fine-tune)
          + 12 · n_layers · seq_len · d_attn                                 (attention scores)

    N counts the parameters that are multiplied: total_params less the input embedding when it is
    not tied to the output head (a lookup costs no FLOPs; a tied one is counted once, as the head).
    N_trainable is trainable_params capped at N (a trainable untied embedding adds no matmul).
    The attention term is QKᵀ and the attention-weighted values, 2·2·seq_len·d_attn per token and
    layer in the forward and twice that in the backward, with d_attn = heads · head_dim and the
    full (not causally halved) score matrix, as PaLM and Megatron count it. seq_len is the length
    of the sequence a token attends within (the sample's length when samples are packed);
    0 leaves the term out. Norms, activations and softmax are left out (under 1 % at LLM sizes).
    """
    cfg = _text_config(config)
    hidden = int(cfg.hidden_size)
    layers = int(cfg.num_hidden_layers)
    heads = int(cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or hidden // heads)
    embedding = 0 if getattr(cfg, "tie_word_embeddings", False) else int(cfg.vocab_size) * hidden
    multiplied = max(int(total_params) - embedding, 0)
    trainable = min(int(trainable_params), multiplied)
    attention = 12 * layers * int(seq_len) * heads * head_dim
    return float(4 * multiplied + 2 * trainable + attention)


# --------------------------------------------------------------------------- dense peaks

# Dense (no 2:4 sparsity) peak TFLOP/s from NVIDIA's datasheets, keyed by a pattern of the device
# name as NVML (and torch.cuda.get_device_name) reports it, most specific first. Columns: bf16 and
# fp16 tensor-core throughput with fp32 accumulation, tf32 tensor cores, plain fp32. None: the GPU
# has no such path (bf16 before Ampere, tf32 before Ampere).
_PEAKS: list[tuple[str, dict[str, float | None]]] = [
    (r"\bB200\b", {"bf16": 2250, "fp16": 2250, "tf32": 1100, "fp32": 75}),
    (r"\bH200 NVL\b", {"bf16": 835, "fp16": 835, "tf32": 418, "fp32": 60}),
    (r"\bH100 NVL\b", {"bf16": 835, "fp16": 835, "tf32": 418, "fp32": 60}),
    (r"\bH100 PCIe\b", {"bf16": 756, "fp16": 756, "tf32": 378, "fp32": 51}),
    # H100 SXM ("NVIDIA H100 80GB HBM3"), H200 SXM and GH200 share the SXM5 Hopper die and clocks.
    (r"\b(GH200|H200|H100)\b", {"bf16": 989, "fp16": 989, "tf32": 495, "fp32": 67}),
    (r"\bH800\b", {"bf16": 989, "fp16": 989, "tf32": 495, "fp32": 67}),
    (r"\bA100\b", {"bf16": 312, "fp16": 312, "tf32": 156, "fp32": 19.5}),
    (r"\bA800\b", {"bf16": 312, "fp16": 312, "tf32": 156, "fp32": 19.5}),
    (r"\bL40S\b", {"bf16": 362, "fp16": 362, "tf32": 183, "fp32": 91.6}),
    (r"\bL40\b", {"bf16": 181, "fp16": 181, "tf32": 90.5, "fp32": 90.5}),
    (r"\bL4\b", {"bf16": 121, "fp16": 121, "tf32": 60, "fp32": 30.3}),
    (r"\bA10G\b", {"bf16": 70, "fp16": 70, "tf32": 35, "fp32": 31.2}),  # AWS's figures for its A10 variant
    (r"\bA10\b", {"bf16": 125, "fp16": 125, "tf32": 62.5, "fp32": 31.2}),
    (r"\bA40\b", {"bf16": 150, "fp16": 150, "tf32": 74.8, "fp32": 37.4}),
    (r"RTX 6000 Ada", {"bf16": 364, "fp16": 364, "tf32": 182, "fp32": 91.1}),
    (r"RTX A6000", {"bf16": 155, "fp16": 155, "tf32": 77.4, "fp32": 38.7}),
    (r"RTX 4090", {"bf16": 165, "fp16": 165, "tf32": 82.6, "fp32": 82.6}),
    (r"RTX 3090", {"bf16": 71, "fp16": 71, "tf32": 35.6, "fp32": 35.6}),
    (r"\bV100S?\b.*\bPCIE\b", {"bf16": None, "fp16": 112, "tf32": None, "fp32": 14}),
    (r"\bV100S?\b", {"bf16": None, "fp16": 125, "tf32": None, "fp32": 15.7}),
    (r"\bT4\b", {"bf16": None, "fp16": 65, "tf32": None, "fp32": 8.1}),
]
DTYPES = ("bf16", "fp16", "tf32", "fp32")


def peak_flops(device_name: str, dtype: str) -> float | None:
    """The GPU's dense peak FLOP/s for `dtype` (bf16, fp16, tf32 or fp32), or None when the name is
    not in the table or the GPU has no such path: MFU is then not reported rather than guessed."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown compute dtype {dtype!r}: one of {', '.join(DTYPES)}")
    for pattern, peaks in _PEAKS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            tflops = peaks[dtype]
            return None if tflops is None else tflops * 1e12
    return None


def compute_dtype(precision: str, *, tf32_matmul: bool) -> str:
    """The dtype the matmuls run in: the mixed-precision dtype, else tf32 when torch allows it for fp32."""
    if precision in ("bf16", "fp16"):
        return precision
    return "tf32" if tf32_matmul else "fp32"


def mfu(tokens_per_s: float, flops_per_token: float, peak: float) -> float:
    """Model FLOPs utilisation as a fraction (0.42 = 42 % of the peak)."""
    if peak <= 0:
        raise ValueError("the peak FLOP/s must be positive")
    return tokens_per_s * flops_per_token / peak
