"""Which attention kernel a run uses, and why.

`model.attn_implementation: auto` picks the fastest kernel that is correct for the batch layout on
this machine; the choice goes with a batch layout (engine.data.collate.make_collator):

- flash_attention_2 (CUDA, Ampere or newer, flash-attn installed): packed micro-batches are flattened
  into one row and the kernel is handed the sample boundaries (cu_seq_lens_q/k, max_length_q/k)
  computed in the collator; padded batches are unpadded by the kernel itself.
- flex_attention (CUDA without flash-attn): packed micro-batches are flattened into one row too, and
  transformers builds a document mask (a sparse BlockMask) from the restarting position ids.
- sdpa (the CPU, pre-Ampere GPUs, padded batches without flash-attn): packed rows keep a
  block-diagonal mask built from the position ids, which is correct but dense (S x S).

Nothing here imports flash_attn: whether it is installed is read from the import system only.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

FLASH_KERNELS = ("flash_attention_2",)
# Kernels that take a packed micro-batch as one flattened row without padding (see the module doc).
FLATTENED_KERNELS = (*FLASH_KERNELS, "flex_attention")
AMPERE = (8, 0)  # flash-attn 2 runs on sm_80 and newer


@dataclass(frozen=True)
class DeviceKind:
    """What the attention choice depends on about this machine."""

    cuda: bool
    capability: tuple[int, int] | None = None
    flash_attn_installed: bool = False
    flex_available: bool = False

    @classmethod
    def detect(cls, device=None) -> DeviceKind:
        """This process's training device (or `device`, a torch.device)."""
        import torch
        from transformers.utils import is_torch_flex_attn_available

        from presets.extras import is_installed

        cuda = torch.cuda.is_available() if device is None else device.type == "cuda"
        capability = tuple(torch.cuda.get_device_capability(device)) if cuda else None
        # flex_attention compiles to Triton kernels on CUDA.
        flex = is_torch_flex_attn_available() and (not cuda or is_installed("triton"))
        return cls(cuda=cuda, capability=capability, flash_attn_installed=is_installed("flash_attn"), flex_available=flex)


def supported_kernels(config) -> set[str] | None:
    """The attention kernels the model class behind `config` declares, or None when unknown (remote code)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:
        return None
    declared = {"eager"}
    if getattr(model_class, "_supports_sdpa", False):
        declared.add("sdpa")
    if getattr(model_class, "_supports_flex_attn", False):
        declared.add("flex_attention")
    if getattr(model_class, "_supports_flash_attn", False):
        declared.update(FLASH_KERNELS)
    return declared


def choose_attention(requested: str, *, packed: bool, device: DeviceKind, supported: Collection[str] | None = None) -> tuple[str, str]:
    """(implementation, reason) for `model.attn_implementation: requested` with packed or padded
    batches on `device`. `supported`: the kernels the model has (supported_kernels), None = all."""
    if requested != "auto":
        return requested, "set by model.attn_implementation"

    def has(kernel: str) -> bool:
        return supported is None or kernel in supported

    layout = "packed" if packed else "padded"
    dense = "sdpa" if has("sdpa") else "eager"
    dense_why = f"{dense} ({'packed rows with a block-diagonal mask' if packed else 'padded batches'})"
    if not device.cuda:
        return dense, f"CPU: {dense_why}; flash-attn and flex_attention train on CUDA only"
    sm = f"sm_{device.capability[0]}{device.capability[1]}" if device.capability else "this GPU"
    if device.capability is None or tuple(device.capability) < AMPERE:
        return dense, f"{sm} is older than Ampere (sm_80), which flash-attn and flex_attention need: {dense_why}"
    if device.flash_attn_installed and has("flash_attention_2"):
        how = ("each micro-batch flattened into one row, sample boundaries (cu_seq_lens) from the collator"
               if packed else "the kernel drops the padding itself")
        return "flash_attention_2", f"{sm} with flash-attn installed, {layout} batches: flash_attention_2 ({how})"
    if device.flash_attn_installed:
        why = "the model has no flash-attention support"
    else:
        from presets.extras import install_hint

        why = f"flash-attn is not installed ({install_hint('flash_attn')} for flash_attention_2)"
    if packed and device.flex_available and has("flex_attention"):
        return "flex_attention", f"{sm}, {why}: flex_attention with a document mask on one flattened row per micro-batch, no padding"
    return dense, f"{sm}, {why}: {dense_why}"
