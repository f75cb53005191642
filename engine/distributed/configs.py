"""The configuration files a distributed run is launched with: accelerate's, DeepSpeed's JSON and
FSDP's section, generated from the preset (what `accelerate config` would have written for it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.distributed.world import world_size
from engine.errors import EngineError
from presets.methods import METHODS
from presets.schema import TrainPreset


# --------------------------------------------------------------------------- FSDP wrap class


def decoder_layer_class(model_cfg) -> str:
    """The model's decoder-layer class name(s) for FSDP's transformer wrap policy, comma-separated.

    Read from config.json's architecture and the modelling class's `_no_split_modules`, so no
    weights are loaded; for remote code the class is fetched (not instantiated) the same way, and
    only as a last resort is the model built on the meta device (no memory, no weights).
    """
    import transformers
    from transformers import AutoConfig

    from engine.models import resolve_model_source

    source = resolve_model_source(model_cfg)
    kwargs = dict(revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code)
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except Exception as exc:
        raise EngineError(f"cannot read the model config of {model_cfg.path}: {exc}", "check model.path") from None

    classes = [getattr(transformers, arch) for arch in getattr(config, "architectures", None) or [] if hasattr(transformers, arch)]
    auto_map = getattr(config, "auto_map", None) or {}
    if not classes and model_cfg.trust_remote_code and "AutoModelForCausalLM" in auto_map:
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        classes.append(get_class_from_dynamic_module(auto_map["AutoModelForCausalLM"], source, revision=model_cfg.revision))
    if not classes:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

        try:
            classes.append(MODEL_FOR_CAUSAL_LM_MAPPING[type(config)])
        except KeyError:
            pass
    for cls in classes:
        names = getattr(cls, "_no_split_modules", None)
        if names:
            return ",".join(dict.fromkeys(names))

    # Remote code without _no_split_modules: look at what the model's layer list holds.
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=model_cfg.trust_remote_code)
    except Exception as exc:
        raise EngineError(
            f"cannot find the decoder layer class of {model_cfg.path} ({exc})",
            "set distributed.fsdp_wrap: size",
        ) from None
    if getattr(model, "_no_split_modules", None):
        return ",".join(dict.fromkeys(model._no_split_modules))
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 1:
            return type(module[0]).__name__
    raise EngineError(f"cannot find the decoder layer class of {model_cfg.path}", "set distributed.fsdp_wrap: size")


# --------------------------------------------------------------------------- generated configs


def deepspeed_config(preset: TrainPreset) -> dict[str, Any]:
    """The DeepSpeed JSON for ZeRO 1/2/3 (optionally offloaded to CPU).

    "auto" values are filled by the HF Trainer from the preset's training section (batch size,
    accumulation, clipping, precision, learning rate), so both stay in step.
    """
    dist = preset.distributed
    stage = dist.zero_stage
    zero: dict[str, Any] = {"stage": stage}
    if stage >= 2:
        zero.update(
            # overlap_comm on: the gradient reduce runs behind the backward instead of after it.
            # No measurement here says otherwise; its cost is reduce_bucket_size ("auto": filled
            # from the model's hidden size) of extra buffer per rank, which the doctor's estimate
            # leaves inside its margin. Turn it off only with a measured reason written here.
            overlap_comm=True,
            contiguous_gradients=True,
            reduce_bucket_size="auto",
        )
    if stage == 2:
        zero.update(allgather_partitions=True, allgather_bucket_size=5e8, reduce_scatter=True, round_robin_gradients=True)
    if stage == 3:
        zero.update(
            sub_group_size=1e9,
            stage3_prefetch_bucket_size="auto",
            stage3_param_persistence_threshold="auto",
            stage3_max_live_parameters=1e9,
            stage3_max_reuse_distance=1e9,
            # Saving gathers full 16-bit weights, so the final model / adapter is a normal one.
            stage3_gather_16bit_weights_on_model_save=True,
        )
    config: dict[str, Any] = {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        # The Trainer builds the optimizer the preset names; DeepSpeed accepts it with this flag.
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": "auto"},
        "fp16": {
            "enabled": "auto",
            "loss_scale": 0,
            "loss_scale_window": 1000,
            "initial_scale_power": 16,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
        "zero_optimization": zero,
    }
    if dist.offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
        # Offloaded optimizer states are stepped on the CPU; DeepSpeed refuses a torch optimizer
        # there, so name AdamW and let DeepSpeed use its CPU Adam (the validator allows only adamw).
        config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
        }
    return config


def fsdp_version(preset: TrainPreset) -> int:
    """FSDP2 (per-parameter sharding, DTensor) wherever accelerate can express the run, else FSDP1.

    FSDP1 stays for what FSDP2 cannot take from accelerate's config file: hybrid_shard (FSDP2 needs a
    2-D device mesh that the launcher does not build) and no_shard (FSDP2 always shards; that is
    DDP's job), and quantized bases (the Trainer sets the mixed-precision policy to the bitsandbytes storage
    dtype only on FSDP1's delayed-preparation path; FSDP2 would all-gather the packed weights as floats).
    """
    dist = preset.distributed
    if dist.fsdp_sharding in ("hybrid_shard", "no_shard"):
        return 1
    if preset.model.quantization.mode != "none":
        return 1
    return 2


def fsdp_use_orig_params(preset: TrainPreset) -> bool:
    """FSDP1 flattens each wrapped unit into one tensor that needs one requires_grad.

    LoRA-family adapters are wrapped unit by unit by PEFT's policy (the Trainer installs it), so
    their units are uniform and the flat parameters save memory. Full and freeze training keep the
    original parameters: freeze mixes trainable and frozen tensors inside one decoder layer.
    (FSDP2 always keeps the original parameters; the key is not written for it.)
    """
    return METHODS[preset.method.name].family != "lora"


def fsdp_config(preset: TrainPreset, layer_class: str | None) -> dict[str, Any]:
    dist = preset.distributed
    sharding = dist.fsdp_sharding.upper()
    version = fsdp_version(preset)
    config: dict[str, Any] = {
        "fsdp_version": version,
        "fsdp_offload_params": dist.offload,
        # Only rank 0 reads the weights (the others start on the meta device and receive them),
        # so N processes do not need N copies of the model in CPU memory.
        "fsdp_cpu_ram_efficient_loading": True,
        # Checkpoints are written shard by shard (fast, resumable); the final model is gathered.
        "fsdp_state_dict_type": "SHARDED_STATE_DICT",
        # FSDP's own activation checkpointing wraps each decoder layer inside the sharded unit; the
        # Trainer's (turned off under FSDP in engine.train) would add an all-gather in the backward.
        "fsdp_activation_checkpointing": preset.training.gradient_checkpointing,
    }
    if version == 2:
        # full_shard frees the gathered weights after the forward (ZeRO-3), shard_grad_op keeps them (ZeRO-2).
        config["fsdp_reshard_after_forward"] = dist.fsdp_sharding == "full_shard"
    else:
        config.update(
            fsdp_sharding_strategy=sharding,
            fsdp_reshard_after_forward=sharding,
            fsdp_backward_prefetch="BACKWARD_PRE",
            fsdp_forward_prefetch=False,
            fsdp_sync_module_states=True,
            fsdp_use_orig_params=fsdp_use_orig_params(preset),
        )
    if dist.fsdp_wrap == "transformer_layer":
        config["fsdp_auto_wrap_policy"] = "TRANSFORMER_BASED_WRAP"
        config["fsdp_transformer_layer_cls_to_wrap"] = layer_class
    else:
        config["fsdp_auto_wrap_policy"] = "SIZE_BASED_WRAP"
        config["fsdp_min_num_params"] = 100_000_000
    return config


def accelerate_config(
    preset: TrainPreset,
    *,
    use_cpu: bool,
    main_port: int,
    precision: str,
    deepspeed_file: Path | None = None,
    layer_class: str | None = None,
) -> dict[str, Any]:
    """The accelerate config file (what `accelerate config` would have written for this preset)."""
    dist = preset.distributed
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "num_machines": dist.num_nodes,
        # accelerate counts processes over all machines; the preset counts them per node.
        "num_processes": world_size(preset),
        "machine_rank": dist.node_rank,
        "main_process_ip": dist.main_address,
        "main_process_port": main_port,
        "rdzv_backend": "static",
        "same_network": True,
        "gpu_ids": "all",  # the engine pins the run's GPUs with CUDA_VISIBLE_DEVICES
        "use_cpu": use_cpu,
        "downcast_bf16": "no",
        "tpu_env": [],
        "tpu_use_cluster": False,
        "tpu_use_sudo": False,
    }
    if dist.strategy == "deepspeed":
        config["distributed_type"] = "DEEPSPEED"
        config["deepspeed_config"] = {
            "deepspeed_config_file": str(deepspeed_file),
            "zero3_init_flag": dist.zero_stage == 3,
            # One launcher per node (like torchrun), not DeepSpeed's ssh fan-out from node 0.
            "deepspeed_multinode_launcher": "standard",
        }
        # No mixed_precision key: with a DeepSpeed file, precision lives there ("auto").
    else:
        config["distributed_type"] = "FSDP" if dist.strategy == "fsdp" else "MULTI_GPU"
        config["mixed_precision"] = precision
        if dist.strategy == "fsdp":
            config["fsdp_config"] = fsdp_config(preset, layer_class)
    return dict(sorted(config.items()))
