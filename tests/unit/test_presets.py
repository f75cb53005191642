"""Preset schema, loading, errors and overrides."""

from __future__ import annotations

import subprocess
import sys

import pytest

from presets import (
    PresetError,
    TrainPreset,
    builtin_names,
    dump_preset,
    load_preset,
    load_preset_text,
    resolve_paths,
    save_user_preset,
)

MINIMAL = "name: t\nmodel: {path: some/model}\ndata: {train_files: data.json}\n"


def problems_of(text: str, overrides=None) -> list[str]:
    with pytest.raises(PresetError) as info:
        load_preset_text(text, "p.yaml", overrides)
    return [str(p) for p in info.value.problems]


def test_every_builtin_preset_loads():
    names = builtin_names()
    assert {"demo", "demo-diverge"} <= set(names)
    for name in names:
        preset = load_preset(name)
        assert preset.name == name


def test_defaults_fill_every_section():
    preset = load_preset_text(MINIMAL)
    assert isinstance(preset, TrainPreset)
    assert preset.method.name == "lora" and preset.method.lora.target_modules == "all-linear"
    assert preset.data.train_files == ["data.json"]
    assert preset.data.assistant_only_loss is True
    assert preset.model.trust_remote_code is False


def test_every_problem_is_reported_at_once_with_path_line_and_hint():
    text = (
        "name: x\n"
        "model:\n"
        "  path: m\n"
        "  dtyp: bf16\n"
        "data: {train_files: a.json}\n"
        "training:\n"
        "  lr: 1e-4x\n"
        "  optimizer: adam\n"
    )
    found = problems_of(text)
    assert found == [
        "line 4: model.dtyp: unknown key; did you mean model.dtype?",
        'line 7: training.lr: expected a number, got "1e-4x"',
        "line 8: training.optimizer: expected one of 'adamw', 'adamw_8bit', 'paged_adamw_8bit', "
        "'paged_adamw_32bit', 'adafactor' or 'sgd', got \"adam\"",
    ]


def test_missing_required_keys_are_named():
    found = problems_of("name: x\n")
    assert "model: required key is missing" in found
    assert "data: required key is missing" in found


def test_invalid_yaml_names_the_line():
    found = problems_of("name: x\nmodel: [unclosed\n")
    assert len(found) == 1 and found[0].startswith("line ") and "invalid YAML" in found[0]


def test_unknown_kind_and_non_mapping():
    assert problems_of("kind: serve\nname: x\n") == ['line 1: kind: expected one of "train", "eval", "merge", got "serve"']
    assert problems_of("- a\n- b\n") == ["a preset is a mapping of keys, got list"]


def test_overrides_are_typed_and_validated():
    preset = load_preset_text(MINIMAL, overrides=["training.lr=3e-4", "method.lora.r=32", "data.packing=true"])
    assert preset.training.lr == pytest.approx(3e-4)
    assert preset.method.lora.r == 32 and preset.data.packing is True
    assert problems_of(MINIMAL, ["training.epochs=many"]) == ['training.epochs: expected a number, got "many"']
    assert problems_of(MINIMAL, ["training.lrate=1"]) == ["training.lrate: unknown key; did you mean training.lr?"]
    with pytest.raises(PresetError, match="not key.path=value"):
        load_preset_text(MINIMAL, overrides=["training.lr"])


def test_method_and_quantization_must_fit():
    assert problems_of(MINIMAL, ["method.name=qlora"]) == ["method qlora needs model.quantization.mode: 4bit (or 8bit)"]
    assert problems_of(MINIMAL, ["method.name=full", "model.quantization.mode=4bit"]) == [
        "method full cannot train quantized weights: set model.quantization.mode: none or use qlora"
    ]
    preset = load_preset_text(MINIMAL, overrides=["method.name=qlora", "model.quantization.mode=4bit"])
    assert preset.model.quantization.quant_type == "nf4"


def test_eval_and_merge_presets_validate_their_sources():
    assert problems_of("kind: eval\nname: e\n") == ["an eval preset needs run or model"]
    assert problems_of("kind: merge\nname: m\nmethod: slerp\nmodels: [{path: a}]\n") == ["slerp merges exactly two models"]
    merge = load_preset_text("kind: merge\nname: m\nmethod: ties\nbase_model: b\nlambda: 0.7\nmodels: [{path: a, density: 0.5}]\n")
    assert merge.lambda_ == pytest.approx(0.7) and merge.models[0].density == 0.5


def test_frozen_dump_round_trips():
    preset = load_preset("demo")
    again = load_preset_text(dump_preset(preset))
    assert again == preset


def test_resolve_paths_expands_workspace_and_relative_files(tmp_path):
    (tmp_path / "data.json").write_text("[]")
    preset = load_preset_text(MINIMAL)
    resolved = resolve_paths(preset, tmp_path / "ws", base=tmp_path)
    assert resolved.data.train_files == [str((tmp_path / "data.json").resolve())]
    assert resolved.model.path == "some/model"  # not a local path: a hub id, kept as is
    demo = resolve_paths(load_preset("demo"), tmp_path / "ws")
    assert demo.model.path == str((tmp_path / "ws").resolve() / "models" / "tiny")


def test_user_presets_shadow_builtins_and_invalid_ones_are_not_saved(tmp_path):
    text = load_preset("demo").model_dump_json()  # JSON is YAML
    save_user_preset(tmp_path, "demo", text.replace('"lr":0.005', '"lr":0.001'))
    assert load_preset("demo", tmp_path).training.lr == pytest.approx(1e-3)
    with pytest.raises(PresetError):
        save_user_preset(tmp_path, "broken", "name: broken\n")
    assert not (tmp_path / "presets" / "broken.yaml").exists()


def test_not_utf8_and_missing_and_misspelled_names(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(PresetError, match="not UTF-8"):
        load_preset(str(bad))
    with pytest.raises(PresetError, match="no such file"):
        load_preset(str(tmp_path / "nope.yaml"))
    with pytest.raises(PresetError, match="did you mean demo"):
        load_preset("dmeo")


def test_cli_validate_reports_problems_and_exits_2():
    result = subprocess.run(
        [sys.executable, "-m", "tui.cli", "presets", "validate", "demo", "--set", "training.lr=fast"],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert 'training.lr: expected a number, got "fast"' in result.stderr
    ok = subprocess.run([sys.executable, "-m", "tui.cli", "presets", "validate", "demo"], capture_output=True, text=True)
    assert ok.returncode == 0 and "valid train preset" in ok.stdout


def test_multi_model_merge_presets_name_the_merge_extra_when_mergekit_is_missing(monkeypatch):
    import presets.extras
    from presets.schema import MergePreset

    real = presets.extras.is_installed
    monkeypatch.setattr(presets.extras, "is_installed", lambda module: module != "mergekit" and real(module))
    with pytest.raises(ValueError, match=r"method ties needs mergekit, which is not installed: pip install 'tunebench\[merge\]'"):
        MergePreset(name="m", method="ties", base_model="b", models=[{"path": "a"}])
    assert MergePreset(name="m", method="adapter", adapter="x").method == "adapter"  # folding an adapter needs no mergekit


def test_mergekit_merge_presets_hold_a_configuration_with_its_outline_checked():
    from presets.schema import MergePreset

    config = {"merge_method": "passthrough", "slices": [{"sources": [{"model": "m", "layer_range": [0, 2]}]}]}
    assert MergePreset(name="m", method="mergekit", mergekit=config).mergekit == config
    with pytest.raises(ValueError, match="goes with method: mergekit"):
        MergePreset(name="m", method="linear", models=[{"path": "a"}], mergekit=config)
    with pytest.raises(ValueError, match="merge_method: required"):
        MergePreset(name="m", method="mergekit", mergekit={"models": []})
    with pytest.raises(ValueError, match="needs models: .* or slices:"):
        MergePreset(name="m", method="mergekit", mergekit={"merge_method": "linear"})
