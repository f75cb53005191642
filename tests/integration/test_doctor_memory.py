"""Memory preflight: the arithmetic against hand computation for a Qwen2.5-0.5B-shaped config, parameter
counts against real transformers/peft models, the activation term against what autograd really keeps
(counted with saved-tensor hooks on the CPU), the knobs' directions, and measured peaks on a GPU."""

from __future__ import annotations

import copy

import pytest
import yaml

from engine.doctor.memory import (
    BNB_BLOCK,
    BNB_DQ_BLOCK,
    GiB,
    PeakWatch,
    attention_kernel,
    estimate_memory,
    load_model_config,
    model_shape,
    peak_record,
)
from presets import load_preset_text

# The shape of Qwen/Qwen2.5-0.5B (its config.json, abridged): written here, nothing is downloaded.
QWEN_05B = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
    "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2, "vocab_size": 151936,
    "tie_word_embeddings": True, "hidden_act": "silu", "max_position_embeddings": 32768,
}
LLAMA_7B = {
    "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 32, "vocab_size": 32000, "tie_word_embeddings": False,
}


def make_preset(**changes):
    data = {
        "name": "memory-test",
        # sdpa: padded batches keep a dense mask whatever flash-attn this machine has (auto: its own test).
        "model": {"path": "Qwen/Qwen2.5-0.5B", "attn_implementation": "sdpa"},
        "method": {"name": "lora", "lora": {"r": 8, "dropout": 0.0, "target_modules": "all-linear"}},
        "data": {"train_files": ["train.json"], "max_length": 512},
        "training": {"batch_size": 1},
    }
    for dotted, value in changes.items():
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return load_preset_text(yaml.safe_dump(data), "memory-test")


# --------------------------------------------------------------------------- hand computation


def test_qwen_05b_parameter_count_matches_the_published_one():
    shape = model_shape(QWEN_05B)
    # q (896x896 + bias) + k, v (896x128 + bias) + o (896x896) + 3 MLP matrices (896x4864) + 2 norms
    per_layer = (896 * 896 + 896) + 2 * (896 * 128 + 128) + 896 * 896 + 3 * 896 * 4864 + 2 * 896
    assert shape.total_params == 24 * per_layer + 151936 * 896 + 896 == 494_032_768


def test_qwen_05b_lora_estimate_by_hand():
    estimate = estimate_memory(make_preset(), QWEN_05B, gpu_free_bytes=None)
    parts, details = estimate.parts, estimate.details
    # LoRA r=8 on the 7 linears of each of 24 layers: r * (in + out) each.
    lora = 24 * 8 * ((896 + 896) + 2 * (896 + 128) + (896 + 896) + 3 * (896 + 4864))
    assert details["adapter_params"] == details["trainable_params"] == lora == 4_399_104
    assert parts["weights"] == 494_032_768 * 2  # bf16 base (the training precision on a GPU)
    assert parts["adapter"] == lora * 4  # peft keeps adapters in fp32
    assert parts["gradients"] == lora * 4
    assert parts["optimizer"] == lora * 8  # AdamW: two fp32 moments
    # Activations per token and layer under bf16 autocast, batch 1 (no padding mask, GQA kept native):
    norms = 2 * (4 * 896 + 4)  # fp32 copy of x and rsqrt, twice
    adapter_inputs = 6 * 2 * 896 + 2 * 4864  # each adapter keeps its own bf16 copy of its input
    attention = 2 * (2 * 896 + 2 * 128) + 4 * 14  # q, out, k, v (2 kv heads) + logsumexp
    mlp = 3 * 2 * 4864  # gate, silu(gate), up
    lora_a = 7 * 2 * 8  # x·A for each adapter
    per_token_layer = norms + adapter_inputs + attention + mlp + lora_a
    assert details["activation_bytes_per_token_per_layer"] == per_token_layer == 61_104
    tokens = 512
    assert parts["activations"] == 24 * per_token_layer * tokens + (4 * 896 + 4) * tokens
    assert parts["logits"] == tokens * 151936 * 12  # bf16 logits → fp32 → log_softmax + gradients
    torch_parts = sum(v for k, v in parts.items() if k not in ("allocator", "cuda_context"))
    assert parts["allocator"] == int(0.05 * torch_parts)
    assert estimate.total_bytes == sum(parts.values())
    assert estimate.torch_bytes == estimate.total_bytes - parts["cuda_context"]


def test_qlora_weights_by_hand_with_and_without_double_quant():
    linear = 24 * ((896 * 896 + 896) + 2 * (896 * 128 + 128) + 896 * 896 + 3 * 896 * 4864)
    other = 494_032_768 - linear
    for double_quant, constants in ((True, 1 / BNB_BLOCK + 4 / (BNB_BLOCK * BNB_DQ_BLOCK)), (False, 4 / BNB_BLOCK)):
        preset = make_preset(**{"method.name": "qlora", "model.quantization.mode": "4bit",
                                "model.quantization.double_quant": double_quant})
        weights = estimate_memory(preset, QWEN_05B).parts["weights"]
        # 4 bits per linear weight + block constants; the (tied) embedding stays bf16 (engine.models.
        # prepare_kbit_training), the norms and biases are upcast to fp32.
        embedding = 151936 * 896
        assert weights == int(linear * (0.5 + constants) + embedding * 2 + (other - embedding) * 4)


# --------------------------------------------------------------------------- directions of the knobs


def test_knobs_move_the_estimate_the_right_way():
    base = estimate_memory(make_preset(**{"training.batch_size": 4}), QWEN_05B)
    checkpointed = estimate_memory(make_preset(**{"training.batch_size": 4, "training.gradient_checkpointing": True}), QWEN_05B)
    assert checkpointed.parts["activations"] < base.parts["activations"] / 5
    assert checkpointed.total_bytes < base.total_bytes
    bigger_batch = estimate_memory(make_preset(**{"training.batch_size": 8}), QWEN_05B)
    longer = estimate_memory(make_preset(**{"training.batch_size": 4, "data.max_length": 1024}), QWEN_05B)
    assert bigger_batch.total_bytes > base.total_bytes and longer.total_bytes > base.total_bytes
    # Activations are linear in batch; the float attention mask makes length slightly super-linear.
    assert bigger_batch.parts["activations"] == pytest.approx(2 * base.parts["activations"], rel=0.01)
    assert longer.parts["activations"] > 2 * base.parts["activations"]


def test_qlora_cuts_the_linear_weights_about_four_times():
    lora = estimate_memory(make_preset(), LLAMA_7B)
    qlora = estimate_memory(make_preset(**{"method.name": "qlora", "model.quantization.mode": "4bit"}), LLAMA_7B)
    ratio = lora.parts["weights"] / qlora.parts["weights"]
    assert 3.0 < ratio < 4.0  # 2 bytes → ~0.52 bytes per linear weight; embeddings stay (in fp32)
    assert qlora.total_bytes < lora.total_bytes


def test_optimizers_and_full_fine_tuning():
    full = {"method.name": "full"}
    adamw = estimate_memory(make_preset(**full), QWEN_05B)
    total = 494_032_768
    assert adamw.details["trainable_params"] == total
    assert adamw.details["weights_dtype"] == "fp32"  # trained weights are loaded in fp32 (engine.models)
    assert adamw.parts["optimizer"] == total * 8
    eight_bit = estimate_memory(make_preset(**full, **{"training.optimizer": "adamw_8bit"}), QWEN_05B)
    assert total * 2 <= eight_bit.parts["optimizer"] < total * 2.1
    sgd = estimate_memory(make_preset(**full, **{"training.optimizer": "sgd"}), QWEN_05B)
    assert sgd.parts["optimizer"] == 0
    adafactor = estimate_memory(make_preset(**full, **{"training.optimizer": "adafactor"}), QWEN_05B)
    assert 0 < adafactor.parts["optimizer"] < total * 0.05  # factored: rows + columns per matrix
    # Full fine-tuning in fp32 weights under bf16 autocast keeps bf16 copies of the weights too.
    assert adamw.details["cast_weights"] > 0


def test_freeze_keeps_no_activations_below_the_trained_layers():
    frozen = estimate_memory(make_preset(**{"method.name": "freeze", "method.freeze.trainable_layers": 2}), QWEN_05B)
    full = estimate_memory(make_preset(**{"method.name": "full"}), QWEN_05B)
    assert frozen.details["layer_activations"] < full.details["layer_activations"] / 8
    assert frozen.details["trainable_params"] == 2 * (model_shape(QWEN_05B).layer_linear_params + 2 * 896)


def test_suggestions_say_what_fits_and_are_estimated_like_the_preset():
    preset = make_preset(**{"training.batch_size": 8, "data.max_length": 1024})
    estimate = estimate_memory(preset, QWEN_05B, gpu_free_bytes=12 * GiB)
    assert estimate.fits is False
    knobs = {s.knob: s for s in estimate.suggestions}
    assert any("checkpointing" in k for k in knobs) and any("batch" in k for k in knobs)
    # On this small model with a large vocabulary, a 4-bit base saves less than its fp32 stream costs.
    assert not any("QLoRA" in k for k in knobs)
    assert [s.total_bytes for s in estimate.suggestions] == sorted(s.total_bytes for s in estimate.suggestions)
    assert any(s.fits for s in estimate.suggestions)
    checkpointing = next(s for k, s in knobs.items() if "checkpointing" in k)
    assert checkpointing.overrides == ["training.gradient_checkpointing=true"]
    again = estimate_memory(make_preset(**{"training.batch_size": 8, "data.max_length": 1024,
                                           "training.gradient_checkpointing": True}), QWEN_05B)
    assert checkpointing.total_bytes == again.total_bytes
    roomy = estimate_memory(preset, QWEN_05B, gpu_free_bytes=80 * GiB)
    assert roomy.fits is True
    # A 7B model on a 24 GB card: the 4-bit base is what makes it fit.
    big = estimate_memory(make_preset(**{"training.gradient_checkpointing": True}), LLAMA_7B, gpu_free_bytes=12 * GiB)
    qlora = next(s for s in big.suggestions if "QLoRA" in s.knob)
    assert big.fits is False and qlora.fits and qlora.total_bytes < big.total_bytes / 2


def test_unknown_configs_are_refused_with_the_missing_key():
    with pytest.raises(ValueError, match="hidden_size"):
        model_shape({"model_type": "mystery", "num_hidden_layers": 2})


def test_load_model_config_reads_a_local_model(tiny_model_dir, tmp_path):
    config = load_model_config(str(tiny_model_dir))
    assert config["hidden_size"] == 128
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model_config(str(tmp_path))


# --------------------------------------------------------------------------- against real models


SMALL = dict(hidden_size=96, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=500)


def _real_model(model_type: str, tied: bool):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, **SMALL, tie_word_embeddings=tied)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config), {"model_type": model_type, **SMALL, "tie_word_embeddings": tied}


@pytest.mark.parametrize("model_type,tied", [("llama", False), ("qwen2", True), ("mistral", False)])
def test_parameter_counts_match_transformers(model_type, tied):
    model, config = _real_model(model_type, tied)
    assert model_shape(config).total_params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("method,targets", [("lora", "all-linear"), ("lora", ["q_proj", "v_proj"]), ("dora", "all-linear")])
def test_adapter_counts_match_peft(method, targets):
    from peft import LoraConfig, get_peft_model

    from engine.methods import trainable_parameters

    model, config = _real_model("llama", False)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=targets, use_dora=method == "dora", task_type="CAUSAL_LM"))
    preset = make_preset(**{"method.name": method, "method.lora.r": 4, "method.lora.target_modules": targets})
    assert estimate_memory(preset, config).details["adapter_params"] == trainable_parameters(peft_model)[0]


# What autograd keeps between the forward and the backward pass, counted on the CPU with saved-tensor
# hooks (unique storages, parameters excluded), against the estimate's activation term. CPU autocast
# follows the same caching rules as CUDA's, so the bf16 cases check the mixed-precision arithmetic.
# DoRA is left out: its forward pass builds a detached branch (an identity matrix through the adapter)
# whose saved tensors are freed at once, which a pack hook cannot tell from the ones that stay.
SAVED_CASES = [
    ("qwen2", "lora", "fp32", "fp32", dict(batch=2, padded=True)),
    ("qwen2", "lora", "bf16", "bf16", dict(batch=2, padded=True)),
    ("llama", "lora", "fp32", "bf16", dict(batch=2, padded=True)),
    ("llama", "full", "fp32", "bf16", dict(batch=2, padded=True)),
    ("llama", "lora", "fp32", "fp32", dict(batch=2, padded=True, dropout=0.1)),
    ("llama", "lora", "bf16", "bf16", dict(batch=1, padded=False, checkpointing=True)),
    ("llama", "lora_qv", "fp32", "fp32", dict(batch=2, padded=True)),
    ("llama", "ia3", "fp32", "fp32", dict(batch=2, padded=True)),
]


@pytest.mark.parametrize("model_type,method,weights,precision,opts", SAVED_CASES)
def test_activation_estimate_matches_what_autograd_keeps(model_type, method, weights, precision, opts):
    import contextlib

    import torch
    from peft import LoraConfig, get_peft_model

    dims = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=3000)
    from transformers import AutoConfig, AutoModelForCausalLM

    tied = model_type == "qwen2"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        AutoConfig.for_model(model_type, **dims, tie_word_embeddings=tied), attn_implementation="sdpa"
    ).to(torch.bfloat16 if weights == "bf16" else torch.float32)
    targets = ["q_proj", "v_proj"] if method == "lora_qv" else "all-linear"
    dropout = opts.get("dropout", 0.0)
    if method.startswith("lora"):
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM"))
    elif method == "ia3":
        from peft import IA3Config

        linears = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        model = get_peft_model(model, IA3Config(target_modules=linears, feedforward_modules=linears[4:], task_type="CAUSAL_LM"))
    if opts.get("checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.train()
    batch, length = opts["batch"], 128
    ids = torch.randint(0, dims["vocab_size"], (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)
    if opts["padded"]:
        mask[0, length // 2 :] = 0
    labels = ids.masked_fill(mask == 0, -100)

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            kept.setdefault(storage.data_ptr(), storage.nbytes())
        return tensor

    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()  # the graph is whole: everything it kept was counted
    measured = sum(kept.values())

    preset = make_preset(**{
        "model.dtype": weights, "training.precision": precision, "training.batch_size": batch,
        "training.gradient_checkpointing": bool(opts.get("checkpointing")), "data.max_length": length,
        "method.name": method if method in ("full", "ia3") else "lora", "method.lora.dropout": dropout,
        "method.lora.target_modules": targets,
    })
    config = {"model_type": model_type, **dims, "tie_word_embeddings": tied}
    estimated = estimate_memory(preset, config, device="cpu").details["saved_forward"]
    assert estimated == pytest.approx(measured, rel=0.10), (measured, estimated)


# --------------------------------------------------------------------------- measured peak beside the estimate


def test_peak_watch_records_the_measured_peak_once_after_a_few_reports():
    watch = PeakWatch(make_preset(), QWEN_05B, after=3)
    assert watch.observe(10, {"loss": 2.0}) is None  # CPU runs report no memory
    assert watch.observe(20, {"mem_peak_reserved": 3.0 * GiB}) is None
    assert watch.observe(30, {"mem_peak_reserved": 3.1 * GiB}) is None
    record = watch.observe(40, {"mem_peak_reserved": 3.2 * GiB, "mem_peak_allocated": 2.9 * GiB, "gpu_mem_total": 80 * GiB})
    assert record["measured_peak_reserved"] == int(3.2 * GiB) and record["measured_step"] == 40
    estimate = estimate_memory(make_preset(), QWEN_05B)
    assert record["estimate_torch_bytes"] == estimate.torch_bytes
    assert record["ratio"] == round(3.2 * GiB / estimate.torch_bytes, 3)
    assert watch.observe(50, {"mem_peak_reserved": 3.25 * GiB}) is None  # not news
    assert watch.observe(60, {"mem_peak_reserved": 4.0 * GiB})["measured_peak_reserved"] == int(4.0 * GiB)


def test_live_doctor_reports_the_peak_as_a_memory_finding(tiny_model_dir):
    from engine.doctor.live import LiveDoctor

    preset = make_preset(**{"model.path": str(tiny_model_dir)})
    doctor = LiveDoctor(preset, precision="bf16")
    found = []
    for step in (5, 10, 15, 20):
        found += doctor.observe(step, {"loss": 3.0, "mem_peak_reserved": 50e6, "mem_peak_allocated": 40e6, "gpu_mem_total": 80e9})
    memory = [f for f in found if f.rule == "memory"]
    assert len(memory) == 1 and memory[0].severity == "info" and memory[0].step_start == 15
    assert memory[0].evidence["measured_peak_reserved"] == 50_000_000 and memory[0].evidence["estimate_torch_bytes"] > 0
    # Near the GPU's limit it is a warning.
    doctor = LiveDoctor(preset, precision="bf16")
    for step in (5, 10, 15):
        found = doctor.observe(step, {"loss": 3.0, "mem_peak_reserved": 79e9, "gpu_mem_total": 80e9})
    assert [f.severity for f in found if f.rule == "memory"] == ["warning"]


def test_peak_record_compares_with_torch_not_the_cuda_context():
    estimate = estimate_memory(make_preset(), QWEN_05B)
    record = peak_record(estimate, estimate.torch_bytes)
    assert record["ratio"] == 1.0 and record["estimate_bytes"] > record["estimate_torch_bytes"]


# --------------------------------------------------------------------------- on a GPU


def _long_rows(count: int, words: int) -> list[dict]:
    import random

    from engine.demo_data import demo_rows

    rng = random.Random(0)
    vocabulary = " ".join(r["output"] for r in demo_rows()).split()
    return [{"instruction": f"Say something {i}.", "input": "", "output": " ".join(rng.choice(vocabulary) for _ in range(words))}
            for i in range(count)]


GPU_CASES = {
    "lora b4x512": {"training.batch_size": 4},
    "lora b4x512 checkpointing": {"training.batch_size": 4, "training.gradient_checkpointing": True},
    "qlora b4x512": {"training.batch_size": 4, "method.name": "qlora", "model.quantization.mode": "4bit"},
    "full b2x512": {"training.batch_size": 2, "method.name": "full"},
}


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(GPU_CASES))
def test_estimate_within_20_percent_of_the_measured_peak(case, tmp_path):
    """A random-initialised model of Qwen2.5-0.5B's shape, rows longer than max_length (every batch full)."""
    import json

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from engine.sink import Sink
    from engine.tiny import make_tokenizer
    from engine.train import train

    model_dir = tmp_path / "qwen-shaped"
    config = AutoConfig.for_model(**copy.deepcopy(QWEN_05B))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).to(torch.bfloat16).save_pretrained(model_dir)
    make_tokenizer().save_pretrained(model_dir)
    data = tmp_path / "long.json"
    data.write_text(json.dumps(_long_rows(64, 700)))

    overrides = {"model.path": str(model_dir), "data.train_files": [str(data)], "data.max_length": 512,
                 "method.lora.dropout": 0.05, "training.max_steps": 8, "training.logging_steps": 1,
                 "training.save_steps": 1000, **GPU_CASES[case]}
    preset = make_preset(**overrides)

    class Peaks(Sink):
        peak = 0.0

        def metrics(self, step, values):
            self.peak = max(self.peak, values.get("mem_peak_reserved", 0.0))

    sink = Peaks()
    torch.cuda.reset_peak_memory_stats()
    result = train(preset, tmp_path / "run", sink)
    assert result.status == "completed"
    estimate = estimate_memory(preset, json.loads((model_dir / "config.json").read_text()), seq_len=512)
    print(f"{case}: estimated {estimate.torch_bytes / GiB:.2f} GiB, measured {sink.peak / GiB:.2f} GiB")
    assert sink.peak == pytest.approx(estimate.torch_bytes, rel=0.20)


# --------------------------------------------------------------------------- attention kernel and loss path


def test_flash_and_flex_attention_drop_the_dense_mask_by_hand():
    """Issue 18: flash and flex attention take the boundaries, so no B×S×S mask and no repeated k/v."""
    preset = make_preset(**{"training.batch_size": 8, "data.max_length": 1024})
    sdpa = estimate_memory(preset, QWEN_05B, attention="sdpa")
    # The dense bf16 mask each of the 24 layers keeps for its backward pass: 8 × 1024 × 1024 × 2 bytes.
    mask = 24 * 8 * 1024 * 1024 * 2
    assert sdpa.details["attention_mask"] == mask == 402_653_184
    # With a mask, transformers repeats k and v to all 14 heads (q width 896) instead of keeping 2 (128):
    # 2 tensors × (896 - 128) × 2 bytes per token and layer.
    repeat_kv = 24 * 8 * 1024 * 2 * (896 - 128) * 2
    for kernel in ("flash_attention_2", "flex_attention"):
        maskless = estimate_memory(preset, QWEN_05B, attention=kernel)
        assert maskless.details["attention"] == kernel and maskless.details["attention_mask"] == 0
        assert sdpa.details["activations"] - maskless.details["activations"] == mask + repeat_kv
    # Packing with sdpa keeps the block-diagonal mask even at batch 1; flash does not need one.
    packed = make_preset(**{"data.max_length": 1024, "data.packing": True})
    assert estimate_memory(packed, QWEN_05B, attention="sdpa").details["attention_mask"] == 24 * 1024 * 1024 * 2
    assert estimate_memory(packed, QWEN_05B, attention="flash_attention_2").details["attention_mask"] == 0
    assert estimate_memory(packed, QWEN_05B, attention="eager").details["attention_mask"] == 24 * 1024 * 1024 * 2


def test_fused_loss_materialises_no_full_logits_by_hand():
    """Issue 18: the built-in lora preset's shape on Qwen2.5-0.5B needs ~14.9 GB for logits on the plain path."""
    preset = make_preset(**{"training.batch_size": 8, "data.max_length": 1024})
    plain = estimate_memory(preset, QWEN_05B, attention="sdpa", loss="plain")
    tokens = 8 * 1024
    assert plain.details["logits"] == tokens * 151936 * 12 == 14_935_916_544  # the 14.9 GB
    fused = estimate_memory(preset, QWEN_05B, attention="sdpa", loss="liger_fused_linear_cross_entropy")
    # Liger: the hidden states' bf16 gradient (tokens × 896 × 2) plus one chunk of logits in bf16 and fp32;
    # chunk rows = next power of two of ceil(8192 / ceil(151936 / 896)) = ceil(8192 / 170) = 49 → 64.
    fused_logits = tokens * 896 * 2 + 64 * 151936 * (2 + 4)
    assert fused.details["logits"] == fused_logits == 73_023_488
    assert fused.details["loss_path"] == "liger_fused_linear_cross_entropy"
    assert fused.parts["logits"] == fused_logits and plain.parts["logits"] == 14_935_916_544
    # Everything else is the same; the allocator's 5 % follows the torch total.
    same = ("weights", "adapter", "optimizer", "gradients", "activations")
    assert all(fused.parts[k] == plain.parts[k] for k in same)
    assert plain.total_bytes - fused.total_bytes == pytest.approx((14_935_916_544 - fused_logits) * 1.05, abs=2)
    # What the forward pass leaves for the backward pass: the gradient of the hidden states, not log_softmax's output.
    assert plain.details["saved_forward"] - fused.details["saved_forward"] == tokens * 151936 * 4 - tokens * 896 * 2


def test_the_estimate_follows_the_preset_kernels_by_default():
    preset = make_preset(**{"training.batch_size": 8, "data.max_length": 1024, "model.attn_implementation": "flash_attention_2"})
    estimate = estimate_memory(preset, QWEN_05B)
    assert estimate.details["attention"] == "flash_attention_2" and estimate.details["attention_mask"] == 0
    on_cpu = estimate_memory(make_preset(), QWEN_05B, device="cpu")
    assert on_cpu.details["loss_path"] == "plain"  # Liger's kernels are Triton: CUDA only


def test_auto_attention_is_the_engine_choice_for_the_batch_layout():
    from engine.attention import DeviceKind

    hopper = DeviceKind(cuda=True, capability=(9, 0), flash_attn_installed=False, flex_available=True)
    packed = make_preset(**{"model.attn_implementation": "auto", "data.packing": True, "data.max_length": 1024})
    padded = make_preset(**{"model.attn_implementation": "auto", "training.batch_size": 8, "data.max_length": 1024})
    assert attention_kernel(packed, "cuda", device_kind=hopper) == "flex_attention"
    assert attention_kernel(padded, "cuda", device_kind=hopper) == "sdpa"
    with_flash = DeviceKind(cuda=True, capability=(9, 0), flash_attn_installed=True, flex_available=True)
    assert attention_kernel(padded, "cuda", device_kind=with_flash) == "flash_attention_2"
    assert attention_kernel(packed, "cpu") == "sdpa"  # flex has no CPU backward
    # The estimate follows: no mask for the packed run on that GPU.
    flex = estimate_memory(packed, QWEN_05B, attention=attention_kernel(packed, "cuda", device_kind=hopper))
    assert flex.details["attention_mask"] == 0
