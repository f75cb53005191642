"""The stage table: the engine's trainers match presets.stages, and the schema refuses what a stage
cannot train, naming the key and what to do."""

from __future__ import annotations

import pytest


def _preset(**fields):
    from presets.schema import TrainPreset

    return TrainPreset.model_validate({"name": "x", "model": {"path": "m"}, "data": {"train_files": ["a.jsonl"]}, **fields})


def test_every_stage_has_a_trainer_and_arguments():
    from engine.stages import TRAINERS
    from presets.stages import STAGES

    assert set(TRAINERS) == set(STAGES)
    for row in TRAINERS.values():
        from transformers import Trainer, TrainingArguments

        assert issubclass(row.trainer_class(), Trainer) and issubclass(row.arguments_class(), TrainingArguments)


@pytest.mark.parametrize("stage, fields, message", [
    ("dpo", {"method": {"name": "prompt_tuning"}}, "stage dpo trains full, freeze, LoRA-family or QLoRA methods, not prompt_tuning"),
    ("orpo", {"preference": {"loss_type": "ipo"}}, "stage orpo has one loss and takes no preference.loss_type"),
    ("dpo", {"preference": {"loss_type": "kto"}}, "preference.loss_type kto: stage dpo takes sigmoid, ipo, hinge, robust"),
    ("dpo", {"preference": {"ref_model": "none"}}, "use stage orpo or simpo to train without one"),
    ("sft", {"preference": {"beta": 0.2}}, "preference.beta applies to the preference stages"),
    ("simpo", {"data": {"train_files": ["a.jsonl"], "packing": True}}, "data.packing does not apply"),
])
def test_what_a_stage_cannot_train_is_refused(stage, fields, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as caught:
        _preset(stage=stage, **fields)
    assert message in str(caught.value)


def test_a_preference_stage_without_trl_names_the_extra(monkeypatch):
    from pydantic import ValidationError

    import presets.extras

    monkeypatch.setattr(presets.extras, "is_installed", lambda module: module != "trl")
    with pytest.raises(ValidationError) as caught:
        _preset(stage="kto")
    assert "pip install 'tunebench[preference]'" in str(caught.value)


def test_each_stage_passes_its_settings_to_trl():
    from engine.stages import TRAINERS

    dpo = _preset(stage="dpo", preference={"loss_type": "ipo", "label_smoothing": 0.1})
    assert TRAINERS["dpo"].settings(dpo) == {"beta": 0.1, "loss_type": ["ipo"], "label_smoothing": 0.1, "max_length": 1024}
    simpo = TRAINERS["simpo"].settings(_preset(stage="simpo", preference={"simpo_gamma": 0.8}))
    assert simpo["loss_type"] == "simpo" and simpo["cpo_alpha"] == 0.0 and simpo["beta"] == 2.0 and simpo["simpo_gamma"] == 0.8
    kto = TRAINERS["kto"].settings(_preset(stage="kto", preference={"undesirable_weight": 1.5}))
    assert kto["undesirable_weight"] == 1.5 and kto["desirable_weight"] == 1.0
