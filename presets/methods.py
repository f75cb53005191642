"""The training methods and the LoRA initialisations: one row each, read by everyone who needs them.

The schema takes its method literal and its method rules from METHODS, the TUI its lists, the
doctor its memory arithmetic. The engine's builders are a second table keyed by the same names
(engine/methods.py; a test checks the keys match), because building needs torch and this package
may import nothing of ours. Adding a method is a row here, a builder there and a test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Family = Literal["full", "freeze", "lora", "ia3", "prompt"]
Quantization = Literal["never", "optional", "required"]
MemoryKind = Literal["full", "freeze", "lora", "ia3", "prompt_tuning", "prefix_tuning", "p_tuning"]


@dataclass(frozen=True)
class StrategyLimit:
    """A distributed strategy a method does not work under; `message` follows "method <name> "."""

    strategy: str  # distributed.strategy
    message: str
    unless_fp32: bool = False  # it works when model.dtype is fp32


@dataclass(frozen=True)
class MemoryModel:
    """What the doctor's memory arithmetic needs to know about a method (engine/doctor/memory.py)."""

    kind: MemoryKind  # which adapter formula applies
    rank_field: str = "lora.r"  # LoRA family: the method.* field holding the rank
    magnitude_vectors: bool = False  # DoRA: one trained magnitude per output feature
    singular_values: bool = False  # AdaLoRA: one trained singular value per rank
    virtual_tokens_in_sequence: bool = False  # the virtual tokens lengthen every sequence


@dataclass(frozen=True)
class Method:
    name: str
    label: str  # how people write it
    params: tuple[str, ...]  # the method.* sections holding its settings
    family: Family
    weights: Literal["adapter", "full"]  # what a run trains and saves: an adapter, or the model's own weights
    quantization: Quantization  # may the base be loaded 4/8-bit
    memory: MemoryModel
    strategy_limits: tuple[StrategyLimit, ...] = ()
    lora_options: bool = False  # takes method.lora.init and method.lora.loraplus_lr_ratio (peft's LoraConfig)
    reallocates_ranks: bool = False  # AdaLoRA: the rank budget is reallocated after every optimizer step
    merge_refusal: str | None = None  # an adapter that cannot be folded into the weights, and why
    lighter: str | None = None  # the method the doctor suggests when memory is short

    @property
    def trains_base_weights(self) -> bool:
        return self.weights == "full"

    @property
    def is_adapter(self) -> bool:
        return self.weights == "adapter"

    @property
    def prompt_learning(self) -> bool:
        """Virtual tokens in front of the input, not a module inside the layers."""
        return self.family == "prompt"

    @property
    def layer_adapter(self) -> bool:
        """An adapter inside the model's layers (LoRA family, IA3)."""
        return self.family in ("lora", "ia3")

    @property
    def mergeable(self) -> bool:
        return self.is_adapter and self.merge_refusal is None


_PROMPT_UNDER_FSDP = StrategyLimit(
    "fsdp",
    "does not work under FSDP: its virtual-token module runs outside FSDP's wrapped units and holds fp32 weights "
    "beside the half-precision base (FSDP needs one dtype per unit): use distributed.strategy ddp or deepspeed",
)
_PROMPT_MERGE = "virtual tokens cannot be merged into weights; use the adapter as it is"


def _lora(name: str, label: str, **traits) -> Method:
    traits.setdefault("memory", MemoryModel("lora"))
    traits.setdefault("quantization", "optional")
    return Method(name, label, params=traits.pop("params", ("lora",)), family="lora", weights="adapter", **traits)


def _prompt(name: str, label: str, memory: MemoryModel) -> Method:
    return Method(name, label, params=("prompt",), family="prompt", weights="adapter", quantization="optional",
                  memory=memory, strategy_limits=(_PROMPT_UNDER_FSDP,), merge_refusal=_PROMPT_MERGE)


_ROWS = (
    Method("full", "full fine-tuning", params=(), family="full", weights="full", quantization="never",
           memory=MemoryModel("full"), lighter="lora"),
    Method("freeze", "freeze", params=("freeze",), family="freeze", weights="full", quantization="never",
           memory=MemoryModel("freeze")),
    _lora("lora", "LoRA", lora_options=True, lighter="qlora"),
    _lora("qlora", "QLoRA", quantization="required", lora_options=True),
    _lora("dora", "DoRA", memory=MemoryModel("lora", magnitude_vectors=True), lora_options=True, lighter="qlora"),
    _lora("rslora", "rsLoRA", lora_options=True, lighter="qlora"),
    Method("ia3", "IA3", params=("ia3",), family="ia3", weights="adapter", quantization="optional",
           memory=MemoryModel("ia3"), strategy_limits=(StrategyLimit(
               "fsdp",
               "under FSDP needs model.dtype: fp32: IA3's fp32 scaling vectors sit inside the adapted layers, which FSDP "
               "flattens into one tensor of one dtype with the base weights (or use lora, or distributed.strategy ddp / deepspeed)",
               unless_fp32=True),)),
    _lora("adalora", "AdaLoRA", params=("lora", "adalora"), reallocates_ranks=True,
          memory=MemoryModel("lora", rank_field="adalora.init_r", singular_values=True),
          strategy_limits=(
              StrategyLimit("fsdp", "does not work under FSDP: it reallocates ranks from each parameter's whole gradient, "
                                    "which FSDP shards: use lora, or distributed.strategy ddp"),
              StrategyLimit("deepspeed", "does not work under DeepSpeed: it reallocates ranks from each parameter's gradient "
                                         "after the step, which ZeRO reduces and frees inside its optimizer: use lora, or "
                                         "distributed.strategy ddp"),
          )),
    _prompt("prompt_tuning", "prompt tuning", MemoryModel("prompt_tuning", virtual_tokens_in_sequence=True)),
    _prompt("prefix_tuning", "prefix tuning", MemoryModel("prefix_tuning")),
    _prompt("p_tuning", "P-tuning", MemoryModel("p_tuning", virtual_tokens_in_sequence=True)),
)
METHODS: dict[str, Method] = {row.name: row for row in _ROWS}


def method_names(family: Family | None = None) -> tuple[str, ...]:
    """Method names in table order, all or those of one family."""
    return tuple(name for name, row in METHODS.items() if family is None or row.family == family)


def methods_with(section: str) -> tuple[str, ...]:
    """The methods whose settings live in method.<section>."""
    return tuple(name for name, row in METHODS.items() if section in row.params)


# --------------------------------------------------------------------------- LoRA initialisation


@dataclass(frozen=True)
class LoraInit:
    """A way to initialise the LoRA matrices (method.lora.init); the engine's builders are engine.methods.LORA_INITS.

    An initialisation that moves part of the base weights into the adapter (PiSSA, OLoRA) trains
    against a changed base; every adapter it saves is converted back to a plain LoRA on the
    original base (peft's conversion), so chat, eval and merge load it like any other.
    """

    name: str
    moves_base_weights: bool = False
    base: Literal["any", "unquantized", "4bit"] = "any"  # the model.quantization.mode it needs
    base_why: str = ""
    strategies: tuple[str, ...] | None = None  # the distributed strategies it works under (None: all)
    strategies_why: str = ""
    whole_weights_why: str = ""  # set when it needs every weight whole on each process (not FSDP, not ZeRO-3)
    dora_why: str = ""  # set when it does not work with DoRA's magnitude vectors


_CONVERTED_BASE = "the converted adapter is exact on full-precision weights only (Quant(W - AB) + AB is not Quant(W))"
_CONVERTED_STRATEGIES = (
    "saving converts the adapter against its initial copy, which peft reads from the model itself, not from the "
    "state dict that FSDP and DeepSpeed gather"
)


def _moves_base(name: str) -> LoraInit:
    return LoraInit(name, moves_base_weights=True, base="unquantized", base_why=_CONVERTED_BASE,
                    strategies=("single", "ddp"), strategies_why=_CONVERTED_STRATEGIES)


_ROWS_INIT = (
    LoraInit("default"),  # B = 0, A Kaiming-uniform: the adapter starts as a no-op (peft's default)
    LoraInit("gaussian"),  # B = 0, A Gaussian scaled by the rank
    _moves_base("pissa"),  # A, B from the principal singular vectors of each weight; the base keeps the residual
    _moves_base("pissa_niter_N"),  # PiSSA through a fast randomised SVD of N subspace iterations
    _moves_base("olora"),  # A, B from a QR decomposition of each weight; the base keeps the rest
    # LoftQ: A and B absorb the 4-bit quantization error of each weight (peft computes it on the CUDA GPU).
    LoraInit("loftq", base="4bit", base_why="it fits A and B to the 4-bit quantization error of each weight",
             whole_weights_why="it fits A and B from each original weight whole, on every process",
             dora_why="it replaces A and B after DoRA has set its magnitudes from the weights without them"),
)
LORA_INITS: dict[str, LoraInit] = {row.name: row for row in _ROWS_INIT}
_NITER = re.compile(r"^pissa_niter_(\d+)$")


def lora_init(value: str) -> LoraInit:
    """The row for a method.lora.init value ("pissa_niter_16" is the pissa_niter_N row); KeyError if none."""
    if _NITER.match(value):
        return LORA_INITS["pissa_niter_N"]
    if value in LORA_INITS and value != "pissa_niter_N":
        return LORA_INITS[value]
    raise KeyError(value)
