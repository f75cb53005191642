"""Multi-model merges (run by mergekit): whole models merged by each method of our preset form agree
with independent references written from the papers, load with plain transformers, and the merge
job's own duties — adapter sources, shape checks, cancel, shards — hold. Parity with mergekit run on
its own YAML is tests/integration/test_mergekit_parity.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engine.errors import EngineError  # noqa: E402
from engine.merge import run_merge  # noqa: E402
from engine.sink import Sink  # noqa: E402
from presets.schema import MergePreset  # noqa: E402

# --------------------------------------------------------------------------- references (numpy, written from the papers)


def ref_linear(models, weights, normalize):
    total = sum(w * m for w, m in zip(weights, models))
    return total / sum(weights) if normalize else total


def ref_slerp(t, a, b):
    a_unit, b_unit = a / np.linalg.norm(a), b / np.linalg.norm(b)
    omega = np.arccos(np.clip(np.sum(a_unit * b_unit), -1, 1))
    return (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)


def ref_keep_top_magnitude(delta, density):
    k = int(density * delta.size)
    flat = delta.flatten()
    keep = np.zeros(delta.size, dtype=bool)
    keep[np.argsort(-np.abs(flat))[:k]] = True
    return np.where(keep.reshape(delta.shape), delta, 0.0)


def ref_ties_combine(base, deltas, weights, normalize, lam):
    weighted = [w * d for w, d in zip(weights, deltas)]
    elected = np.where(sum(weighted) >= 0, 1.0, -1.0)
    out = np.zeros_like(base)
    divisor = np.zeros_like(base)
    for w, wd in zip(weights, weighted):
        agrees = np.sign(wd) == elected
        out += np.where(agrees, wd, 0.0)
        divisor += np.where(agrees, w, 0.0)
    if normalize:
        out = out / np.where(divisor == 0, 1.0, divisor)
    return base + lam * out


def _np(x):
    return x.double().numpy()


# --------------------------------------------------------------------------- whole models


def _fine_tune(tiny_model_dir: Path, out: Path, seed: int, scale: float = 0.02) -> Path:
    """A stand-in fine-tune: the tiny base with every float weight nudged."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def fine_tunes(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("finetunes")
    return [_fine_tune(tiny_model_dir, root / f"ft{i}", seed=i + 1) for i in range(2)]


def _state(path):
    from transformers import AutoModelForCausalLM

    return {k: v.float() for k, v in AutoModelForCausalLM.from_pretrained(path, dtype="auto").state_dict().items()}


class RecordingSink(Sink):
    def __init__(self, stop_after=None):
        self.metric_rows, self.events, self.stop_after = [], [], stop_after

    def metrics(self, step, values):
        self.metric_rows.append((step, values))

    def event(self, level, text, step=None):
        self.events.append((level, text))

    def should_stop(self):
        if self.stop_after is not None and len(self.metric_rows) >= self.stop_after:
            return "cancel"
        return None


@pytest.mark.parametrize("method", ["linear", "slerp", "task_arithmetic", "ties", "dare_linear", "dare_ties"])
def test_whole_model_merge_equals_tensorwise_reference(method, fine_tunes, tiny_model_dir, tmp_path):
    preset = MergePreset(
        name="m", method=method, dtype="fp32", t=0.3, seed=5, base_model=str(tiny_model_dir),
        models=[{"path": str(fine_tunes[0]), "weight": 0.7, "density": 0.6}, {"path": str(fine_tunes[1]), "weight": 0.4, "density": 0.9}],
    )
    sink = RecordingSink()
    outcome = run_merge(preset, tmp_path / "out", sink)
    summary = outcome.details
    assert outcome.status == "completed" and summary["tensors"] > 30
    assert sink.metric_rows[-1][1]["tensors_done"] == sink.metric_rows[-1][1]["tensors_total"]
    saved = next(text for _, text in sink.events if text.startswith("saved the merged model"))
    assert "MiB" in saved and " MB" not in saved  # one unit everywhere: the TUI's

    merged = _state(tmp_path / "out")  # plain transformers loads it
    base, a, b = _state(tiny_model_dir), _state(fine_tunes[0]), _state(fine_tunes[1])
    name = "model.layers.1.mlp.down_proj.weight"
    if method.startswith("dare"):
        # DARE is random: the drop must be reproducible (same seed, same output) and of the right share.
        again = run_merge(preset, tmp_path / "again", RecordingSink())
        assert again.status == "completed"
        assert torch.equal(_state(tmp_path / "again")[name], merged[name])
        delta_a = a[name] - base[name]
        assert not torch.allclose(merged[name], base[name] + 0.7 * delta_a + 0.4 * (b[name] - base[name]))
    else:
        # mergekit's defaults: normalize for linear and ties, lambda 1; its TIES sign election sums weighted deltas
        x = {k: _np(v[name]) for k, v in (("base", base), ("a", a), ("b", b))}
        deltas = [x["a"] - x["base"], x["b"] - x["base"]]
        expected = {
            "linear": lambda: ref_linear([x["a"], x["b"]], [0.7, 0.4], True),
            "slerp": lambda: ref_slerp(0.3, x["a"], x["b"]),
            "task_arithmetic": lambda: x["base"] + 0.7 * deltas[0] + 0.4 * deltas[1],
            "ties": lambda: ref_ties_combine(
                x["base"], [ref_keep_top_magnitude(deltas[0], 0.6), ref_keep_top_magnitude(deltas[1], 0.9)], [0.7, 0.4], True, 1.0),
        }[method]()
        np.testing.assert_allclose(_np(merged[name]), expected, atol=1e-5, rtol=0)
    report = json.loads((tmp_path / "out" / "merge_report.json").read_text())
    assert report["method"] == method


def test_linear_merge_of_one_model_reproduces_it_and_generates(fine_tunes, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    preset = MergePreset(name="m", method="linear", dtype="fp32", models=[{"path": str(fine_tunes[0]), "weight": 1.0}])
    run_merge(preset, tmp_path / "out", RecordingSink())
    merged, original = _state(tmp_path / "out"), _state(fine_tunes[0])
    assert merged.keys() == original.keys()
    assert all(torch.equal(merged[k], original[k]) for k in original)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    ids = tokenizer("The capital of", return_tensors="pt")["input_ids"]
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] > ids.shape[1]


def test_merge_writes_shards_with_an_index(fine_tunes, tmp_path):
    from engine.merge import merge_models

    preset = MergePreset(name="m", method="slerp", dtype="bf16", t=0.0, models=[{"path": str(p)} for p in fine_tunes])
    summary = merge_models(preset, tmp_path / "out", RecordingSink(), max_shard_bytes=300_000)
    assert summary["shards"] > 1
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == summary["shards"]
    merged, first = _state(tmp_path / "out"), _state(fine_tunes[0])
    assert all(torch.equal(merged[k], first[k].bfloat16().float()) for k in first)  # t=0 is model 0, in bf16


def test_adapter_sources_are_merged_into_their_base_first(fine_tunes, tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    model.save_pretrained(tmp_path / "adapter")
    folded = model.merge_and_unload().state_dict()
    preset = MergePreset(
        name="m", method="task_arithmetic", dtype="fp32", base_model=str(tiny_model_dir),
        models=[{"path": str(tmp_path / "adapter"), "weight": 1.0}],
    )
    run_merge(preset, tmp_path / "out", RecordingSink())
    merged = _state(tmp_path / "out")
    name = "model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(merged[name], folded[name].float(), atol=1e-6, rtol=0)
    assert not (tmp_path / "out" / "_sources").exists()


def test_cancelled_merge_leaves_nothing(fine_tunes, tmp_path):
    preset = MergePreset(name="m", method="linear", dtype="fp32", models=[{"path": str(p)} for p in fine_tunes])
    outcome = run_merge(preset, tmp_path / "out", RecordingSink(stop_after=1))
    assert (outcome.status, outcome.stop_reason) == ("cancelled", "cancel")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".*partial"))


def test_mismatched_models_are_refused_with_the_tensor_named(fine_tunes, tmp_path):
    from engine.tiny import make_tiny_model

    other = make_tiny_model(tmp_path / "other", vocab_size=600)  # another vocabulary: embeddings differ
    preset = MergePreset(name="m", method="linear", models=[{"path": str(fine_tunes[0])}, {"path": str(other)}])
    with pytest.raises(EngineError, match=r"(embed_tokens|lm_head)\.weight has shape \(600, 128\)"):
        run_merge(preset, tmp_path / "out", RecordingSink())
    missing = MergePreset(name="m", method="linear", models=[{"path": str(fine_tunes[0])}, {"path": str(tmp_path / "nope")}])
    with pytest.raises(EngineError, match=r"models\[1\]\.path"):
        run_merge(missing, tmp_path / "out", RecordingSink())
    assert not (tmp_path / "out").exists()
