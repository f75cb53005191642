"""A lean install: optional features in extras of pyproject.toml, each missing package named with
the extra that brings it (presets/extras.py), and the test extra keeping the whole suite one command."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from presets.extras import OPTIONAL, MissingExtra, require

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    """The normalised project name (PEP 503: rouge_score and rouge-score are one)."""
    return re.sub(r"[-_.]+", "-", re.split(r"[<>=\[ ;]", requirement, maxsplit=1)[0]).lower()


def test_the_core_does_not_require_what_only_some_features_use():
    core = {_name(r) for r in PROJECT["dependencies"]}
    assert not core & {"bitsandbytes", "rouge-score", "sacrebleu", "tree-sitter", "tree-sitter-yaml", "tensorboard", "deepspeed", "flash-attn"}


def test_every_optional_package_is_in_the_extra_its_message_names():
    extras = PROJECT["optional-dependencies"]
    for module, (package, extra) in OPTIONAL.items():
        assert package in {_name(r) for r in extras[extra]}, f"{package} is not in tunebench[{extra}]"


def test_the_test_extra_brings_every_feature_the_suite_tests():
    test = PROJECT["optional-dependencies"]["test"]
    assert "tunebench[gpu,eval,yaml,merge,preference]" in test and "tensorboard" in {_name(r) for r in test}


def test_every_dependency_has_an_upper_bound():
    for requirement in PROJECT["dependencies"] + [r for rs in PROJECT["optional-dependencies"].values() for r in rs]:
        assert requirement.startswith("tunebench[") or "<" in requirement, requirement


def test_the_lock_pins_every_package_the_test_extra_added():
    lock = {_name(line) for line in (ROOT / "requirements.lock").read_text().splitlines() if "==" in line}
    for package in ("tensorboard", "argcomplete", "bitsandbytes", "rouge-score", "sacrebleu", "tree-sitter-yaml", "trl"):
        assert package in lock


def test_a_missing_package_names_its_extra(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(MissingExtra) as caught:
        require("sacrebleu", "BLEU in evaluation")
    assert str(caught.value) == ("BLEU in evaluation needs sacrebleu, which is not installed\n"
                                 "  → pip install 'tunebench[eval]' (or pip install sacrebleu)")


def test_evaluation_metrics_without_the_eval_extra_say_which_to_install(monkeypatch):
    from engine import metrics_text

    metrics_text._rouge_scorer.cache_clear()
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(MissingExtra, match=r"tunebench\[eval\]"):
        metrics_text.rouge_l("a b", "a b")
    metrics_text._rouge_scorer.cache_clear()


def test_the_presets_editor_without_the_yaml_extra_says_which_to_install(monkeypatch):
    import textual._tree_sitter

    from tui.widgets.yaml_editor import YamlEditor

    assert YamlEditor().tooltip is None  # the test extra brings the highlighter
    monkeypatch.setattr(textual._tree_sitter, "get_language", lambda name: None)
    editor = YamlEditor()
    assert editor.language is None and "pip install 'tunebench[yaml]'" in editor.tooltip
