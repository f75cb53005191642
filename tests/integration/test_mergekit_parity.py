"""Merges equal mergekit's: on the tiny model and three fine-tunes of it (weights perturbed with fixed
seeds), every method of our preset form and mergekit YAML taken as it is (`tunebench merge FILE`)
give, tensor by tensor, what mergekit itself gives on the equivalent configuration (max |Δ| < 1e-5,
fp32). The passthrough and gradient slerp are also checked against what they must be by definition."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("mergekit")

from engine.merge import run_merge  # noqa: E402
from engine.sink import Sink  # noqa: E402
from presets.importers import import_config  # noqa: E402
from presets.schema import MergePreset  # noqa: E402

TOLERANCE = 1e-5
SEED = 7


def _fine_tune(base: Path, out: Path, seed: int) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def models(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("parity")
    return {"base": tiny_model_dir, **{name: _fine_tune(tiny_model_dir, root / name, seed) for seed, name in enumerate("abc", 1)}}


def _tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    tensors = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(shard)))
    return tensors


def mergekit_itself(config_text: str, out: Path) -> dict:
    """What `mergekit-yaml config.yml out --random-seed 7` writes, run in-process."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge as mergekit_run_merge
    from mergekit.options import MergeOptions

    config = MergeConfiguration.model_validate(yaml.safe_load(config_text))
    mergekit_run_merge(config, str(out), options=MergeOptions(random_seed=SEED, quiet=True, copy_tokenizer=False))
    return _tensors(out)


def _assert_equal_tensors(ours: dict, theirs: dict) -> float:
    assert ours.keys() == theirs.keys()
    worst = max(float((ours[k].float() - theirs[k].float()).abs().max()) for k in theirs)
    assert worst < TOLERANCE, f"max |Δ| {worst:.3g}"
    return worst


def _ours(preset: MergePreset, out: Path) -> dict:
    outcome = run_merge(preset, out, Sink())
    assert outcome.status == "completed"
    return _tensors(out)


# each method of our preset form, and the mergekit YAML of the same merge as mergekit's README writes it
CASES = {
    "linear": (
        dict(models=[("a", 0.5, 1.0), ("b", 0.3, 1.0), ("c", 0.2, 1.0)]),
        """
        merge_method: linear
        models:
          - {model: A, parameters: {weight: 0.5}}
          - {model: B, parameters: {weight: 0.3}}
          - {model: C, parameters: {weight: 0.2}}
        dtype: float32
        """,
    ),
    "slerp": (
        dict(models=[("a", 1.0, 1.0), ("b", 1.0, 1.0)], t=0.3),
        """
        merge_method: slerp
        base_model: A
        models: [{model: A}, {model: B}]
        parameters: {t: 0.3}
        dtype: float32
        """,
    ),
    "task_arithmetic": (
        dict(models=[("a", 0.6, 1.0), ("b", 0.4, 1.0), ("c", 0.3, 1.0)], base=True, lambda_=0.8),
        """
        merge_method: task_arithmetic
        base_model: BASE
        models:
          - {model: A, parameters: {weight: 0.6}}
          - {model: B, parameters: {weight: 0.4}}
          - {model: C, parameters: {weight: 0.3}}
        parameters: {lambda: 0.8}
        dtype: float32
        """,
    ),
    "ties": (
        dict(models=[("a", 0.6, 0.5), ("b", 0.4, 0.7), ("c", 0.3, 0.9)], base=True),
        """
        merge_method: ties
        base_model: BASE
        models:
          - {model: A, parameters: {weight: 0.6, density: 0.5}}
          - {model: B, parameters: {weight: 0.4, density: 0.7}}
          - {model: C, parameters: {weight: 0.3, density: 0.9}}
        dtype: float32
        """,
    ),
    "dare_ties": (
        dict(models=[("a", 0.6, 0.5), ("b", 0.4, 0.7), ("c", 0.3, 0.9)], base=True),
        """
        merge_method: dare_ties
        base_model: BASE
        models:
          - {model: A, parameters: {weight: 0.6, density: 0.5}}
          - {model: B, parameters: {weight: 0.4, density: 0.7}}
          - {model: C, parameters: {weight: 0.3, density: 0.9}}
        dtype: float32
        """,
    ),
    "dare_linear": (
        dict(models=[("a", 0.6, 0.5), ("b", 0.4, 0.7)], base=True),
        """
        merge_method: dare_linear
        base_model: BASE
        models:
          - {model: A, parameters: {weight: 0.6, density: 0.5}}
          - {model: B, parameters: {weight: 0.4, density: 0.7}}
        dtype: float32
        """,
    ),
}


def _with_paths(text: str, models: dict[str, Path]) -> str:
    for name, path in models.items():
        text = text.replace(f"model: {name.upper()}", f"model: {path}").replace(f"base_model: {name.upper()}", f"base_model: {path}")
    return textwrap.dedent(text)


@pytest.mark.parametrize("method", list(CASES))
def test_our_preset_form_equals_mergekit(method, models, tmp_path):
    settings, config_text = CASES[method]
    preset = MergePreset(
        name="parity", method=method, dtype="fp32", seed=SEED, t=settings.get("t", 0.5), **{"lambda": settings.get("lambda_", 1.0)},
        base_model=str(models["base"]) if settings.get("base") else None,
        models=[{"path": str(models[name]), "weight": weight, "density": density} for name, weight, density in settings["models"]],
    )
    ours = _ours(preset, tmp_path / "ours")
    theirs = mergekit_itself(_with_paths(config_text, models), tmp_path / "mergekit")
    _assert_equal_tensors(ours, theirs)
    if method.startswith("dare"):  # the random drop did happen: not the plain weighted sum
        base, a = _tensors(models["base"]), _tensors(models["a"])
        name = "model.layers.1.mlp.down_proj.weight"
        assert not torch.allclose(ours[name], base[name] + 0.6 * (a[name] - base[name]), atol=1e-4)


PASSTHROUGH = """\
slices:
  - sources:
      - model: A
        layer_range: [0, 3]
  - sources:
      - model: A
        layer_range: [1, 4]
merge_method: passthrough
dtype: float32
"""

GRADIENT_SLERP = """\
slices:
  - sources:
      - model: A
        layer_range: [0, 4]
      - model: B
        layer_range: [0, 4]
merge_method: slerp
base_model: A
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: float32
"""


def _as_it_is(text: str, models: dict, tmp_path: Path) -> tuple[dict, dict]:
    """The file through `tunebench merge FILE`'s path (import, then the merge job), and through mergekit."""
    config = tmp_path / "recipe.yaml"
    config.write_text(_with_paths(text, models))
    preset = import_config(config).preset
    assert (preset.method, preset.dtype) == ("mergekit", "fp32")
    return _ours(preset, tmp_path / "ours"), mergekit_itself(config.read_text(), tmp_path / "mergekit")


def test_passthrough_of_two_slices_of_one_model_equals_mergekit(models, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    ours, theirs = _as_it_is(PASSTHROUGH, models, tmp_path)
    _assert_equal_tensors(ours, theirs)
    # layers 0-2 then 1-3 of the 4-layer model: 6 layers, the 4th is the source's layer 1
    assert AutoConfig.from_pretrained(tmp_path / "ours").num_hidden_layers == 6
    source = _tensors(models["a"])
    for merged_layer, source_layer in ((0, 0), (2, 2), (3, 1), (5, 3)):
        name = "model.layers.{}.self_attn.q_proj.weight"
        assert torch.equal(ours[name.format(merged_layer)], source[name.format(source_layer)])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ours")  # plain transformers loads it
    assert len(model.model.layers) == 6


def test_slerp_with_per_filter_gradients_equals_mergekit(models, tmp_path):
    ours, theirs = _as_it_is(GRADIENT_SLERP, models, tmp_path)
    _assert_equal_tensors(ours, theirs)
    a, b = _tensors(models["a"]), _tensors(models["b"])
    # the gradient's ends: self_attn t = 0 at the first layer, 1 at the last; mlp the other way round
    attn, mlp = "model.layers.{}.self_attn.o_proj.weight", "model.layers.{}.mlp.up_proj.weight"
    torch.testing.assert_close(ours[attn.format(0)], a[attn.format(0)], atol=1e-6, rtol=0)
    torch.testing.assert_close(ours[attn.format(3)], b[attn.format(3)], atol=1e-6, rtol=0)
    torch.testing.assert_close(ours[mlp.format(0)], b[mlp.format(0)], atol=1e-6, rtol=0)
    torch.testing.assert_close(ours[mlp.format(3)], a[mlp.format(3)], atol=1e-6, rtol=0)
    # elsewhere t = 0.5: between the two, equal to neither
    norm = "model.layers.1.input_layernorm.weight"
    assert not torch.equal(ours[norm], a[norm]) and not torch.equal(ours[norm], b[norm])


def test_a_configuration_mergekit_refuses_fails_naming_the_key(models, tmp_path):
    from engine.errors import EngineError

    preset = MergePreset(name="bad", method="mergekit", dtype="fp32",
                         mergekit={"merge_method": "linear", "models": [{"modle": str(models["a"])}]})
    with pytest.raises(EngineError, match=r"mergekit refuses the configuration: models\.0\.model"):
        run_merge(preset, tmp_path / "out", Sink())
    missing = MergePreset(name="bad", method="mergekit", dtype="fp32",
                          mergekit={"merge_method": "linear", "models": [{"model": str(tmp_path / "nope")}]})
    with pytest.raises(EngineError, match=r"the model .*nope is not there"):
        run_merge(missing, tmp_path / "out", Sink())
    too_far = MergePreset(name="bad", method="mergekit", dtype="fp32", mergekit={
        "merge_method": "passthrough", "slices": [{"sources": [{"model": str(models["a"]), "layer_range": [0, 6]}]}]})
    with pytest.raises(EngineError, match=r"mergekit could not merge: Tensor model\.layers\.4\..* not present"):
        run_merge(too_far, tmp_path / "out", Sink())
    assert not (tmp_path / "out").exists()
