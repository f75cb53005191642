"""Apply a preset's training method to a loaded model: the builders of presets/methods.py's table.

BUILDERS holds one builder per method, keyed like presets.methods.METHODS (a test checks the keys
match): full and freeze set `requires_grad` on the model's own parameters; every other method goes
through peft (LoRA and its variants, IA3, AdaLoRA, the prompt-learning family). LORA_INITS does the
same for presets.methods.LORA_INITS (method.lora.init), and loraplus_optimizer builds LoRA+'s
optimizer. Names in the preset that do not exist in the model are refused before peft sees them,
with the names that do exist.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import warnings
import weakref
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import engine.models  # noqa: F401  (quiets bitsandbytes before peft imports it)
from engine.errors import EngineError
from presets.methods import lora_init
from presets.schema import TrainPreset

# Decoder stacks are a ModuleList under one of these names (Llama/Qwen/Mistral: layers, GPT-2: h, …).
_LAYER_LIST_NAMES = ("layers", "h", "blocks", "layer", "decoder_layers")
_FEEDFORWARD_PARENTS = ("mlp", "feed_forward", "ffn", "block_sparse_moe", "experts")


# --------------------------------------------------------------------------- looking into the model


def _is_linear(module) -> bool:
    import torch

    if isinstance(module, torch.nn.Linear):
        return True
    # bitsandbytes' Linear4bit/Linear8bitLt subclass nn.Linear; GPT-2's Conv1D is linear too.
    return type(module).__name__ in ("Conv1D", "Linear4bit", "Linear8bitLt")


def linear_module_names(model) -> list[str]:
    """Leaf names of the linear layers peft can adapt (q_proj, up_proj, …), without the output head."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = {
        full.rsplit(".", 1)[-1]
        for full, module in model.named_modules()
        if _is_linear(module) and module is not output
    }
    return sorted(names)


def module_names(model) -> list[str]:
    """Leaf names of every named module that holds parameters (embed_tokens, norm, q_proj, lm_head, …)."""
    names = {
        full.rsplit(".", 1)[-1]
        for full, module in model.named_modules()
        if full and not full.rsplit(".", 1)[-1].isdigit() and any(True for _ in module.parameters(recurse=False))
    }
    return sorted(names)


def _matches(full_name: str, wanted: str) -> bool:
    return full_name == wanted or full_name.endswith("." + wanted)


def _check_names(model, wanted: list[str], key: str, *, linear_only: bool) -> None:
    if not wanted:
        return
    candidates = [full for full, module in model.named_modules() if full and (not linear_only or _is_linear(module))]
    missing = [w for w in wanted if not any(_matches(full, w) for full in candidates)]
    if missing:
        available = linear_module_names(model) if linear_only else module_names(model)
        kind = "linear modules" if linear_only else "modules"
        raise EngineError(
            f"{key}: {', '.join(missing)} not found in the model; its {kind} are: {', '.join(available)}",
            f"set {key} to some of: {', '.join(available)} (or all-linear)" if linear_only else f"set {key} to some of: {', '.join(available)}",
        )


def decoder_layers(model):
    """The model's stack of decoder layers (the longest ModuleList under a usual name)."""
    import torch

    best = None
    for full, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and full.rsplit(".", 1)[-1] in _LAYER_LIST_NAMES:
            if best is None or len(module) > len(best[1]):
                best = (full, module)
    if best is None:
        raise EngineError(
            f"{type(model).__name__}: cannot find its decoder layers",
            "use method.freeze.trainable_modules to name the parameters to train",
        )
    return best


def _parameter_patterns(model) -> list[str]:
    """Parameter names with layer numbers folded (model.layers.*.mlp.up_proj.weight) for messages."""
    return sorted({re.sub(r"\.\d+\.", ".*.", name) for name, _ in model.named_parameters()})


# --------------------------------------------------------------------------- counting


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, total) counted exactly as peft's print_trainable_parameters counts them.

    peft's count only walks named_parameters (with 4-bit parameters counted unpacked), so the same
    function serves plain models (full, freeze) and peft models alike.
    """
    from peft import PeftModel

    return PeftModel.get_nb_trainable_parameters(model)


# --------------------------------------------------------------------------- full weights


def _full(model, preset: TrainPreset, total_steps: int | None):
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def _freeze(model, preset: TrainPreset, total_steps: int | None):
    params = preset.method.freeze
    model.requires_grad_(False)
    if params.trainable_modules:
        chosen = [name for name, _ in model.named_parameters() if any(part in name for part in params.trainable_modules)]
        if not chosen:
            patterns = _parameter_patterns(model)
            raise EngineError(
                f"method.freeze.trainable_modules: no parameter name contains {', '.join(params.trainable_modules)}; "
                f"the model's parameters are: {', '.join(patterns)}",
                "name a part of these parameter names, e.g. mlp or layers.23.",
            )
        named = dict(model.named_parameters())
        for name in chosen:
            named[name].requires_grad_(True)
    else:
        _, layers = decoder_layers(model)
        count = min(params.trainable_layers, len(layers))
        for layer in list(layers)[len(layers) - count:]:
            layer.requires_grad_(True)
    if params.train_embeddings:
        model.get_input_embeddings().requires_grad_(True)
        if model.get_output_embeddings() is not None:
            model.get_output_embeddings().requires_grad_(True)
    return model


# --------------------------------------------------------------------------- peft configs


def _lora_settings(model, preset: TrainPreset) -> dict:
    """What every LoRA-family config shares, its module names checked against the model."""
    from peft import TaskType

    params = preset.method.lora
    targets = params.target_modules
    if targets != "all-linear":
        _check_names(model, targets, "method.lora.target_modules", linear_only=True)
    _check_names(model, params.modules_to_save, "method.lora.modules_to_save", linear_only=False)
    return dict(
        task_type=TaskType.CAUSAL_LM,
        lora_alpha=params.alpha,
        lora_dropout=params.dropout,
        target_modules=targets,
        modules_to_save=params.modules_to_save or None,
        bias=params.bias,
    )


def _lora_config(model, preset: TrainPreset, total_steps: int | None, **variant):
    from peft import LoraConfig

    params = preset.method.lora
    init = LORA_INITS[lora_init(params.init).name]
    return LoraConfig(r=params.r, init_lora_weights=init.peft_value(params.init), **variant, **_lora_settings(model, preset))


def _adalora_config(model, preset: TrainPreset, total_steps: int | None):
    from peft import AdaLoraConfig

    ada = preset.method.adalora
    settings = _lora_settings(model, preset)
    if not total_steps:
        raise EngineError("adalora needs the number of training steps to schedule its rank budget", "set training.max_steps or training.epochs")
    if ada.tinit >= total_steps - ada.tfinal:
        raise EngineError(
            f"method.adalora: tinit ({ada.tinit}) + tfinal ({ada.tfinal}) leave no budgeting phase in {total_steps} steps",
            "lower method.adalora.tinit / tfinal or train for more steps",
        )
    if ada.target_r > ada.init_r:
        raise EngineError(f"method.adalora.target_r ({ada.target_r}) is above init_r ({ada.init_r})", "AdaLoRA only prunes ranks: set target_r <= init_r")
    return AdaLoraConfig(
        init_r=ada.init_r, target_r=ada.target_r, tinit=ada.tinit, tfinal=ada.tfinal, deltaT=ada.delta_t,
        beta1=ada.beta1, beta2=ada.beta2, orth_reg_weight=ada.orth_reg_weight, total_step=total_steps, **settings,
    )


def _ia3_config(model, preset: TrainPreset, total_steps: int | None):
    from peft import IA3Config, TaskType

    params = preset.method.ia3
    linear_names = linear_module_names(model)
    targets = linear_names if params.target_modules == "all-linear" else params.target_modules
    _check_names(model, targets, "method.ia3.target_modules", linear_only=True)
    if params.feedforward_modules is None:
        feedforward = sorted({
            full.rsplit(".", 1)[-1]
            for full, module in model.named_modules()
            if _is_linear(module)
            and full.rsplit(".", 1)[-1] in targets
            and any(f".{parent}." in f".{full}" for parent in _FEEDFORWARD_PARENTS)
        })
    else:
        feedforward = params.feedforward_modules
        stray = [f for f in feedforward if f not in targets]
        if stray:
            raise EngineError(
                f"method.ia3.feedforward_modules: {', '.join(stray)} not among target_modules ({', '.join(targets)})",
                "feedforward_modules must be a subset of target_modules",
            )
    return IA3Config(task_type=TaskType.CAUSAL_LM, target_modules=targets, feedforward_modules=feedforward)


def _virtual_tokens(preset: TrainPreset) -> dict:
    from peft import TaskType

    return dict(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=preset.method.prompt.num_virtual_tokens)


def _prompt_tuning_config(model, preset: TrainPreset, total_steps: int | None):
    from peft import PromptTuningConfig, PromptTuningInit

    params = preset.method.prompt
    if params.init_text:
        return PromptTuningConfig(
            prompt_tuning_init=PromptTuningInit.TEXT,
            prompt_tuning_init_text=params.init_text,
            tokenizer_name_or_path=model.config._name_or_path,
            **_virtual_tokens(preset),
        )
    return PromptTuningConfig(prompt_tuning_init=PromptTuningInit.RANDOM, **_virtual_tokens(preset))


def _prefix_tuning_config(model, preset: TrainPreset, total_steps: int | None):
    from peft import PrefixTuningConfig

    params = preset.method.prompt
    return PrefixTuningConfig(prefix_projection=params.prefix_projection, encoder_hidden_size=params.encoder_hidden_size, **_virtual_tokens(preset))


def _p_tuning_config(model, preset: TrainPreset, total_steps: int | None):
    from peft import PromptEncoderConfig

    params = preset.method.prompt
    return PromptEncoderConfig(
        encoder_hidden_size=params.encoder_hidden_size, encoder_reparameterization_type=params.encoder_type, **_virtual_tokens(preset)
    )


# --------------------------------------------------------------------------- LoRA initialisation


@dataclass(frozen=True)
class LoraInitBuilder:
    peft_value: Callable[[str], bool | str]  # method.lora.init -> LoraConfig(init_lora_weights=…)
    after_wrap: Callable[[Any, TrainPreset], None] | None = None  # a step once peft has wrapped the model


def _loftq(model, preset: TrainPreset) -> None:
    """Fit A and B to the 4-bit base's quantization error, from the original weights in the model's safetensors."""
    import torch
    from peft import replace_lora_weights_loftq

    if not torch.cuda.is_available():
        raise EngineError(
            "method.lora.init loftq fits A and B on a CUDA GPU (peft computes LoftQ there) and this machine has none",
            "train on a GPU, or set method.lora.init: default",
        )
    try:
        replace_lora_weights_loftq(model)
    except (ValueError, OSError) as exc:
        raise EngineError(
            f"method.lora.init loftq: {exc}",
            "LoftQ reads the original weights from the model's safetensors files: point model.path at a folder that has them",
        ) from None


# peft's own init_lora_weights="loftq" quantizes a full-precision base itself, which then trains
# against weights no saved adapter refers to; the 4-bit base here is quantized already, so LoftQ
# fits A and B to its error after wrapping and the adapter stays one for the usual 4-bit base.
LORA_INITS: dict[str, LoraInitBuilder] = {
    "default": LoraInitBuilder(lambda value: True),
    "gaussian": LoraInitBuilder(lambda value: "gaussian"),
    "pissa": LoraInitBuilder(lambda value: "pissa"),
    "pissa_niter_N": LoraInitBuilder(lambda value: value),  # peft reads the iterations from the name
    "olora": LoraInitBuilder(lambda value: "olora"),
    "loftq": LoraInitBuilder(lambda value: True, after_wrap=_loftq),
}

# The PeftModel attribute naming the folder that holds the adapter as PiSSA / OLoRA initialised it.
_INITIAL_ADAPTER = "tunebench_initial_adapter"


def _finish_lora_init(model, preset: TrainPreset) -> None:
    init = lora_init(preset.method.lora.init)
    step = LORA_INITS[init.name].after_wrap
    if step is not None:
        step(model, preset)
    if init.moves_base_weights:
        # Every later save converts against this copy: the saved adapter is then a plain LoRA on the
        # original base (peft's path_initial_model_for_weight_conversion), so chat, eval and merge
        # load it like any other.
        folder = tempfile.mkdtemp(prefix="tunebench-lora-init-")
        weakref.finalize(model, shutil.rmtree, folder, ignore_errors=True)  # it goes with the model
        initial = os.path.join(folder, "initial")
        model.save_pretrained(initial)
        setattr(model, _INITIAL_ADAPTER, initial)


def converts_saved_adapters(model) -> bool:
    """Whether the adapters this model saves are converted back to a plain LoRA (PiSSA, OLoRA)."""
    return getattr(model, _INITIAL_ADAPTER, None) is not None


def save_adapter(model, output_dir: str | Path) -> None:
    """Rewrite the adapter saved in output_dir as a plain LoRA on the original base (only for PiSSA / OLoRA)."""
    initial = getattr(model, _INITIAL_ADAPTER, None)
    if initial is None:
        return
    with warnings.catch_warnings():
        # peft loads the initial copy beside the trained adapter to convert, and warns against mixing
        # adapters on a changed base: the conversion is what it recommends.
        warnings.filterwarnings("ignore", message=".*changes the base weights.*", category=UserWarning)
        model.save_pretrained(str(output_dir), path_initial_model_for_weight_conversion=initial)


def load_adapter_weights(model, checkpoint: str | Path) -> None:
    """Put a saved adapter's weights into the in-memory peft model (as resume and load-best do)."""
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    weights = load_peft_weights(str(checkpoint), device=str(model.device))
    if converts_saved_adapters(model):
        # peft saves the converted adapter as [A | A0] x [B | -B0]: the first half of the rank is the trained A and B.
        weights = {
            key: tensor[: tensor.shape[0] // 2] if "lora_A" in key else tensor[:, : tensor.shape[1] // 2] if "lora_B" in key else tensor
            for key, tensor in weights.items()
        }
    set_peft_model_state_dict(model, weights)


# --------------------------------------------------------------------------- LoRA+


class _LoraPlus:
    """An optimizer factory for the Trainer (optimizer_cls_and_kwargs): peft's LoRA+ parameter groups."""

    def __call__(self, model, *, optimizer_cls, lr: float, loraplus_lr_ratio: float, **kwargs):
        from peft.optimizers import create_loraplus_optimizer

        return create_loraplus_optimizer(model, optimizer_cls, lr=lr, loraplus_lr_ratio=loraplus_lr_ratio, **kwargs)


def loraplus_optimizer(preset: TrainPreset, args) -> tuple[type, dict] | None:
    """The Trainer's optimizer_cls_and_kwargs for method.lora.loraplus_lr_ratio (None without it).

    The preset's optimizer (training.optimizer, as TrainingArguments names it) steps every group;
    the B matrices' groups take lr x ratio, and the schedule scales each group alike.
    """
    ratio = preset.method.lora.loraplus_lr_ratio
    if ratio is None:
        return None
    from transformers import Trainer

    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    return _LoraPlus, {
        **kwargs, "optimizer_cls": optimizer_cls, "loraplus_lr_ratio": ratio, "loraplus_weight_decay": args.weight_decay,
    }


# --------------------------------------------------------------------------- the table


Builder = Callable[[Any, TrainPreset, int | None], Any]


def _peft(make_config, *, after_wrap: Callable[[Any, TrainPreset], None] | None = None) -> Builder:
    """A builder that wraps the model in the peft adapter `make_config` describes."""

    def build(model, preset: TrainPreset, total_steps: int | None):
        from peft import get_peft_model

        config = make_config(model, preset, total_steps)
        try:
            with warnings.catch_warnings():
                # peft reads transformers' deprecated is_gradient_checkpointing; not ours to fix, not the user's to see.
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                model = get_peft_model(model, config)
        except (ValueError, NotImplementedError, TypeError) as exc:
            raise EngineError(
                f"method {preset.method.name} does not fit {type(model).__name__}: {exc}",
                "pick another method or adjust its method.* settings",
            ) from None
        _upcast_trainable(model)
        if after_wrap is not None:
            after_wrap(model, preset)
        return model

    return build


def _upcast_trainable(model) -> None:
    """Trained parameters in fp32 (the optimizer's master weights; fp16 loss scaling refuses fp16
    gradients). peft upcasts its adapter layers, but not the trained copies of method.lora.modules_to_save
    (embed_tokens, lm_head), which keep the dtype of the frozen base: 16-bit on a GPU, and under QLoRA
    since the embeddings are no longer upcast (engine.models.prepare_kbit_training)."""
    import torch

    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.to(torch.float32)


_lora = partial(_peft, after_wrap=_finish_lora_init)
BUILDERS: dict[str, Builder] = {
    "full": _full,
    "freeze": _freeze,
    "lora": _lora(_lora_config),
    "qlora": _lora(_lora_config),  # the base is 4/8-bit already (engine.models)
    "dora": _lora(partial(_lora_config, use_dora=True)),
    "rslora": _lora(partial(_lora_config, use_rslora=True)),
    "ia3": _peft(_ia3_config),
    "adalora": _peft(_adalora_config),
    "prompt_tuning": _peft(_prompt_tuning_config),
    "prefix_tuning": _peft(_prefix_tuning_config),
    "p_tuning": _peft(_p_tuning_config),
}


def apply_method(model, preset: TrainPreset, *, total_steps: int | None = None):
    """Make the right parameters trainable (full, freeze) or wrap the model in a peft adapter.

    `total_steps` is needed by AdaLoRA, whose rank budget follows the training schedule.
    """
    return BUILDERS[preset.method.name](model, preset, total_steps)
