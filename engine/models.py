"""Load a tokenizer and a model as a preset's `model:` section says.

A local directory or a hub id, a revision, a dtype, bitsandbytes 4-bit / 8-bit quantization, an
attention kernel and a device. Every way this can fail for a user's reason (a path that is not
there, a hub id that cannot be fetched, 4-bit where bitsandbytes cannot run, a missing kernel)
ends in an EngineError that says what to change.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

from engine.errors import EngineError
from presets.schema import ModelConfig

Precision = Literal["bf16", "fp16", "fp32"]

# bitsandbytes >= 0.49 tries, at import, to fetch a faster CPU 4-bit kernel from the hub through the
# optional `kernels` package and logs a warning without it. Its own CPU kernels work and nothing
# should download, so the warning is noise. Silenced here, before anything imports bitsandbytes.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


# --------------------------------------------------------------------------- device and precision


def quiet_libraries() -> None:
    """The sink speaks for a job (and the TUI for the chat): transformers' own progress bars and
    notices would only interleave with it."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def training_device():
    """The device this process trains on: its CUDA GPU (LOCAL_RANK under a launcher), else the CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def resolve_precision(precision: str, device=None) -> Precision:
    """auto → bf16 on GPUs that have it, fp16 (with loss scaling) on older GPUs, fp32 on the CPU."""
    import torch

    device = device or training_device()
    on_cuda = device.type == "cuda"
    if precision == "auto":
        if not on_cuda:
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and not on_cuda:
        raise EngineError(
            "fp16 mixed precision needs a CUDA GPU; this run is on the CPU",
            "set training.precision: auto (fp32 on the CPU) or bf16",
        )
    if precision == "bf16" and on_cuda and not torch.cuda.is_bf16_supported():
        raise EngineError(
            f"this GPU ({torch.cuda.get_device_name(device)}) has no bf16 support",
            "set training.precision: auto or fp16",
        )
    return precision  # type: ignore[return-value]


def torch_dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def weights_dtype(model_cfg: ModelConfig, precision: Precision, *, trains_base_weights: bool):
    """The dtype the base weights are loaded in.

    auto: frozen base weights (adapters, QLoRA) in the training precision, which halves their memory;
    weights that are trained themselves (full, freeze) in fp32, because the optimizer needs fp32
    master weights and fp16 loss scaling refuses fp16 gradients.
    """
    if model_cfg.dtype != "auto":
        return torch_dtype(model_cfg.dtype)
    if trains_base_weights:
        return torch_dtype("fp32")
    return torch_dtype(precision)


# --------------------------------------------------------------------------- where the model is


def _looks_like_local_path(path: str) -> bool:
    # A hub id is "name" or "org/name"; anything else with a separator is meant as a directory.
    return path.startswith(("/", "./", "../", "~")) or path.count("/") > 1 or os.sep != "/" and os.sep in path


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("TRANSFORMERS_OFFLINE", "0").upper() in ("1", "ON", "YES", "TRUE")


def resolve_model_source(model_cfg: ModelConfig) -> str:
    """The local directory or hub id to load from; EngineError when neither can be used."""
    raw = model_cfg.path
    local = Path(raw).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise EngineError(
                f"model.path {local} is a directory but holds no model (no config.json)",
                "point model.path at a directory written by save_pretrained, or at a hub id such as Qwen/Qwen2.5-0.5B-Instruct",
            )
        return str(local)
    if local.exists():
        raise EngineError(f"model.path {local} is a file, not a model directory", "point model.path at the model's directory")
    if _looks_like_local_path(raw):
        raise EngineError(
            f"model.path {raw}: no such directory",
            "check the path (make the demo model with `tunebench make-tiny-model DIR`), or give a hub id such as Qwen/Qwen2.5-0.5B-Instruct",
        )
    if _offline():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(raw, "config.json", revision=model_cfg.revision)
        if not isinstance(cached, str):
            raise EngineError(
                f"model.path {raw}: no such local directory, and {raw!r} is not in the hub cache while offline "
                "(HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set)",
                "download it once with network access (huggingface-cli download " + raw + "), unset HF_HUB_OFFLINE, or use a local path",
            )
    return raw


def _hub_error(model_cfg: ModelConfig, exc: Exception) -> EngineError:
    """Turn the hub's and transformers' load errors into one clear message."""
    from huggingface_hub import errors

    name = model_cfg.path
    if isinstance(exc, errors.GatedRepoError):
        return EngineError(f"model {name} is gated on the hub", "accept its licence on huggingface.co and log in (huggingface-cli login)")
    if isinstance(exc, errors.RevisionNotFoundError):
        return EngineError(f"model {name} has no revision {model_cfg.revision!r}", "fix model.revision (a branch, tag or commit)")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return EngineError(f"model {name}: no such model on the hub (or it is private)", "check the hub id's spelling, or log in for a private model")
    if isinstance(exc, (errors.LocalEntryNotFoundError, ConnectionError, TimeoutError)):
        return EngineError(f"model {name} could not be fetched from the hub and is not cached", "check the network, or download it once and use the local path")
    return EngineError(f"model {name} could not be loaded: {exc}", "check model.path, model.revision and model.trust_remote_code")


def _hub_cause(exc: Exception) -> Exception:
    """transformers wraps hub errors in OSError: find the hub error underneath."""
    from huggingface_hub import errors

    seen = exc
    while seen is not None:
        if isinstance(seen, (errors.HfHubHTTPError, errors.LocalEntryNotFoundError)):
            return seen
        seen = seen.__cause__ or seen.__context__
    return exc


# --------------------------------------------------------------------------- bitsandbytes


def import_bitsandbytes():
    """Import bitsandbytes, or say that it cannot run here."""
    try:
        import bitsandbytes
    except Exception as exc:  # ImportError, or a RuntimeError from a broken native library
        from presets.extras import install_hint

        raise EngineError(
            f"bitsandbytes cannot be imported here ({exc})",
            f"{install_hint('bitsandbytes')}, or set model.quantization.mode: none and use lora",
        ) from None
    return bitsandbytes


def check_bitsandbytes(mode: str, device) -> None:
    """Quantize a small matrix on the target device: the cheapest proof that k-bit loading will work."""
    import torch

    bnb = import_bitsandbytes()
    try:
        probe = torch.randn(64, 64, device=device, dtype=torch.float32)
        if mode == "4bit":
            packed, state = bnb.functional.quantize_4bit(probe, quant_type="nf4")
            bnb.functional.dequantize_4bit(packed, state)
        else:
            bnb.functional.int8_vectorwise_quant(probe.to(torch.float16))
    except Exception as exc:
        raise EngineError(
            f"bitsandbytes {mode} quantization cannot run on {device.type} here ({type(exc).__name__}: {exc})",
            "set model.quantization.mode: none and use lora (not qlora), or run on a CUDA GPU",
        ) from None


def quantization_config(model_cfg: ModelConfig, precision: Precision, *, sharded: bool = False):
    """bitsandbytes settings. `sharded` (FSDP, ZeRO-3): the packed 4-bit weights are stored in the
    compute dtype, so that FSDP / ZeRO-3 flatten one dtype per shard (bnb_4bit_quant_storage)."""
    from transformers import BitsAndBytesConfig

    quant = model_cfg.quantization
    if quant.mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch_dtype(precision if quant.compute_dtype == "auto" else quant.compute_dtype)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.quant_type,
        bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=compute,
        **({"bnb_4bit_quant_storage": compute} if sharded else {}),
    )


# --------------------------------------------------------------------------- loading


def load_tokenizer(model_cfg: ModelConfig):
    """The model's tokenizer, with a pad token (the eos token when the model has none)."""
    from transformers import AutoTokenizer

    source = resolve_model_source(model_cfg)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code
        )
    except EngineError:
        raise
    except Exception as exc:
        cause = _hub_cause(exc)
        if cause is not exc or not Path(source).is_dir():
            raise _hub_error(model_cfg, cause) from None
        raise EngineError(f"no usable tokenizer in {source}: {exc}", "save the tokenizer next to the model (tokenizer.save_pretrained)") from None
    if tokenizer.pad_token is None:
        # Padding positions carry no labels, so any token serves; eos is what most recipes use.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def prepare_kbit_training(model) -> None:
    """QLoRA's preparation of a quantized base: peft's prepare_model_for_kbit_training, less one cast.

    Every parameter is frozen and the small 16-bit ones (norms, biases) are upcast to fp32, as peft
    does; the input embeddings and the output head stay in the compute dtype. peft upcasts those too,
    which with a 150k vocabulary doubles their memory; frozen, they need no fp32: an embedding is a
    lookup, and the head's matmul accumulates in fp32 while the loss upcasts the logits (a LoRA on a
    16-bit base runs them so too). Trained copies (method.lora.modules_to_save) are upcast by
    engine.methods.
    """
    import torch

    kept = {id(p) for module in (model.get_input_embeddings(), model.get_output_embeddings()) if module is not None
            for p in module.parameters()}
    for param in model.parameters():
        param.requires_grad_(False)
        # Params4bit holds packed uint8 weights; 8-bit ones are int8: neither is a float to upcast.
        if param.dtype in (torch.float16, torch.bfloat16) and id(param) not in kept and type(param).__name__ != "Params4bit":
            param.data = param.data.to(torch.float32)
    head = model.get_output_embeddings()
    if head is not None and head.weight.dtype in (torch.float16, torch.bfloat16):
        # The final norm now hands it fp32 hidden states, which only autocast would cast to its dtype.
        head.register_forward_pre_hook(lambda module, args: (args[0].to(module.weight.dtype), *args[1:]))


def attention_for(model_cfg: ModelConfig, *, packed: bool, device=None, config=None) -> tuple[str, str]:
    """(attention kernel, reason) for this model on `device` with packed or padded batches: the
    preset's model.attn_implementation, or for auto engine.attention's pick among the kernels the
    model's class supports (read from `config`, loaded when not given)."""
    from transformers import AutoConfig

    from engine.attention import DeviceKind, choose_attention, supported_kernels

    supported = None
    if model_cfg.attn_implementation == "auto" and config is None:
        source = resolve_model_source(model_cfg)
        try:
            config = AutoConfig.from_pretrained(source, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code)
        except Exception as exc:
            raise _hub_error(model_cfg, _hub_cause(exc)) from None
    if config is not None:
        supported = supported_kernels(config)
    return choose_attention(model_cfg.attn_implementation, packed=packed, device=DeviceKind.detect(device or training_device()), supported=supported)


def load_model(model_cfg: ModelConfig, *, precision: Precision, for_training: bool, trains_base_weights: bool = False, device=None,
               attn_implementation: str | None = None):
    """Load the causal LM as `model_cfg` says, on `device` (default: this process's training device).

    `precision` is the resolved training precision (see resolve_precision): it picks the dtype of
    frozen weights and of 4-bit matmuls when the preset says auto. A quantized model loaded for
    training is prepared for k-bit training (frozen, norms upcast to fp32), as QLoRA needs.
    `attn_implementation`: the kernel chosen by attention_for (a training run chooses it with its
    batch layout); None = attention_for with padded batches.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from engine.distributed.rank import sharded_loading

    # FSDP / ZeRO-3 (engine.dist_entry under accelerate launch) place the parameter shards themselves.
    sharded = sharded_loading() is not None
    device = device or training_device()
    source = resolve_model_source(model_cfg)
    mode = model_cfg.quantization.mode
    kwargs: dict = dict(revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code)
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except Exception as exc:
        raise _hub_error(model_cfg, _hub_cause(exc)) from None

    kwargs["dtype"] = weights_dtype(model_cfg, precision, trains_base_weights=trains_base_weights)
    if device.type == "cpu" and kwargs["dtype"] == torch.float16 and for_training:
        raise EngineError("fp16 weights cannot be trained on the CPU", "set model.dtype: auto (fp32 on the CPU) or bf16")
    attention = attn_implementation or attention_for(model_cfg, packed=False, device=device, config=config)[0]
    if attention == "flex_attention" and device.type == "cpu" and for_training:
        raise EngineError("attn_implementation flex_attention cannot train on the CPU (torch has no CPU backward for it)",
                          "set model.attn_implementation: auto (sdpa on the CPU) or sdpa")
    kwargs["attn_implementation"] = attention
    if mode != "none":
        check_bitsandbytes(mode, device)
        kwargs["quantization_config"] = quantization_config(model_cfg, precision, sharded=sharded)
    if not sharded:
        # One device per process: the Trainer (or the launcher) owns parallelism, not a device_map split.
        kwargs["device_map"] = {"": str(device)}

    try:
        model = AutoModelForCausalLM.from_pretrained(source, config=config, **kwargs)
    except ImportError as exc:
        if "flash" in str(exc).lower():
            from presets.extras import install_hint

            raise EngineError(f"attn_implementation flash_attention_2 is not available: {exc}",
                              f"{install_hint('flash_attn')} on a CUDA machine, or set model.attn_implementation: sdpa (or auto)") from None
        raise EngineError(f"loading {source} needs a missing package: {exc}", "install it into the environment") from None
    except ValueError as exc:
        if "attn_implementation" in str(exc) or "attention" in str(exc).lower():
            # auto itself chose the kernel when the model's class could not be read (remote code).
            advice = "eager (or another kernel the model supports)" if model_cfg.attn_implementation == "auto" else "auto"
            raise EngineError(f"{source} (attention kernel {attention}): {exc}", f"set model.attn_implementation: {advice}") from None
        raise EngineError(f"{source} could not be loaded: {exc}", "check model.path and model.dtype") from None
    except torch.cuda.OutOfMemoryError:
        raise EngineError(
            f"out of memory while loading {source} on {device}",
            "load it quantized (model.quantization.mode: 4bit with method qlora) or in bf16 (model.dtype: bf16), or use a larger GPU",
        ) from None
    except OSError as exc:
        raise _hub_error(model_cfg, _hub_cause(exc)) from None

    if for_training:
        # The KV cache only serves generation; with gradient checkpointing it is even refused.
        model.config.use_cache = False
        if mode != "none" and sharded:
            # prepare_model_for_kbit_training upcasts norms and embeddings to fp32, which would mix
            # dtypes inside one FSDP / ZeRO-3 shard; freezing the base is all QLoRA needs here.
            for param in model.parameters():
                param.requires_grad_(False)
        elif mode != "none":
            # Gradient checkpointing is switched on later for every method alike (engine.train).
            prepare_kbit_training(model)
    else:
        model.eval()
    return model
