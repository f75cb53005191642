"""Adapter → full model merges on the tiny model: the merged logits equal the adapter model's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from engine.errors import EngineError  # noqa: E402
from engine.merge import merge_adapter, run_merge  # noqa: E402
from engine.sink import Sink  # noqa: E402

PROBE_IDS = [[5, 17, 42, 99, 250, 7], [300, 301, 302], [1, 12, 120, 600, 880, 3, 4, 5, 6]]


class RecordingSink(Sink):
    def __init__(self):
        self.events, self.metric_rows = [], []

    def event(self, level, text, step=None):
        self.events.append((level, text))

    def metrics(self, step, values):
        self.metric_rows.append((step, values))


def _base(tiny_model_dir, *, quantized=False):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs = {}
    if quantized:
        kwargs = dict(
            quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32),
            device_map={"": "cpu"},
        )
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, **kwargs)


def _make_adapter(tiny_model_dir, out: Path, kind: str) -> Path:
    from peft import IA3Config, LoraConfig, get_peft_model

    torch.manual_seed(1)
    if kind == "ia3":
        config = IA3Config(target_modules=["q_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"], init_ia3_weights=False)
    else:
        # init_lora_weights=False: B is random, so the adapter changes the logits (a trained adapter would too)
        config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, use_dora=kind == "dora")
    model = get_peft_model(_base(tiny_model_dir, quantized=kind == "qlora"), config)
    if kind == "dora":
        # At initialisation DoRA's magnitude equals the norm of W + BA, which makes it LoRA exactly;
        # training moves it. Move it here so the merge has to fold the rescaling in too.
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_magnitude_vector" in name:
                    param.mul_(1 + 0.3 * torch.rand_like(param))
    model.save_pretrained(out)
    return out


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits.float()


def _adapter_logits(tiny_model_dir, adapter_dir):
    """The reference: the adapter applied (not merged) on the fp32 base."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(_base(tiny_model_dir), str(adapter_dir)).eval()
    return [_logits(model, ids) for ids in PROBE_IDS]


def _fake_qlora_run(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A run folder as the engine lays it out: frozen qlora preset + final adapter."""
    from presets import dump_preset
    from presets.schema import DataConfig, MethodConfig, ModelConfig, QuantizationConfig, TrainPreset

    run_dir = tmp_path / "runs" / "r1"
    preset = TrainPreset(
        name="q", model=ModelConfig(path=str(tiny_model_dir), quantization=QuantizationConfig(mode="4bit")),
        method=MethodConfig(name="qlora"), data=DataConfig(train_files=["unused.json"]),
    )
    run_dir.mkdir(parents=True)
    (run_dir / "preset.yaml").write_text(dump_preset(preset))
    return run_dir


@pytest.mark.parametrize("kind", ["lora", "dora", "ia3", "qlora"])
def test_merged_logits_equal_adapter_logits(kind, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    if kind == "qlora":
        adapter_dir = _make_adapter(tiny_model_dir, _fake_qlora_run(tmp_path, tiny_model_dir) / "final", kind)
    else:
        adapter_dir = _make_adapter(tiny_model_dir, tmp_path / kind, kind)
    sink = RecordingSink()
    out = tmp_path / "merged"
    summary = merge_adapter(adapter_dir, out, dtype="fp32", tolerance=1e-4, sink=sink)

    assert summary["status"] == "completed"
    assert summary["max_abs_diff"] < 1e-4 and summary["saved_max_abs_diff"] < 1e-4
    assert ("merge_max_abs_diff" in sink.metric_rows[0][1])
    # Independent check: plain transformers (no peft) loads the folder; logits match the unmerged adapter.
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    reference = _adapter_logits(tiny_model_dir, adapter_dir)
    diff = max(float((_logits(merged, ids) - ref).abs().max()) for ids, ref in zip(PROBE_IDS, reference))
    assert diff < 1e-4
    # The adapter did change the model, so the equality above is not trivially base == base.
    base = _base(tiny_model_dir).eval()
    assert max(float((_logits(base, ids) - ref).abs().max()) for ids, ref in zip(PROBE_IDS, reference)) > 1e-3
    if kind == "dora":  # and DoRA's magnitudes matter: the same A, B without them give other logits
        lora = _adapter_logits(tiny_model_dir, _make_adapter(tiny_model_dir, tmp_path / "plain-lora", "lora"))
        assert max(float((x - y).abs().max()) for x, y in zip(lora, reference)) > 1e-3
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert json.loads((out / "merge_report.json").read_text())["max_abs_diff"] == summary["max_abs_diff"]
    if kind == "qlora":
        # Merged into the fp32 base, not the 4-bit one: full-size float weights, and the 4-bit
        # adapter model differs measurably (its base was quantized).
        assert summary["quantized_run"] is True
        assert summary["quantized_max_abs_diff"] is not None and summary["quantized_max_abs_diff"] > summary["max_abs_diff"]
        from safetensors import safe_open

        with safe_open(str(out / "model.safetensors"), "pt") as f:
            q = f.get_tensor("model.layers.0.self_attn.q_proj.weight")
        assert q.dtype == torch.float32 and tuple(q.shape) == (128, 128)
        assert any("not in the 4-bit weights" in text for _, text in sink.events)


def test_merge_saves_in_the_chosen_dtype_with_tokenizer(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_dir = _make_adapter(tiny_model_dir, tmp_path / "lora", "lora")
    from presets.schema import MergePreset

    preset = MergePreset(name="m", method="adapter", adapter=str(adapter_dir), dtype="bf16")
    summary = run_merge(preset, tmp_path / "out", RecordingSink()).details
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype="auto")
    assert model.dtype == torch.bfloat16 and summary["saved_dtype"] == "bfloat16"
    # bf16 rounding moves logits a little, but the fp32 merge itself matched.
    assert summary["max_abs_diff"] < 1e-4 < summary["saved_max_abs_diff"] < 0.5
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template


def test_merge_past_tolerance_fails_loudly_and_writes_nothing(tiny_model_dir, tmp_path):
    adapter_dir = _make_adapter(tiny_model_dir, tmp_path / "lora", "lora")
    with pytest.raises(EngineError, match="differ from the adapter model's by"):
        merge_adapter(adapter_dir, tmp_path / "out", dtype="fp32", tolerance=1e-12)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.partial*"))


def test_merge_refuses_what_it_cannot_merge(tiny_model_dir, tmp_path):
    from peft import PromptTuningConfig, get_peft_model

    with pytest.raises(EngineError, match="full model, not an adapter"):
        merge_adapter(tiny_model_dir, tmp_path / "a")
    with pytest.raises(EngineError, match="no adapter_config.json"):
        merge_adapter(tmp_path, tmp_path / "b")
    prompt = get_peft_model(_base(tiny_model_dir), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    prompt.save_pretrained(tmp_path / "prompt")
    with pytest.raises(EngineError, match="cannot be folded into weights"):
        merge_adapter(tmp_path / "prompt", tmp_path / "c")


def test_merge_never_overwrites_a_model(tiny_model_dir, tmp_path):
    adapter_dir = _make_adapter(tiny_model_dir, tmp_path / "lora", "lora")
    with pytest.raises(EngineError, match="holds a model already"):
        merge_adapter(adapter_dir, tiny_model_dir)
