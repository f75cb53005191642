"""The GPU path's kernel and optimizer choices, made from the preset and the machine.

- The loss path (`training.kernels`): Liger Kernel's fused linear cross-entropy, which computes the
  loss chunk by chunk from the hidden states and never holds the full (tokens x vocabulary) logits,
  with Liger's RMSNorm / RoPE / SwiGLU kernels where the architecture has them; or transformers'
  plain loss over materialised logits. Liger is applied by transformers' own integration
  (TrainingArguments.use_liger_kernel), so this module never imports liger_kernel unless a CUDA run
  chose it: the CPU path never does.
- The optimizer TrainingArguments gets: AdamW's fused CUDA kernel on a GPU (one launch per step
  instead of several per parameter), the plain one on the CPU, where the fused kernel gains nothing.
"""

from __future__ import annotations

from engine.errors import EngineError
from presets import TrainPreset

LIGER_LOSS = "liger_fused_linear_cross_entropy"
# Methods whose adapters sit on method.lora.target_modules.
LORA_ON_HEAD = ("lora", "qlora", "dora", "rslora", "adalora")
PLAIN_LOSS = "plain"

# The preset's optimizer names → TrainingArguments.optim (the 8-bit and paged ones are bitsandbytes').
OPTIMIZERS = {
    "adamw": "adamw_torch",
    "adamw_8bit": "adamw_bnb_8bit",
    "paged_adamw_8bit": "paged_adamw_8bit",
    "paged_adamw_32bit": "paged_adamw_32bit",
    "adafactor": "adafactor",
    "sgd": "sgd",
}
# What a CUDA run uses instead (transformers' own default on CUDA).
FUSED_ON_CUDA = {"adamw": "adamw_torch_fused"}


def optimizer_name(optimizer: str, *, device_is_cuda: bool) -> str:
    """TrainingArguments.optim for the preset's training.optimizer on this device."""
    if device_is_cuda and optimizer in FUSED_ON_CUDA:
        return FUSED_ON_CUDA[optimizer]
    return OPTIMIZERS[optimizer]


def liger_supports(model_type: str) -> bool:
    """Whether Liger Kernel has kernels for this architecture (config.json's model_type)."""
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    return model_type in MODEL_TYPE_TO_APPLY_LIGER_FN


def _model_type(preset: TrainPreset) -> str:
    from transformers import AutoConfig

    from engine.models import resolve_model_source

    model = preset.model
    return AutoConfig.from_pretrained(resolve_model_source(model), revision=model.revision, trust_remote_code=model.trust_remote_code).model_type


def kernel_choice(preset: TrainPreset, device_is_cuda: bool, *, model_type: str | None = None) -> tuple[str, str]:
    """(loss path, why) for this run: LIGER_LOSS or PLAIN_LOSS.

    `training.kernels: liger` that cannot be honoured (no CUDA, liger-kernel missing, an
    architecture Liger has no kernels for) is an EngineError; `auto` falls back to the plain loss
    and says why. `model_type` defaults to the one in the model's config.json (read only when Liger
    is otherwise possible).
    """
    from presets.extras import install_hint, is_installed

    requested = preset.training.kernels
    if requested == "none":
        return PLAIN_LOSS, "training.kernels is none"
    if not device_is_cuda:
        if requested == "liger":
            raise EngineError("training.kernels liger needs a CUDA GPU (Liger Kernel's kernels are Triton), and this run is on the CPU",
                              "set training.kernels: auto (Liger on a GPU, the plain loss on the CPU) or none")
        return PLAIN_LOSS, "no CUDA GPU, so no Liger Kernel"
    if not is_installed("liger_kernel"):
        if requested == "liger":
            raise EngineError("training.kernels liger needs liger-kernel, which is not installed",
                              f"{install_hint('liger_kernel')}, or set training.kernels: auto or none")
        return PLAIN_LOSS, f"liger-kernel is not installed ({install_hint('liger_kernel')} saves the logits' memory)"
    if preset.method.name in LORA_ON_HEAD and "lm_head" in preset.method.lora.target_modules:
        # Liger's fused loss reads lm_head's weight itself, so a LoRA on the head would be skipped.
        if requested == "liger":
            raise EngineError("training.kernels liger cannot train a LoRA on lm_head (the fused loss reads the head's weight directly)",
                              "drop lm_head from method.lora.target_modules (method.lora.modules_to_save: [lm_head] works), or set training.kernels: auto")
        return PLAIN_LOSS, "method.lora.target_modules has lm_head, which Liger's fused loss would bypass"
    model_type = model_type or _model_type(preset)
    if not liger_supports(model_type):
        if requested == "liger":
            raise EngineError(f"training.kernels liger: Liger Kernel has no kernels for model type {model_type} ({preset.model.path})",
                              "set training.kernels: auto or none")
        return PLAIN_LOSS, f"Liger Kernel has no kernels for model type {model_type}"
    return LIGER_LOSS, f"training.kernels {requested}: Liger Kernel on CUDA ({model_type}: fused RMSNorm / RoPE / MLP too)"


def loss_path(preset: TrainPreset, device_is_cuda: bool, *, model_type: str | None = None) -> str:
    """LIGER_LOSS ("liger_fused_linear_cross_entropy": no full logits in memory) or PLAIN_LOSS ("plain").

    A `liger` request this machine cannot honour reads as plain here (estimates stay on the safe,
    larger side); the run itself refuses it through kernel_choice.
    """
    try:
        return kernel_choice(preset, device_is_cuda, model_type=model_type)[0]
    except EngineError:
        return PLAIN_LOSS
