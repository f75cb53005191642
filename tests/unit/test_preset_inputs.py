"""Bad input refused before anything is written (issue 16): names that would become paths,
duplicate YAML keys, a zero learning rate, an absurd max_length, and key names from other tools."""

from __future__ import annotations


import pytest

from presets import PresetError, builtin_names, check_name, load_preset, load_preset_text, save_user_preset
from presets.loader import NAME_MAX_LENGTH
from presets.other_tools import KEYS_FROM_OTHER_TOOLS
from presets.reference import _rows
from presets.schema import EvalPreset, MergePreset, TrainPreset

BASE = """\
name: t
model:
  path: some/model
data:
  train_files: data.json
training:
  epochs: 1
"""


def files_under(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def assert_refused_and_nothing_written(cli, tmp_path, args, expected):
    before = files_under(tmp_path)
    code, output = cli(*args)
    assert code != 0, output
    assert "Traceback" not in output
    for fragment in expected:
        assert fragment in output, f"{fragment!r} not in {output!r}"
    assert files_under(tmp_path) == before


# --------------------------------------------------------------------------- names

BAD_NAMES = [
    pytest.param("../../evil", ["preset name '../../evil'", "path separator", "starts with a dot"], id="parent-dirs"),
    pytest.param("a/b", ["preset name 'a/b'", "path separator"], id="slash"),
    pytest.param("a\\b", ["path separator"], id="backslash"),
    pytest.param(".hidden", ["preset name '.hidden'", "starts with a dot"], id="leading-dot"),
    pytest.param("x" * 80, ["80 characters long; the limit is 64"], id="80-chars"),
    pytest.param("a\x07b", ["preset name 'a\\x07b'", "control character"], id="control-char"),
    pytest.param("a\nb", ["control character"], id="newline"),
    pytest.param("my preset", ["it holds ' '"], id="space"),
    pytest.param("mine.yaml", ["YAML suffix"], id="yaml-suffix"),
    pytest.param("-rf", ["starts with '-'"], id="leading-dash"),
]


@pytest.mark.parametrize("name, expected", BAD_NAMES)
def test_presets_copy_refuses_a_bad_name_and_writes_nothing(cli, tmp_path, name, expected):
    assert_refused_and_nothing_written(cli, tmp_path, ["presets", "copy", "demo", "--", name], expected)


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "r" * 80, "a\x1bb"])
def test_submit_refuses_a_bad_run_name_and_writes_nothing(cli, tmp_path, name):
    assert_refused_and_nothing_written(cli, tmp_path, ["submit", "demo", "--name", name, "--no-engine"], ["run name"])


def test_train_refuses_a_preset_name_that_would_leave_the_runs_folder(cli, tmp_path):
    source = tmp_path / "escape.yaml"
    source.write_text(BASE.replace("name: t", "name: ../../escape"), encoding="utf-8")
    assert_refused_and_nothing_written(cli, tmp_path, ["train", str(source)], ["'../../escape'", "path separator"])


def test_train_refuses_an_output_that_is_a_file(cli, tmp_path):
    source = tmp_path / "good.yaml"
    source.write_text(BASE, encoding="utf-8")
    taken = tmp_path / "notes.txt"
    taken.write_text("mine\n")
    assert_refused_and_nothing_written(cli, tmp_path, ["train", str(source), "--output", str(taken)],
                                       [f"--output {taken} is a file", "give a new or existing folder"])
    assert taken.read_text() == "mine\n"


def test_save_user_preset_refuses_a_bad_name_before_writing(tmp_path):
    with pytest.raises(PresetError, match="path separator"):
        save_user_preset(tmp_path / "ws", "../evil", BASE)
    assert files_under(tmp_path) == []


@pytest.mark.parametrize("name", [*builtin_names(), "my-lora_v2.1", "_scratch", "a", "n" * NAME_MAX_LENGTH])
def test_good_names_pass(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "n" * (NAME_MAX_LENGTH + 1), "café", "a:b", "a*b"])
def test_other_bad_names_are_refused(name):
    with pytest.raises(PresetError) as info:
        check_name(name, "run name")
    assert info.value.message.startswith("run name ") and "ASCII letters" in info.value.advice


def test_a_normal_name_copies(cli, workspace):
    code, output = cli("presets", "copy", "demo", "my-demo_v2.1")
    assert code == 0, output
    written = workspace.root / "presets" / "my-demo_v2.1.yaml"
    assert [p.name for p in (workspace.root / "presets").iterdir()] == [written.name]
    assert load_preset("my-demo_v2.1", workspace.root).name == "my-demo_v2.1"


# --------------------------------------------------------------------------- preset contents

BAD_PRESETS = [
    pytest.param(
        BASE + "training:\n  epochs: 2\n",
        ["bad.yaml", "line 8: training: key appears twice (lines 6 and 8); keep one"],
        id="duplicate-top-level-key",
    ),
    pytest.param(
        BASE + "method:\n  lora:\n    r: 8\n    alpha: 16\n    r: 32\n",
        ["bad.yaml", "line 12: method.lora.r: key appears twice (lines 10 and 12); keep one"],
        id="duplicate-nested-key",
    ),
    pytest.param(
        BASE.replace("  epochs: 1\n", "  epochs: 1\n  epochs: 2\n"),
        ["line 8: training.epochs: key appears twice (lines 7 and 8)"],
        id="duplicate-key-in-section",
    ),
    pytest.param(
        BASE + "method: {lora: {r: 8, r: 16}}\n",
        ["method.lora.r: key appears twice (both on line 8)"],
        id="duplicate-key-flow-style",
    ),
    pytest.param(BASE + "  lr: 0\n", ["line 8: training.lr: a learning rate of zero trains nothing"], id="lr-zero"),
    pytest.param(BASE + "  lr: 0.0\n", ["training.lr: a learning rate of zero trains nothing"], id="lr-zero-float"),
    pytest.param(BASE + "  lr: -1\n", ["line 8: training.lr: a learning rate must be above zero, not -1"], id="lr-negative"),
    pytest.param(
        BASE.replace("  train_files: data.json\n", "  train_files: data.json\n  max_length: 1000000000000\n"),
        ["line 6: data.max_length: 1,000,000,000,000 tokens per sample is surely a mistake", "1,048,576"],
        id="max-length-1e12",
    ),
    pytest.param(
        BASE.replace("  train_files: data.json\n", "  train_files: data.json\n  max_length: 1.0e+12\n"),
        ["data.max_length: 1,000,000,000,000 tokens per sample is surely a mistake"],
        id="max-length-1e12-float",
    ),
    pytest.param(
        BASE.replace("  train_files: data.json\n", "  train_files: data.json\n  max_length: 1048577\n"),
        ["data.max_length: 1,048,577 tokens"],
        id="max-length-just-over",
    ),
    pytest.param(
        BASE + "  learning_rate: 1.0e-4\n",
        ["line 8: training.learning_rate: unknown key; tunebench calls it training.lr"],
        id="hf-learning_rate",
    ),
    pytest.param(
        BASE + "  num_train_epochs: 3\n",
        ["training.num_train_epochs: unknown key; tunebench calls it training.epochs"],
        id="hf-num_train_epochs",
    ),
    pytest.param(
        BASE + "  per_device_train_batch_size: 4\n",
        ["training.per_device_train_batch_size: unknown key; tunebench calls it training.batch_size"],
        id="hf-per_device_train_batch_size",
    ),
    pytest.param(
        BASE + "  gradient_accumulation_steps: 4\n",
        ["training.gradient_accumulation_steps: unknown key; tunebench calls it training.grad_accum"],
        id="hf-gradient_accumulation_steps",
    ),
    pytest.param(
        BASE + "  lr_scheduler_type: cosine\n",
        ["training.lr_scheduler_type: unknown key; tunebench calls it training.scheduler"],
        id="hf-lr_scheduler_type",
    ),
    pytest.param(
        BASE + "lora_rank: 8\n",
        ["line 8: lora_rank: unknown key; tunebench calls it method.lora.r"],
        id="llamafactory-lora_rank-top-level",
    ),
    pytest.param(
        BASE + "method:\n  lora:\n    lora_rank: 8\n",
        ["method.lora.lora_rank: unknown key; tunebench calls it method.lora.r"],
        id="lora_rank-in-method.lora",
    ),
    pytest.param(
        BASE.replace("  train_files: data.json\n", "  train_files: data.json\n  cutoff_len: 2048\n"),
        ["line 6: data.cutoff_len: unknown key; tunebench calls it data.max_length"],
        id="llamafactory-cutoff_len",
    ),
    pytest.param(
        BASE + "sequence_len: 2048\nmicro_batch_size: 2\nlora_r: 16\n",
        [
            "sequence_len: unknown key; tunebench calls it data.max_length",
            "micro_batch_size: unknown key; tunebench calls it training.batch_size",
            "lora_r: unknown key; tunebench calls it method.lora.r",
        ],
        id="axolotl-flat-keys",
    ),
    pytest.param(
        BASE + "method:\n  lora:\n    lora_alpha: 32\n",
        ["method.lora.lora_alpha: unknown key; tunebench calls it method.lora.alpha"],
        id="lora_alpha",
    ),
    pytest.param(
        BASE + "warmup_steps: 10\n",
        ["warmup_steps: unknown key here; it belongs at training.warmup_steps"],
        id="right-name-wrong-section",
    ),
    pytest.param(
        BASE + "  lrate: 1\n",
        ["training.lrate: unknown key; did you mean training.lr?"],
        id="typo-still-gets-did-you-mean",
    ),
]


@pytest.mark.parametrize("verb", ["validate", "copy"])
@pytest.mark.parametrize("text, expected", BAD_PRESETS)
def test_bad_preset_is_refused_with_key_and_line_and_nothing_written(cli, tmp_path, text, expected, verb):
    source = tmp_path / "bad.yaml"
    source.write_text(text, encoding="utf-8")
    args = ["presets", "validate", str(source)] if verb == "validate" else ["presets", "copy", str(source), "copied"]
    assert_refused_and_nothing_written(cli, tmp_path, args, expected)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("training.lr=0", "training.lr: a learning rate of zero trains nothing"),
        ("training.lr=-1e-4", "training.lr: a learning rate must be above zero"),
        ("data.max_length=2000000", "data.max_length: 2,000,000 tokens per sample is surely a mistake"),
        ("training.learning_rate=1e-4", "training.learning_rate: unknown key; tunebench calls it training.lr"),
        ("method.lora.lora_r=8", "method.lora.lora_r: unknown key; tunebench calls it method.lora.r"),
    ],
)
def test_set_overrides_get_the_same_messages(cli, tmp_path, override, expected):
    assert_refused_and_nothing_written(cli, tmp_path, ["presets", "validate", "demo", "--set", override], [expected])


@pytest.mark.parametrize("name", builtin_names())
def test_builtin_presets_still_validate(cli, name):
    code, output = cli("presets", "validate", name)
    assert code == 0 and "valid" in output, output


def test_limits_themselves_pass():
    preset = load_preset_text(BASE + "  lr: 1.0e-9\n", overrides=["data.max_length=1048576"])
    assert preset.training.lr == pytest.approx(1e-9) and preset.data.max_length == 1_048_576


def test_yaml_merge_keys_may_be_overridden_without_a_duplicate_error():
    text = BASE + "  <<: {lr: 1.0e-3, batch_size: 2}\n  lr: 2.0e-4\n"
    preset = load_preset_text(text)
    assert preset.training.lr == pytest.approx(2e-4) and preset.training.batch_size == 2


def test_same_key_in_different_sections_is_not_a_duplicate():
    preset = load_preset_text(BASE + "method:\n  lora: {target_modules: [q_proj]}\n  ia3: {target_modules: [q_proj]}\n")
    assert preset.method.lora.target_modules == preset.method.ia3.target_modules == ["q_proj"]


def test_a_name_our_schema_lacks_for_this_kind_gets_no_false_hint():
    # Merge presets have no training section: pointing at training.lr would send the user astray.
    with pytest.raises(PresetError) as info:
        load_preset_text("kind: merge\nname: m\nadapter: a\nlearning_rate: 1\n", "m.yaml")
    assert [str(p) for p in info.value.problems] == ["line 4: learning_rate: unknown key"]


def test_every_other_tools_name_points_at_a_key_of_ours():
    ours = {path for model in (TrainPreset, EvalPreset, MergePreset) for path, *_ in _rows(model)}
    assert {name: path for name, path in KEYS_FROM_OTHER_TOOLS.items() if path not in ours} == {}
