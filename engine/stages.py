"""The trainer each stage trains with: transformers' Trainer for sft, TRL's for the preference stages.

TRAINERS is keyed like presets.stages.STAGES (a test checks the keys match). A row names the
arguments class and the trainer class ("module:Class", imported when a run builds it) and turns the
preset's `preference` section into the arguments' own settings. TRL holds the losses; tunebench
adds its token count, disk checks and adapter saving to whichever class the row names
(engine.train.engine_trainer), and its callback, sink, doctor, checkpoints, resume and cancel work
the same for every stage.

The reference model (presets.stages: `reference`):
- adapters: the loaded base with the adapter switched off, so no second copy of the weights. TRL
  copies an adapter it did not create into a "ref" adapter; a freshly initialised adapter that
  leaves the base weights alone is exactly the base when switched off, so that copy is dropped.
  An adapter started from an earlier run (model.start_from) keeps TRL's copy: the reference is
  then the earlier run's model, as DPO after SFT should be.
- full and freeze: a frozen copy loaded as the base was.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from presets.schema import TrainPreset
from presets.stages import STAGES


def _import(target: str):
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class StageTrainer:
    arguments: str  # "module:Class" of the TrainingArguments (sub)class
    trainer: str  # "module:Class" of the Trainer (sub)class
    settings: Callable[[TrainPreset], dict] = lambda preset: {}  # the stage's own arguments
    takes_ref_model: bool = False  # the trainer's constructor has a ref_model parameter
    # TrainingArguments values of the sft path that a preference trainer sets itself (it feeds
    # its own collator the tokenized pairs, and its columns are not `labels`).
    drops: tuple[str, ...] = field(default=())

    def arguments_class(self):
        return _import(self.arguments)

    def trainer_class(self):
        return _import(self.trainer)


_PREFERENCE_DROPS = ("remove_unused_columns", "label_names")


def _dpo(preset: TrainPreset) -> dict:
    pref = preset.preference
    return dict(beta=preset.beta(), loss_type=[pref.loss_type or STAGES["dpo"].loss_types[0]],
                label_smoothing=pref.label_smoothing, max_length=preset.data.max_length)


def _orpo(preset: TrainPreset) -> dict:
    return dict(beta=preset.beta(), max_length=preset.data.max_length)


def _kto(preset: TrainPreset) -> dict:
    pref = preset.preference
    return dict(beta=preset.beta(), desirable_weight=pref.desirable_weight, undesirable_weight=pref.undesirable_weight,
                max_length=preset.data.max_length)


def _simpo(preset: TrainPreset) -> dict:
    # TRL trains SimPO as CPO with the simpo loss and no behaviour-cloning term (cpo_alpha 0).
    pref = preset.preference
    return dict(loss_type="simpo", cpo_alpha=0.0, beta=preset.beta(), simpo_gamma=pref.simpo_gamma,
                label_smoothing=pref.label_smoothing, max_length=preset.data.max_length)


TRAINERS: dict[str, StageTrainer] = {
    "sft": StageTrainer("transformers:TrainingArguments", "transformers:Trainer"),
    "dpo": StageTrainer("trl:DPOConfig", "trl:DPOTrainer", _dpo, takes_ref_model=True, drops=_PREFERENCE_DROPS),
    "orpo": StageTrainer("trl.experimental.orpo:ORPOConfig", "trl.experimental.orpo:ORPOTrainer", _orpo, drops=_PREFERENCE_DROPS),
    "kto": StageTrainer("trl:KTOConfig", "trl:KTOTrainer", _kto, takes_ref_model=True, drops=_PREFERENCE_DROPS),
    "simpo": StageTrainer("trl.experimental.cpo:CPOConfig", "trl.experimental.cpo:CPOTrainer", _simpo, drops=_PREFERENCE_DROPS),
}


def stage_arguments(preset: TrainPreset, values: dict[str, Any]):
    """The stage's arguments object from the sft path's TrainingArguments values plus the stage's own."""
    row = TRAINERS[preset.stage]
    kept = {key: value for key, value in values.items() if key not in row.drops}
    return row.arguments_class()(**kept, **row.settings(preset))


def reference_model(preset: TrainPreset, load_frozen_copy: Callable[[], Any]):
    """The frozen reference for full and freeze runs of a stage that needs one; None otherwise
    (adapters switch themselves off instead, and ORPO / SimPO need no reference)."""
    from presets.methods import METHODS

    if STAGES[preset.stage].reference != "needed" or METHODS[preset.method.name].is_adapter:
        return None
    model = load_frozen_copy()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def drop_reference_copy(trainer, *, adapter_is_fresh: bool) -> bool:
    """Remove TRL's "ref" copy of a fresh adapter (switched off, it is the base itself); True if removed."""
    from peft import PeftModel

    model = trainer.model
    if not (adapter_is_fresh and isinstance(model, PeftModel) and "ref" in model.peft_config):
        return False
    model.delete_adapter("ref")  # "default" stays the active, trained adapter
    return True


def describe_reference(trainer, preset: TrainPreset, start) -> str:
    """Which reference the run compares with, said in the run's events; drops TRL's copy of a fresh adapter."""
    from presets.methods import METHODS, lora_init

    if not METHODS[preset.method.name].is_adapter:
        return "a frozen copy of the starting model"
    moves_base = METHODS[preset.method.name].lora_options and lora_init(preset.method.lora.init).moves_base_weights
    fresh = start.adapter is None and not moves_base
    if drop_reference_copy(trainer, adapter_is_fresh=fresh):
        return "the base with the adapter switched off (no second copy of the weights)"
    if start.adapter is not None:
        return f"the adapter of {start.adapter} as it was at the start (a copy of the adapter only)"
    return f"a copy of the initial adapter (method.lora.init {preset.method.lora.init} moves part of the base into it)"
