"""Memory preflight: the peak GPU memory of a train preset, by arithmetic on the model's config.json.

    estimate_memory(preset, model_config, *, gpu_free_bytes=None) -> MemoryEstimate

Pure arithmetic (no torch): parameter counts from the config's shapes; weights by dtype and
bitsandbytes quantization; adapter parameters by method, rank and target modules; gradients and
optimizer states of the trainable parameters; the activations autograd keeps for the backward
pass, tensor by tensor for a Llama-style decoder layer (norms, projections, rotary attention
through a fused kernel, gated MLP), with and without gradient checkpointing; the dense S×S mask
that eager and sdpa get with padding or packing (flash and flex attention take the boundaries
instead: attention_kernel); the logits and the fp32 cross-entropy, which dominate for large
vocabularies, or on Liger's fused loss path only the hidden states' gradient and one chunk of
logits (engine.kernels.loss_path); and the CUDA context. Each knob that
makes a run fit (batch, max_length, gradient checkpointing, QLoRA, an 8-bit optimizer) is
estimated the same way.

The layout follows what engine.models / engine.methods load (see the comments at each term);
when that changes, this file changes with it. After a CUDA run has run a few steps, the measured
peak is set beside the estimate (`peak_record`, and LiveDoctor's "memory" finding).
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.attention import FLATTENED_KERNELS
from engine.distributed.world import memory_shards
from engine.kernels import LIGER_LOSS, loss_path
from presets.methods import METHODS, MemoryModel

GiB = 1024**3
MiB = 1024**2
CUDA_CONTEXT_BYTES = 500 * MiB  # CUDA context + cuBLAS/cuDNN workspaces, outside torch's allocator
ALLOCATOR_OVERHEAD = 0.05  # torch reserves more than it allocates (block rounding, fragmentation)
BNB_BLOCK = 64  # bitsandbytes 4-bit block size (one absmax per 64 weights)
BNB_DQ_BLOCK = 256  # double quantization: one fp32 constant per 256 absmax values
BNB_8BIT_MIN_SIZE = 4096  # bitsandbytes' 8-bit optimizers keep tensors smaller than this in 32-bit

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
NON_GATED_MODEL_TYPES = ("gpt2", "gpt_neox", "gptj", "opt", "bloom", "falcon", "phi", "starcoder2", "gpt_bigcode")


# --------------------------------------------------------------------------- the model's shape


@dataclass(frozen=True)
class Linear:
    name: str  # leaf name, as target_modules spell it (q_proj, up_proj, …)
    in_features: int
    out_features: int
    count: int = 1  # per layer (experts of a MoE layer count here)
    bias: bool = False
    feedforward: bool = False

    @property
    def params(self) -> int:
        return self.count * (self.in_features * self.out_features + (self.out_features if self.bias else 0))


@dataclass(frozen=True)
class ModelShape:
    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool
    linears: tuple[Linear, ...]  # per decoder layer
    active_experts: int = 1  # MoE: experts each token goes through (activations scale with these)
    experts: int = 1

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def layer_linear_params(self) -> int:
        return sum(linear.params for linear in self.linears)

    @property
    def layer_other_params(self) -> int:
        return 2 * self.hidden  # the two RMSNorm weights

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def head_params(self) -> int:
        return 0 if self.tied_embeddings else self.vocab * self.hidden

    @property
    def total_params(self) -> int:
        per_layer = self.layer_linear_params + self.layer_other_params
        return self.layers * per_layer + self.embedding_params + self.head_params + self.hidden


def _text_config(config: dict) -> dict:
    # Multimodal configs nest the language model's shape.
    if "hidden_size" not in config and isinstance(config.get("text_config"), dict):
        return {**config["text_config"], "model_type": config["text_config"].get("model_type", config.get("model_type"))}
    return config


def model_shape(config: dict) -> ModelShape:
    """The decoder's shape from a Hugging Face config.json dict; ValueError names a missing key."""
    cfg = _text_config(config)
    aliases = {
        "hidden_size": ("hidden_size", "n_embd", "d_model"),
        "num_hidden_layers": ("num_hidden_layers", "n_layer", "num_layers"),
        "num_attention_heads": ("num_attention_heads", "n_head"),
        "vocab_size": ("vocab_size",),
    }
    values: dict[str, int] = {}
    for key, names in aliases.items():
        found = next((cfg[n] for n in names if cfg.get(n) is not None), None)
        if found is None:
            raise ValueError(f"config.json has no {key}: cannot estimate the memory of this model")
        values[key] = int(found)
    hidden, layers, heads, vocab = (values[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"))
    model_type = str(cfg.get("model_type") or "")
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    intermediate = int(cfg.get("intermediate_size") or cfg.get("n_inner") or 4 * hidden)
    gated = model_type not in NON_GATED_MODEL_TYPES
    # Qwen2 puts biases on q/k/v; Llama-style configs say it with attention_bias.
    qkv_bias = bool(cfg.get("attention_bias")) or model_type in ("qwen2", "qwen2_moe")
    q_dim, kv_dim = heads * head_dim, kv_heads * head_dim
    linears = [
        Linear("q_proj", hidden, q_dim, bias=qkv_bias),
        Linear("k_proj", hidden, kv_dim, bias=qkv_bias),
        Linear("v_proj", hidden, kv_dim, bias=qkv_bias),
        Linear("o_proj", q_dim, hidden, bias=bool(cfg.get("attention_bias"))),
    ]
    experts = int(cfg.get("num_local_experts") or cfg.get("num_experts") or 1)
    active = int(cfg.get("num_experts_per_tok") or 1) if experts > 1 else 1
    if experts > 1:
        expert_size = int(cfg.get("moe_intermediate_size") or intermediate)
        linears += [
            Linear("gate_proj", hidden, expert_size, count=experts, feedforward=True),
            Linear("up_proj", hidden, expert_size, count=experts, feedforward=True),
            Linear("down_proj", expert_size, hidden, count=experts, feedforward=True),
            Linear("gate", hidden, experts),  # the router
        ]
        shared = int(cfg.get("shared_expert_intermediate_size") or 0)
        if shared:
            linears += [
                Linear("shared_expert.gate_proj", hidden, shared, feedforward=True),
                Linear("shared_expert.up_proj", hidden, shared, feedforward=True),
                Linear("shared_expert.down_proj", shared, hidden, feedforward=True),
            ]
        intermediate = expert_size
    elif gated:
        linears += [
            Linear("gate_proj", hidden, intermediate, bias=bool(cfg.get("mlp_bias")), feedforward=True),
            Linear("up_proj", hidden, intermediate, bias=bool(cfg.get("mlp_bias")), feedforward=True),
            Linear("down_proj", intermediate, hidden, bias=bool(cfg.get("mlp_bias")), feedforward=True),
        ]
    else:
        linears += [
            Linear("up_proj", hidden, intermediate, bias=True, feedforward=True),
            Linear("down_proj", intermediate, hidden, bias=True, feedforward=True),
        ]
    tied = bool(cfg.get("tie_word_embeddings", config.get("tie_word_embeddings", True)))
    return ModelShape(model_type, hidden, intermediate, layers, heads, kv_heads, head_dim, vocab, tied,
                      tuple(linears), active_experts=active, experts=experts)


# --------------------------------------------------------------------------- the estimate


@dataclass
class Suggestion:
    knob: str  # what to change, in words
    overrides: list[str]  # --set arguments that change it
    total_bytes: int
    fits: bool | None


@dataclass
class MemoryEstimate:
    total_bytes: int  # peak on the GPU, CUDA context included
    parts: dict[str, int]  # weights, adapter, gradients, optimizer, activations, logits, allocator, cuda_context
    details: dict[str, Any] = field(default_factory=dict)  # the numbers behind the parts
    gpu_free_bytes: int | None = None
    gpu_total_bytes: int | None = None
    suggestions: list[Suggestion] = field(default_factory=list)

    @property
    def torch_bytes(self) -> int:
        """What torch's caching allocator reserves at the peak (comparable to mem_peak_reserved)."""
        return self.total_bytes - self.parts.get("cuda_context", 0)

    @property
    def fits(self) -> bool | None:
        if self.gpu_free_bytes is None:
            return None
        return self.total_bytes <= self.gpu_free_bytes

    def to_dict(self) -> dict:
        data = asdict(self)
        data["torch_bytes"] = self.torch_bytes
        data["fits"] = self.fits
        return data


def _target_linears(shape: ModelShape, targets) -> list[Linear]:
    if targets == "all-linear":
        return [linear for linear in shape.linears if linear.name != "gate"]  # peft skips nothing but the head
    wanted = list(targets or [])
    return [linear for linear in shape.linears if any(linear.name == w or linear.name.endswith("." + w) or
                                                       linear.name.split(".")[-1] == w for w in wanted)]


def _precision(preset, device: str) -> str:
    precision = preset.training.precision
    if precision != "auto":
        return precision
    return "bf16" if device == "cuda" else "fp32"  # engine.models.resolve_precision (fp16 costs the same)


def attention_kernel(preset, device: str = "cuda", *, device_kind=None) -> str:
    """The attention kernel a run of `preset` uses on `device`: the preset's, or for auto engine.attention's
    choice for its batch layout on `device_kind` (default: this machine's GPU when torch is already loaded
    and sees one, else an Ampere-or-newer GPU with this environment's packages)."""
    from engine.attention import AMPERE, DeviceKind, choose_attention

    if device_kind is None:
        if device != "cuda":
            device_kind = DeviceKind(cuda=False)
        elif "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
            device_kind = DeviceKind.detect()
        else:  # a preflight on a machine without the GPU: never import torch for it
            from presets.extras import is_installed

            device_kind = DeviceKind(cuda=True, capability=AMPERE, flash_attn_installed=is_installed("flash_attn"), flex_available=True)
    return choose_attention(preset.model.attn_implementation, packed=preset.data.packing, device=device_kind)[0]


def _liger_chunk_rows(tokens: int, shape: ModelShape) -> int:
    # Liger's fused_linear_cross_entropy_forward: chunks of about tokens / ceil(V / H) rows, to a power of two,
    # so that a chunk of logits weighs about as much as the hidden states.
    per_chunk = math.ceil(tokens / math.ceil(shape.vocab / shape.hidden))
    return min(1 << max(per_chunk - 1, 0).bit_length(), tokens) if tokens else 0


def _memory(preset) -> MemoryModel:
    return METHODS[preset.method.name].memory


def _weights_dtype(preset, precision: str) -> str:
    # engine.models.weights_dtype: explicit dtype wins; full/freeze train fp32 master weights.
    dtype = preset.model.dtype
    if dtype != "auto":
        return dtype
    return "fp32" if METHODS[preset.method.name].trains_base_weights else precision


def _trainable_layers(preset, shape: ModelShape) -> int:
    freeze = preset.method.freeze
    # Full training and adapters reach every layer; freeze's named parts may be anywhere: assume every layer holds some.
    if _memory(preset).kind != "freeze" or freeze.trainable_modules:
        return shape.layers
    return min(freeze.trainable_layers, shape.layers)


def _lora_rank(preset) -> int:
    section, field_name = _memory(preset).rank_field.split(".")
    return getattr(getattr(preset.method, section), field_name)


def _lora_adapter(preset, shape: ModelShape, memory: MemoryModel) -> tuple[int, list[Linear], dict]:
    method = preset.method
    rank = _lora_rank(preset)
    targets = _target_linears(shape, method.lora.target_modules)
    params = shape.layers * sum(t.count * rank * (t.in_features + t.out_features) for t in targets)
    if memory.magnitude_vectors:
        params += shape.layers * sum(t.count * t.out_features for t in targets)  # DoRA's magnitude vectors
    if memory.singular_values:
        params += shape.layers * sum(t.count * rank for t in targets)  # AdaLoRA's singular values E
    saved = method.lora.modules_to_save
    if any(m in ("embed_tokens", "wte") for m in saved):
        params += shape.embedding_params
    if any(m in ("lm_head",) for m in saved):
        params += shape.vocab * shape.hidden
    return params, targets, dict(rank=rank, targets=sorted({t.name for t in targets}))


def _ia3_adapter(preset, shape: ModelShape, memory: MemoryModel) -> tuple[int, list[Linear], dict]:
    targets = _target_linears(shape, preset.method.ia3.target_modules)
    params = shape.layers * sum(t.count * (t.in_features if t.feedforward else t.out_features) for t in targets)
    return params, targets, dict(targets=sorted({t.name for t in targets}))


def _prompt_tuning_adapter(preset, shape: ModelShape, memory: MemoryModel) -> tuple[int, list[Linear], dict]:
    tokens = preset.method.prompt.num_virtual_tokens
    return tokens * shape.hidden, [], dict(virtual_tokens=tokens)


def _prefix_tuning_adapter(preset, shape: ModelShape, memory: MemoryModel) -> tuple[int, list[Linear], dict]:
    prompt = preset.method.prompt
    tokens = prompt.num_virtual_tokens
    params = tokens * 2 * shape.layers * shape.kv_dim
    if prompt.prefix_projection:
        enc = prompt.encoder_hidden_size
        params += tokens * shape.hidden + shape.hidden * enc + enc * 2 * shape.layers * shape.kv_dim
    return params, [], dict(virtual_tokens=tokens)


def _p_tuning_adapter(preset, shape: ModelShape, memory: MemoryModel) -> tuple[int, list[Linear], dict]:
    tokens, enc = preset.method.prompt.num_virtual_tokens, preset.method.prompt.encoder_hidden_size
    params = tokens * shape.hidden + shape.hidden * enc + enc * enc + enc * shape.hidden
    return params, [], dict(virtual_tokens=tokens)


def _no_adapter(preset, shape: ModelShape, memory: MemoryModel) -> tuple[int, list[Linear], dict]:
    return 0, [], {}


# Trainable adapter parameters, the adapted linears, and notes, by the method's memory kind (presets.methods).
_ADAPTERS = {
    "full": _no_adapter, "freeze": _no_adapter, "lora": _lora_adapter, "ia3": _ia3_adapter,
    "prompt_tuning": _prompt_tuning_adapter, "prefix_tuning": _prefix_tuning_adapter, "p_tuning": _p_tuning_adapter,
}


def _adapter(preset, shape: ModelShape) -> tuple[int, list[Linear], dict]:
    """Trainable adapter parameters, the adapted linears, and notes."""
    memory = _memory(preset)
    return _ADAPTERS[memory.kind](preset, shape, memory)


@dataclass(frozen=True)
class _Dtypes:
    """Bytes per element of each kind of tensor a training step makes (see _dtypes)."""

    stream: int  # the residual stream: the embedding's dtype
    act: int  # linear outputs and the elementwise ops on them (SiLU, products)
    attn: int  # what the fused attention kernel keeps
    cast: int  # a trained module's own copy of its input, when it casts it
    shared: bool  # trained modules share one kept input (no cast anywhere)
    dropout_mask: int  # CUDA's fused dropout keeps a bool mask; the CPU keeps a scaled float one


def _dtypes(*, precision: str, weights: int, quantized: bool, module_bytes: int, device: str = "cuda") -> _Dtypes:
    prec = DTYPE_BYTES[precision]
    autocast = prec < 4  # the Trainer runs bf16/fp16 under torch.autocast
    # Quantized bases are upcast to fp32 around the 4/8-bit matmuls (bitsandbytes returns the input's dtype).
    stream = 4 if quantized else weights
    act = stream if quantized else (prec if autocast else weights)
    attn = prec if autocast else act
    cast = prec if autocast else module_bytes
    return _Dtypes(stream, act, attn, cast, shared=stream == cast == module_bytes,
                   dropout_mask=1 if device == "cuda" else cast)


def _activation_bytes_per_token(shape: ModelShape, d: _Dtypes, *, trained: set[str], norms_trained: bool,
                                padded: bool, lora_rank: int = 0, lora_dropout: float = 0.0,
                                dora: bool = False, ia3: bool = False, ia3_outputs: frozenset = frozenset()) -> float:
    """Bytes autograd keeps per token for one decoder layer (a Llama-style block).

    `trained`: linears whose input is kept (trained weights, or an adapter on them); `padded`: a
    padding (or packing) mask is passed to attention.
    """
    h, q, kv, i = shape.hidden, shape.q_dim, shape.kv_dim, shape.intermediate
    total = 0.0

    def norm() -> float:
        # RMSNorm: x.to(fp32) (kept for pow and mul) + rsqrt; weight * y keeps y when the weight trains.
        return 4 * h + 4 + (d.stream * h if norms_trained else 0)

    def linear_inputs(names: list[str], width: int) -> float:
        kept = [n for n in names if n in trained]
        if not kept:
            return 0.0
        if lora_dropout > 0:
            # Each adapter applies its own dropout: a copy of the input and its mask per module.
            return len(kept) * (d.cast + d.dropout_mask) * width
        # A module that casts its input (peft to its fp32 adapter, autocast back to bf16) keeps its own copy;
        # IA3 scales the input itself (x * l keeps x), shared by the modules that read it.
        return d.stream * width if d.shared or ia3 else len(kept) * d.cast * width

    total += norm()
    total += linear_inputs(["q_proj", "k_proj", "v_proj"], h)
    # Rotary embedding keeps only cos/sin (shared); the fused attention keeps q, k, v, the output
    # and its logsumexp. With a mask, transformers expands k and v to every head (repeat_kv).
    kv_kept = q if padded else kv
    total += d.attn * (2 * q + 2 * kv_kept) + 4 * shape.heads
    total += linear_inputs(["o_proj"], q)
    total += norm()
    moe = shape.experts > 1
    mlp_width = i * (shape.active_experts if moe else 1)
    total += linear_inputs(["gate_proj", "up_proj"], h)
    gated = any(linear.name == "gate_proj" for linear in shape.linears)
    # act(gate) keeps gate; act * up keeps both; down_proj keeps the product when it trains.
    total += (3 if gated else 1) * d.act * mlp_width
    total += linear_inputs(["down_proj"], i) * (shape.active_experts if moe else 1)
    if moe:
        total += d.act * shape.experts + 4 * shape.experts  # router logits and softmax
    adapted = [linear for linear in shape.linears if linear.name in trained]
    if lora_rank:
        total += sum(d.cast * lora_rank for _ in adapted)  # x·A, kept for B's gradient
    if dora:
        total += sum(2 * d.act * linear.out_features for linear in adapted)  # base and lora results
    if ia3:
        scaled = [linear for linear in shape.linears if linear.name in ia3_outputs]
        total += sum(d.act * linear.out_features for linear in scaled)
    return total


def estimate_memory(
    preset,
    model_config: dict,
    *,
    gpu_free_bytes: int | None = None,
    gpu_total_bytes: int | None = None,
    seq_len: int | None = None,
    device: str = "cuda",
    suggest: bool = True,
    attention: str | None = None,
    loss: str | None = None,
) -> MemoryEstimate:
    """Peak GPU memory of training `preset` on the model described by `model_config` (config.json).

    `seq_len` (default data.max_length) is the padded length of a batch: the data report's longest
    sample, when known, is a closer bound than max_length. `gpu_free_bytes` enables `fits` and the
    suggestions. `attention` (an attn_implementation) and `loss` (a loss path) default to what the
    run would use (attention_kernel, engine.kernels.loss_path); a caller that knows, like bench/gpu_check.py, says.
    """
    shape = model_shape(model_config)
    attention = attention or attention_kernel(preset, device)
    # The config's model_type: whether Liger has kernels for it, without reading config.json again.
    loss = loss or loss_path(preset, device == "cuda", model_type=shape.model_type)
    training, method, quant = preset.training, preset.method, preset.model.quantization
    precision = _precision(preset, device)
    weights_dtype = _weights_dtype(preset, precision)
    w = DTYPE_BYTES[weights_dtype]
    memory = _memory(preset)
    seq = int(seq_len or preset.data.max_length)
    if memory.virtual_tokens_in_sequence:
        seq += method.prompt.num_virtual_tokens
    batch = training.batch_size
    tokens = batch * seq
    full = memory.kind == "full"
    freeze = memory.kind == "freeze"

    # --- weights: linears of the decoder layers may be quantized; the rest never is.
    linear_params = shape.layers * shape.layer_linear_params
    other_params = shape.total_params - linear_params
    # engine.models.prepare_kbit_training keeps the embeddings and the head in the loaded dtype and
    # upcasts the other unquantized parameters (norms, biases) to fp32.
    table_params = shape.embedding_params + shape.head_params
    if quant.mode == "4bit":
        per_weight = 0.5 + (1 / BNB_BLOCK + 4 / (BNB_BLOCK * BNB_DQ_BLOCK) if quant.double_quant else 4 / BNB_BLOCK)
        weights = linear_params * per_weight + table_params * w + (other_params - table_params) * 4
    elif quant.mode == "8bit":
        weights = (linear_params * 1 + shape.layers * sum(l.count * l.out_features * 4 for l in shape.linears)
                   + table_params * w + (other_params - table_params) * 4)
    else:
        weights = shape.total_params * w

    # --- what trains
    adapter_params, adapted, adapter_notes = _adapter(preset, shape)
    trained_layers = _trainable_layers(preset, shape)
    if full:
        trainable = shape.total_params
    elif freeze:
        layer_params = shape.layer_linear_params + shape.layer_other_params
        trainable = trained_layers * layer_params
        if method.freeze.train_embeddings:
            trainable += shape.embedding_params + shape.head_params
    else:
        trainable = adapter_params
    # peft keeps adapter weights in fp32 (autocast_adapter_dtype); full/freeze train the loaded dtype.
    trainable_bytes = 4 if not (full or freeze) else w
    adapter_bytes = adapter_params * 4

    gradients = trainable * trainable_bytes
    optimizer = _optimizer_bytes(training.optimizer, trainable, trainable_bytes, adapted, shape, preset)

    # --- the distributed strategy's share per GPU (DDP: all of it; ZeRO / FSDP: a 1/N shard; offload: none)
    shards = memory_shards(preset)
    weights = 0 if shards.weights_on_cpu else weights / shards.weights
    adapter_bytes = 0 if shards.weights_on_cpu else adapter_bytes / shards.weights
    gradients = 0 if shards.gradients_on_cpu else gradients / shards.gradients
    optimizer = 0 if shards.optimizer_on_cpu else optimizer / shards.optimizer

    # --- activations
    if full or freeze:
        trained = {linear.name for linear in shape.linears}
    elif memory.kind == "ia3":
        # IA3 rescales the feed-forward modules' inputs (kept) and the other modules' outputs (kept below).
        trained = {linear.name for linear in adapted if linear.feedforward}
    else:
        trained = {linear.name for linear in adapted}
    lora_family = memory.kind == "lora"
    # Batches are padded to their longest sample (a mask) unless a single sample fills the batch. Flash and
    # flex attention take the boundaries instead (cu_seq_lens, a sparse block mask): no dense S×S mask, and
    # grouped-query attention without repeating k and v.
    padded = (batch > 1 or preset.data.packing) and attention not in FLATTENED_KERNELS
    dtypes = _dtypes(precision=precision, weights=w, quantized=quant.mode != "none",
                     module_bytes=trainable_bytes if (full or freeze) else 4, device=device)
    per_layer = _activation_bytes_per_token(
        shape, dtypes, trained=trained, norms_trained=full or freeze, padded=padded,
        lora_rank=adapter_notes.get("rank", 0) if lora_family else 0,
        lora_dropout=method.lora.dropout if lora_family else 0.0,
        dora=memory.magnitude_vectors, ia3=memory.kind == "ia3",
        ia3_outputs=frozenset(linear.name for linear in adapted if not linear.feedforward) if memory.kind == "ia3" else frozenset(),
    )
    # With freeze, layers below the first trained one need no gradient and keep nothing.
    grad_layers = shape.layers if not freeze or method.freeze.trainable_modules or method.freeze.train_embeddings else trained_layers
    # The boolean mask becomes a float bias in each layer's attention call, kept for its backward pass.
    mask_per_layer = batch * seq * seq * dtypes.attn if padded else 0
    if training.gradient_checkpointing:
        # Each layer keeps only its input; the backward pass recomputes one layer at a time.
        layer_activations = grad_layers * dtypes.stream * shape.hidden * tokens + per_layer * tokens + mask_per_layer
    else:
        layer_activations = grad_layers * (per_layer * tokens + mask_per_layer)
    final_norm = (4 * shape.hidden + 4) * tokens
    # bf16 copies of fp32 weights made by autocast are kept for the backward pass of their matmuls.
    cast_weights = 0
    if dtypes.act < w and quant.mode == "none":
        cast_weights = (grad_layers * shape.layer_linear_params + shape.vocab * shape.hidden) * dtypes.act
    activations = layer_activations + final_norm + cast_weights
    # What the forward pass leaves for the backward pass (the recomputed layer and the loss's
    # transients aside): what a saved-tensors hook counts, and the tests check.
    head_trains = full or (freeze and method.freeze.train_embeddings)
    if loss == LIGER_LOSS:
        # Liger's fused linear cross-entropy: the forward pass computes the hidden states' gradient (kept
        # for the backward pass) chunk by chunk; only one chunk of logits (and its fp32 upcast) exists at once.
        kept_for_loss = tokens * shape.hidden * dtypes.act
        logits = kept_for_loss + _liger_chunk_rows(tokens, shape) * shape.vocab * (dtypes.act + 4)
        logits += shape.vocab * shape.hidden * 4 if head_trains else 0  # its fp32 head gradient, made in the forward pass
    else:
        kept_for_loss = tokens * shape.vocab * 4  # log_softmax's fp32 output
        # Logits (compute dtype) → fp32 copy → log_softmax output kept; at the start of the backward
        # pass the fp32 gradient of the loss and of log_softmax sit beside it: 12 bytes per logit.
        logits = tokens * shape.vocab * 12
    saved_forward = activations - (per_layer * tokens if training.gradient_checkpointing else 0) + kept_for_loss
    # The adapter's and trained parameters' own gradient of the head arrives first in the backward pass.
    head_grad = shape.vocab * shape.hidden * trainable_bytes if head_trains else 0

    # Two candidate peaks: the start of the backward pass (every activation kept, the first
    # gradients arriving) and the optimizer step (every gradient, plus AdamW's temporary).
    if full or freeze:
        first_grads = head_grad + gradients // max(1, grad_layers + 1)
    else:
        first_grads = gradients  # adapters' gradients are small: count them all
    backward_peak = activations + logits + first_grads
    optimizer_temp = trainable * 4 if training.optimizer in ("adamw", "paged_adamw_32bit") else 0
    optimizer_temp = 0 if shards.optimizer_on_cpu else optimizer_temp / shards.optimizer
    step_peak = gradients + optimizer_temp
    in_backward = backward_peak >= step_peak
    parts = {
        "weights": int(weights),
        "adapter": int(adapter_bytes) if not (full or freeze) else 0,
        "optimizer": int(optimizer),
        "gradients": int(first_grads if in_backward else gradients),
        "optimizer_step": 0 if in_backward else int(optimizer_temp),
        "activations": int(activations) if in_backward else 0,
        "logits": int(logits) if in_backward else 0,
    }
    parts["allocator"] = int(ALLOCATOR_OVERHEAD * sum(parts.values()))
    parts["cuda_context"] = CUDA_CONTEXT_BYTES if device == "cuda" else 0
    total = sum(parts.values())
    details = {
        "model_type": shape.model_type, "total_params": shape.total_params, "trainable_params": int(trainable),
        "adapter_params": int(adapter_params), "weights_dtype": weights_dtype if quant.mode == "none" else f"{quant.mode}",
        "precision": precision, "batch_size": batch, "seq_len": seq, "tokens_per_batch": tokens,
        "gradient_checkpointing": training.gradient_checkpointing, "optimizer": training.optimizer,
        "activation_bytes_per_token_per_layer": int(per_layer), "peak_phase": "backward" if in_backward else "optimizer step",
        "all_gradients": int(gradients), "activations": int(activations), "logits": int(logits),
        "layer_activations": int(layer_activations), "cast_weights": int(cast_weights),
        "saved_forward": int(saved_forward), "attention": attention, "loss_path": loss,
        "attention_mask": int(mask_per_layer * (1 if training.gradient_checkpointing else grad_layers)),
        **adapter_notes,
    }
    estimate = MemoryEstimate(int(total), parts, details, gpu_free_bytes, gpu_total_bytes)
    if suggest and gpu_free_bytes is not None:
        estimate.suggestions = suggestions(preset, model_config, estimate, seq_len=seq_len, device=device)
    return estimate


def _optimizer_bytes(optimizer: str, trainable: int, trainable_bytes: int, adapted: list[Linear], shape: ModelShape, preset) -> float:
    if optimizer in ("adamw", "paged_adamw_32bit"):
        # torch AdamW keeps exp_avg and exp_avg_sq in the parameters' dtype (fp32 for adapters and master weights).
        return 2 * trainable * trainable_bytes
    if optimizer in ("adamw_8bit", "paged_adamw_8bit"):
        # Two uint8 states plus a fp32 absmax per 256 values; tensors under 4096 values stay 32-bit.
        small = _small_tensor_params(preset, shape, adapted)
        return 2 * (trainable - small) * (1 + 4 / 256) + 8 * small
    if optimizer == "sgd":
        return 0  # the Trainer's SGD has no momentum buffer
    if optimizer == "adafactor":
        # Factored second moment: a row and a column vector per matrix; no first moment by default.
        return _adafactor_bytes(preset, shape, adapted)
    return 2 * trainable * trainable_bytes


def _trainable_matrices(preset, shape: ModelShape, adapted: list[Linear]) -> list[tuple[int, int]]:
    """(rows, cols) of each trainable matrix; vectors as (n, 1)."""
    kind = _memory(preset).kind
    if kind in ("full", "freeze"):
        layers = _trainable_layers(preset, shape)
        mats = [(l.out_features, l.in_features) for l in shape.linears for _ in range(l.count)] * layers
        mats += [(shape.hidden, 1)] * (2 * layers)
        if kind == "full" or preset.method.freeze.train_embeddings:
            mats.append((shape.vocab, shape.hidden))
            if not shape.tied_embeddings:
                mats.append((shape.vocab, shape.hidden))
        return mats
    if kind == "lora":
        rank = _lora_rank(preset)
        mats = []
        for l in adapted:
            mats += [(rank, l.in_features), (l.out_features, rank)] * (l.count * shape.layers)
        return mats
    return []


def _small_tensor_params(preset, shape: ModelShape, adapted: list[Linear]) -> int:
    return sum(r * c for r, c in _trainable_matrices(preset, shape, adapted) if r * c < BNB_8BIT_MIN_SIZE)


def _adafactor_bytes(preset, shape: ModelShape, adapted: list[Linear]) -> float:
    mats = _trainable_matrices(preset, shape, adapted)
    if not mats:
        return 0
    return sum(4 * (r + c) if c > 1 else 4 * r for r, c in mats)


# --------------------------------------------------------------------------- what makes it fit


def _variant(preset, changes: dict[str, Any]):
    data = preset.model_dump(mode="python", by_alias=True)
    for dotted, value in changes.items():
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = value
    return type(preset).model_validate(data)


def _override_text(changes: dict[str, Any]) -> list[str]:
    def show(value):
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    return [f"{key}={show(value)}" for key, value in changes.items()]


def suggestions(preset, model_config: dict, estimate: MemoryEstimate, *, seq_len: int | None = None, device: str = "cuda") -> list[Suggestion]:
    """Each knob that lowers the peak, with the estimate it gives; the knobs together when one is not enough."""
    training = preset.training
    free = estimate.gpu_free_bytes
    candidates: list[tuple[str, dict[str, Any]]] = []
    if training.batch_size > 1:
        smaller = max(1, training.batch_size // 2)
        accum = training.grad_accum * training.batch_size // smaller
        candidates.append((f"halve the batch (same effective batch with grad_accum {accum})",
                           {"training.batch_size": smaller, "training.grad_accum": accum}))
        if smaller > 1:
            candidates.append((f"batch 1 (grad_accum {training.grad_accum * training.batch_size})",
                               {"training.batch_size": 1, "training.grad_accum": training.grad_accum * training.batch_size}))
    length = preset.data.max_length
    if length >= 256:
        candidates.append(("halve max_length", {"data.max_length": length // 2}))
    if not training.gradient_checkpointing:
        candidates.append(("gradient checkpointing", {"training.gradient_checkpointing": True}))
    method = METHODS[preset.method.name]
    lighter = METHODS.get(method.lighter or "")
    if lighter is not None and lighter.quantization == "required":
        if preset.model.quantization.mode == "none":
            candidates.append((f"{lighter.label} (4-bit base)", {"method.name": lighter.name, "model.quantization.mode": "4bit"}))
    elif lighter is not None:
        candidates.append((f"{lighter.label} instead of {method.label}", {"method.name": lighter.name}))
    if training.optimizer in ("adamw", "paged_adamw_32bit"):
        candidates.append(("8-bit AdamW", {"training.optimizer": "adamw_8bit"}))
    if device == "cuda" and estimate.details.get("loss_path") != LIGER_LOSS:
        candidates.append(("Liger's fused loss (no full logits; needs liger-kernel)", {"training.kernels": "liger"}))
    out: list[Suggestion] = []
    combined: dict[str, Any] = {}
    for knob, changes in candidates:
        try:
            variant = _variant(preset, changes)
        except Exception:
            continue  # a knob this preset cannot take (the schema refuses it)
        value = estimate_memory(variant, model_config, gpu_free_bytes=free, seq_len=_scaled_seq(seq_len, changes, length),
                                device=device, suggest=False).total_bytes
        if value < estimate.total_bytes:
            out.append(Suggestion(knob, _override_text(changes), value, value <= free if free is not None else None))
            if not knob.startswith("halve the batch"):  # batch 1 goes further
                combined.update(changes)
    if len(out) > 1 and free is not None and not any(s.fits for s in out):
        try:
            variant = _variant(preset, combined)
            value = estimate_memory(variant, model_config, gpu_free_bytes=free, seq_len=_scaled_seq(seq_len, combined, length),
                                    device=device, suggest=False).total_bytes
            out.append(Suggestion("all of these together", _override_text(combined), value, value <= free))
        except Exception:
            pass
    out.sort(key=lambda s: s.total_bytes)
    return out


def _scaled_seq(seq_len: int | None, changes: dict, max_length: int) -> int | None:
    if seq_len is None:
        return None
    if "data.max_length" in changes:
        return min(seq_len, changes["data.max_length"])
    return seq_len


# --------------------------------------------------------------------------- inputs: the model config


def load_model_config(model_path: str, *, revision: str | None = None) -> dict:
    """config.json of a local model directory, or of a hub id (the cache first, then one small download).

    Raises FileNotFoundError with a clear message when neither works.
    """
    local = Path(model_path).expanduser()
    if local.is_dir():
        config = local / "config.json"
        if not config.is_file():
            raise FileNotFoundError(f"{local} holds no config.json: not a model directory")
        return json.loads(config.read_text(encoding="utf-8"))
    if local.exists() or model_path.startswith(("/", "./", "../", "~")):
        raise FileNotFoundError(f"model.path {model_path}: no such model directory")
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        raise FileNotFoundError(f"{model_path}: not a local directory and huggingface_hub is missing") from None
    cached = try_to_load_from_cache(model_path, "config.json", revision=revision)
    if isinstance(cached, str):
        return json.loads(Path(cached).read_text(encoding="utf-8"))
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise FileNotFoundError(f"{model_path}: not a local directory, not in the hub cache, and the hub is offline (HF_HUB_OFFLINE)")
    try:
        path = hf_hub_download(model_path, "config.json", revision=revision)
    except Exception as exc:
        raise FileNotFoundError(f"{model_path}: cannot fetch config.json from the hub ({type(exc).__name__}: {exc})") from None
    return json.loads(Path(path).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- measured peak


def peak_record(estimate: MemoryEstimate, measured_peak_reserved: float, *, step: int | None = None,
                measured_peak_allocated: float | None = None, gpu_total: float | None = None) -> dict:
    """The measured peak beside the estimate: what the engine/jobs store in the run's info["memory"]."""
    measured = float(measured_peak_reserved)
    return {
        "estimate_bytes": estimate.total_bytes,
        "estimate_torch_bytes": estimate.torch_bytes,
        "estimate_parts": dict(estimate.parts),
        "measured_peak_reserved": int(measured),
        "measured_peak_allocated": int(measured_peak_allocated) if measured_peak_allocated is not None else None,
        "measured_step": step,
        # The preflight assumes batches padded to max_length; shorter data makes the measurement lower.
        "estimate_seq_len": estimate.details.get("seq_len"),
        # Against torch's reservation: the CUDA context is outside what torch measures.
        "ratio": round(measured / estimate.torch_bytes, 3) if estimate.torch_bytes else None,
        "gpu_total": int(gpu_total) if gpu_total else None,
    }


class PeakWatch:
    """Waits for a few CUDA memory reports of a run, then gives the record once.

    The first steps have not reached the peak yet (optimizer states appear at the first step, the
    longest batch comes later), so the record is taken at the `after`-th report, and again only
    if the peak later grows by more than 10 %.
    """

    def __init__(self, preset, model_config: dict | None = None, *, after: int = 3, precision: str | None = None):
        self.preset = preset
        self.after = after
        self.reports = 0
        self.recorded: float | None = None
        self._estimate: MemoryEstimate | None = None
        self._config = model_config
        self._precision = precision

    def estimate(self) -> MemoryEstimate | None:
        if self._estimate is None:
            try:
                config = self._config if self._config is not None else load_model_config(self.preset.model.path, revision=self.preset.model.revision)
                preset = self.preset
                if self._precision and self._precision != preset.training.precision:
                    preset = _variant(preset, {"training.precision": self._precision})
                self._estimate = estimate_memory(preset, config)
            except Exception:
                return None  # an unknown architecture: no comparison, never a failed run
        return self._estimate

    def observe(self, step: int, values: dict) -> dict | None:
        peak = values.get("mem_peak_reserved")
        if peak is None:
            return None
        self.reports += 1
        if self.reports < self.after:
            return None
        if self.recorded is not None and peak <= self.recorded * 1.1:
            return None
        estimate = self.estimate()
        if estimate is None:
            return None
        self.recorded = float(peak)
        return peak_record(estimate, peak, step=step, measured_peak_allocated=values.get("mem_peak_allocated"),
                           gpu_total=values.get("gpu_mem_total"))


def format_bytes(value: float | None) -> str:
    if value is None:
        return "?"
    if abs(value) >= GiB:
        return f"{value / GiB:.2f} GiB"
    return f"{value / MiB:.0f} MiB"
