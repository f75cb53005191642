"""Apply a preset's training method to a loaded model.

full and freeze set `requires_grad` on the model's own parameters; every other method goes through
peft (LoRA and its variants, IA3, AdaLoRA, the prompt-learning family). Names in the preset that do
not exist in the model are refused before peft sees them, with the names that do exist.
"""

from __future__ import annotations

import re
import warnings

import engine.models  # noqa: F401  (quiets bitsandbytes before peft imports it)
from engine.errors import EngineError
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


# --------------------------------------------------------------------------- methods


def _full(model):
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def _freeze(model, preset: TrainPreset):
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


def _lora_config(model, preset: TrainPreset, total_steps: int | None):
    from peft import AdaLoraConfig, LoraConfig, TaskType

    params = preset.method.lora
    name = preset.method.name
    targets = params.target_modules
    if targets != "all-linear":
        _check_names(model, targets, "method.lora.target_modules", linear_only=True)
    _check_names(model, params.modules_to_save, "method.lora.modules_to_save", linear_only=False)
    common = dict(
        task_type=TaskType.CAUSAL_LM,
        lora_alpha=params.alpha,
        lora_dropout=params.dropout,
        target_modules=targets,
        modules_to_save=params.modules_to_save or None,
        bias=params.bias,
    )
    if name == "adalora":
        ada = preset.method.adalora
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
            beta1=ada.beta1, beta2=ada.beta2, orth_reg_weight=ada.orth_reg_weight, total_step=total_steps, **common,
        )
    return LoraConfig(r=params.r, use_dora=name == "dora", use_rslora=name == "rslora", **common)


def _ia3_config(model, preset: TrainPreset):
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


def _prompt_config(model, preset: TrainPreset):
    from peft import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, PromptTuningInit, TaskType

    params = preset.method.prompt
    name = preset.method.name
    common = dict(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=params.num_virtual_tokens)
    if name == "prompt_tuning":
        if params.init_text:
            return PromptTuningConfig(
                prompt_tuning_init=PromptTuningInit.TEXT,
                prompt_tuning_init_text=params.init_text,
                tokenizer_name_or_path=model.config._name_or_path,
                **common,
            )
        return PromptTuningConfig(prompt_tuning_init=PromptTuningInit.RANDOM, **common)
    if name == "prefix_tuning":
        return PrefixTuningConfig(prefix_projection=params.prefix_projection, encoder_hidden_size=params.encoder_hidden_size, **common)
    return PromptEncoderConfig(
        encoder_hidden_size=params.encoder_hidden_size, encoder_reparameterization_type=params.encoder_type, **common
    )


def apply_method(model, preset: TrainPreset, *, total_steps: int | None = None):
    """Make the right parameters trainable (full, freeze) or wrap the model in a peft adapter.

    `total_steps` is needed by AdaLoRA, whose rank budget follows the training schedule.
    """
    from peft import get_peft_model

    name = preset.method.name
    if name == "full":
        return _full(model)
    if name == "freeze":
        return _freeze(model, preset)
    if name in ("lora", "qlora", "dora", "rslora", "adalora"):
        config = _lora_config(model, preset, total_steps)
    elif name == "ia3":
        config = _ia3_config(model, preset)
    else:
        config = _prompt_config(model, preset)
    try:
        with warnings.catch_warnings():
            # peft reads transformers' deprecated is_gradient_checkpointing; not ours to fix, not the user's to see.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return get_peft_model(model, config)
    except (ValueError, NotImplementedError, TypeError) as exc:
        raise EngineError(
            f"method {name} does not fit {type(model).__name__}: {exc}",
            "pick another method or adjust its method.* settings",
        ) from None
