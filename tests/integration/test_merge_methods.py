"""Multi-model merges: each method against an independent reference, its identities, and whole
models merged tensor by tensor that load with plain transformers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engine.errors import EngineError  # noqa: E402
from engine.merge import merge_tensor, run_merge, slerp  # noqa: E402
from engine.sink import Sink  # noqa: E402
from presets.schema import MergePreset  # noqa: E402

SHAPE = (6, 10)


@pytest.fixture
def tensors():
    g = torch.Generator().manual_seed(7)
    base = torch.randn(SHAPE, generator=g)
    models = [base + 0.3 * torch.randn(SHAPE, generator=g) for _ in range(3)]
    return base, models


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


# --------------------------------------------------------------------------- methods vs references


@pytest.mark.parametrize("normalize", [True, False])
def test_linear_matches_reference(tensors, normalize):
    _, models = tensors
    weights = [0.5, 0.3, 0.2]
    got = merge_tensor("linear", models, weights=weights, normalize=normalize)
    np.testing.assert_allclose(_np(got), ref_linear([_np(m) for m in models], weights, normalize), atol=1e-6)


@pytest.mark.parametrize("t", [0.25, 0.5, 0.9])
def test_slerp_matches_reference(tensors, t):
    base, models = tensors
    a, b = models[0], -0.5 * models[1]  # far from parallel, so the spherical branch is used
    got = merge_tensor("slerp", [a, b], weights=[1, 1], t=t)
    np.testing.assert_allclose(_np(got), ref_slerp(t, _np(a), _np(b)), atol=1e-6)


def test_slerp_of_nearly_parallel_tensors_is_linear():
    a = torch.ones(50)
    b = a * 2 + 1e-6
    np.testing.assert_allclose(_np(slerp(0.3, a, b)), _np(0.7 * a + 0.3 * b), atol=1e-6)


def test_task_arithmetic_matches_reference(tensors):
    base, models = tensors
    weights, lam = [1.0, 0.5, -0.25], 0.8
    got = merge_tensor("task_arithmetic", models, base, weights=weights, lambda_=lam)
    want = _np(base) + lam * sum(w * (_np(m) - _np(base)) for w, m in zip(weights, models))
    np.testing.assert_allclose(_np(got), want, atol=1e-6)


@pytest.mark.parametrize("normalize", [True, False])
def test_ties_matches_reference(tensors, normalize):
    base, models = tensors
    weights, densities, lam = [1.0, 0.6, 0.3], [0.5, 0.3, 0.8], 0.9
    got = merge_tensor("ties", models, base, weights=weights, densities=densities, normalize=normalize, lambda_=lam)
    deltas = [ref_keep_top_magnitude(_np(m) - _np(base), d) for m, d in zip(models, densities)]
    want = ref_ties_combine(_np(base), deltas, weights, normalize, lam)
    np.testing.assert_allclose(_np(got), want, atol=1e-6)


def _dare_masks(seed, shapes_and_densities):
    """The drop masks DARE draws: Bernoulli(density) per entry, model after model, from `seed`."""
    torch.manual_seed(seed)
    return [torch.bernoulli(torch.full(shape, d)).double().numpy() if d < 1 else np.ones(shape) for shape, d in shapes_and_densities]


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
@pytest.mark.parametrize("normalize", [True, False])
def test_dare_matches_reference(tensors, method, normalize):
    base, models = tensors
    weights, densities, lam = [1.0, 0.6, 0.3], [0.5, 0.3, 0.8], 1.2
    torch.manual_seed(11)
    got = merge_tensor(method, models, base, weights=weights, densities=densities, normalize=normalize, lambda_=lam)
    masks = _dare_masks(11, [(SHAPE, d) for d in densities])
    deltas = [mask * (_np(m) - _np(base)) / d for mask, m, d in zip(masks, models, densities)]
    if method == "dare_linear":
        want = _np(base) + lam * ref_linear(deltas, weights, normalize)
    else:
        want = ref_ties_combine(_np(base), deltas, weights, normalize, lam)
    np.testing.assert_allclose(_np(got), want, atol=1e-6)


def test_dare_keeps_the_density_share_and_the_expected_value():
    torch.manual_seed(0)
    base = torch.zeros(200_000)
    model = torch.full((200_000,), 0.5)
    got = merge_tensor("dare_linear", [model], base, weights=[1.0], densities=[0.3], normalize=False)
    kept = (got != 0).double().mean().item()
    assert abs(kept - 0.3) < 0.01
    assert torch.allclose(got[got != 0], torch.tensor(0.5 / 0.3))  # survivors rescaled by 1/density
    assert abs(got.double().mean().item() - 0.5) < 0.01  # the task vector's expectation is kept


# --------------------------------------------------------------------------- identities


def test_slerp_endpoints_are_exact(tensors):
    _, models = tensors
    assert torch.equal(merge_tensor("slerp", models[:2], weights=[1, 1], t=0.0), models[0])
    assert torch.equal(merge_tensor("slerp", models[:2], weights=[1, 1], t=1.0), models[1])


@pytest.mark.parametrize("normalize", [True, False])
def test_linear_of_one_model_with_weight_one_is_that_model(tensors, normalize):
    _, models = tensors
    assert torch.equal(merge_tensor("linear", [models[0]], weights=[1.0], normalize=normalize), models[0])


@pytest.mark.parametrize("method", ["ties", "dare_linear", "dare_ties"])
@pytest.mark.parametrize("weight,normalize", [(1.0, True), (0.7, False)])
def test_density_one_with_one_model_is_task_arithmetic(tensors, method, weight, normalize):
    base, models = tensors
    expected = merge_tensor("task_arithmetic", [models[0]], base, weights=[weight], lambda_=0.6)
    got = merge_tensor(method, [models[0]], base, weights=[weight], densities=[1.0], normalize=normalize, lambda_=0.6)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


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
    assert sink.metric_rows[-1][1]["tensors_done"] == summary["tensors"]
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
        expected = merge_tensor(
            method, [a[name], b[name]], base[name], weights=[0.7, 0.4], densities=[0.6, 0.9], t=0.3,
            normalize=True, lambda_=1.0,
        )
        torch.testing.assert_close(merged[name], expected, atol=1e-6, rtol=0)
        if method == "linear":
            np.testing.assert_allclose(_np(merged[name]), ref_linear([_np(a[name]), _np(b[name])], [0.7, 0.4], True), atol=1e-5)
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
