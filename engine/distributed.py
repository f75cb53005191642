"""Multi-GPU and multi-node runs: a preset's `distributed` section becomes an `accelerate launch`.

tunebench writes no distributed trainer of its own. For a preset whose strategy is not `single`,
the job body calls `launch(preset, run_dir, sink, resume_from=…)` where it would call
`engine.train.train` with the same arguments. launch()

1. checks that this machine can run the strategy (GPUs visible, DeepSpeed importable, a resume
   with the same world size and strategy) and says why not with an EngineError;
2. writes into the run folder what it is about to run, so that the user can read and rerun it:
   `accelerate.yaml`, `deepspeed.json` (ZeRO strategies), `launch.sh` and `distributed.json`;
3. starts `accelerate launch … -m engine.dist_entry` in its own session and, while it runs,
   replays what rank 0 writes to the run's metrics.jsonl into `sink` (metrics, events,
   checkpoints, findings) and turns `sink.should_stop()` into a stop request that every rank
   obeys at the same step boundary (request_stop / agree_on_stop);
4. returns a LaunchResult read from the result the ranks leave behind.

So the engine knows only the Sink interface here too: the ranks never touch the store.
Each rank runs engine.dist_entry (rank 0 writes the run's files, the other ranks log to
`rank-<n>.log`). `sharded_loading()` tells engine.models, inside a rank, whether the base model's
parameters are sharded (FSDP, ZeRO-3), which changes how a model is loaded.

Only the standard library at import time: the jobs layer imports this module inside job bodies
and the TUI must stay light.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from engine.artifacts import METRICS_FILE
from engine.errors import EngineError
from engine.sink import Sink
from presets.schema import LORA_FAMILY, TrainPreset

ACCELERATE_CONFIG_FILE = "accelerate.yaml"
DEEPSPEED_CONFIG_FILE = "deepspeed.json"
LAUNCH_SCRIPT = "launch.sh"
WORLD_FILE = "distributed.json"  # the world the run was last launched with (for people and tools)
STOP_FILE = "stop-request"  # a stop reason written by the supervisor; rank 0 reads it at each step
RESULT_FILE = "dist-result.json"  # how a job ended, written by the ranks for launch() to read

# Stop reasons ordered by precedence: when ranks disagree in the same step, the highest wins.
# A cancel outranks an interrupt: the user asked for the run to end, not to be resumed.
STOP_REASONS = ("early_stop", "diverged", "nan", "interrupt", "cancel")

# How long launch() waits, after asking the ranks to stop, before it signals them itself.
STOP_GRACE_S = 300.0


# --------------------------------------------------------------------------- the preset's world


def is_distributed(preset: TrainPreset) -> bool:
    return preset.distributed.strategy != "single"


def world_size(preset: TrainPreset) -> int:
    dist = preset.distributed
    return dist.num_processes * dist.num_nodes


def visible_gpu_ids(env: Mapping[str, str] | None = None) -> list[str]:
    """The GPUs a process started with `env` would see, without initialising CUDA.

    CUDA_VISIBLE_DEVICES when it is set (ids or UUIDs, as given), else every GPU NVML counts;
    none when there is no NVIDIA driver.
    """
    env = os.environ if env is None else env
    pinned = env.get("CUDA_VISIBLE_DEVICES")
    if pinned is not None:
        ids = [part.strip() for part in pinned.split(",") if part.strip()]
        # CUDA stops at the first invalid entry; "-1" is the usual way to hide every GPU.
        valid = []
        for part in ids:
            if part.startswith("-"):
                break
            valid.append(part)
        return valid
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return [str(i) for i in range(pynvml.nvmlDeviceGetCount())]
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no library: a CPU machine
        return []


def _gpus_have_bf16(gpu_ids: list[str]) -> bool:
    """bf16 needs compute capability 8.0 (Ampere) or newer on every GPU of the run."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            count = pynvml.nvmlDeviceGetCount()
            handles = []
            for gpu in gpu_ids:
                if gpu.isdigit() and int(gpu) < count:
                    handles.append(pynvml.nvmlDeviceGetHandleByIndex(int(gpu)))
                else:
                    handles.append(pynvml.nvmlDeviceGetHandleByUUID(gpu))
            return all(pynvml.nvmlDeviceGetCudaComputeCapability(h)[0] >= 8 for h in handles)
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return False


def mixed_precision(preset: TrainPreset, on_gpu: bool, gpu_ids: list[str] | None = None) -> str:
    """accelerate's name for the run's precision (the engine resolves `auto` the same way)."""
    precision = preset.training.precision
    if precision == "auto":
        if not on_gpu:
            return "no"
        return "bf16" if _gpus_have_bf16(gpu_ids or []) else "fp16"
    return {"fp32": "no"}.get(precision, precision)


@dataclass(frozen=True)
class MemoryShards:
    """How the strategy divides each GPU's share of training memory (for the memory preflight).

    Each divisor is the number of processes that share one copy; `*_on_cpu` parts leave the GPU.
    Activations are never sharded: every process runs its own micro-batch.
    """

    weights: int = 1
    gradients: int = 1
    optimizer: int = 1
    weights_on_cpu: bool = False
    gradients_on_cpu: bool = False
    optimizer_on_cpu: bool = False


def memory_shards(preset: TrainPreset) -> MemoryShards:
    dist = preset.distributed
    world, per_node = world_size(preset), dist.num_processes
    if dist.strategy == "deepspeed":
        stage = dist.zero_stage
        return MemoryShards(
            weights=world if stage == 3 else 1,
            gradients=world if stage >= 2 else 1,
            optimizer=world,
            weights_on_cpu=dist.offload and stage == 3,
            # ZeRO-Offload moves the gradient partitions to the CPU too, where the optimizer steps.
            gradients_on_cpu=dist.offload,
            optimizer_on_cpu=dist.offload,
        )
    if dist.strategy == "fsdp":
        # hybrid_shard shards within a node and replicates across nodes.
        group = {"full_shard": world, "hybrid_shard": per_node, "shard_grad_op": world, "no_shard": 1}[dist.fsdp_sharding]
        return MemoryShards(
            # shard_grad_op keeps the whole weights from the forward to the backward pass.
            weights=group if dist.fsdp_sharding in ("full_shard", "hybrid_shard") else 1,
            gradients=group,
            optimizer=group,
            weights_on_cpu=dist.offload,
            gradients_on_cpu=dist.offload,
            optimizer_on_cpu=dist.offload,
        )
    return MemoryShards()


# --------------------------------------------------------------------------- can it run here?


def check_environment(preset: TrainPreset, visible_gpus: int) -> None:
    """What the schema cannot know: this machine's GPUs and packages. EngineError says what to do."""
    dist = preset.distributed
    strategy = dist.strategy
    if visible_gpus == 0:
        if strategy == "fsdp":
            raise EngineError(
                "distributed.strategy fsdp needs CUDA GPUs; this machine has none visible",
                "accelerate shards with FSDP only on GPUs (on the CPU it would silently train plain DDP): "
                "set distributed.strategy: ddp for a CPU run",
            )
        if strategy == "deepspeed":
            raise EngineError(
                "distributed.strategy deepspeed needs CUDA GPUs; this machine has none visible",
                "accelerate starts DeepSpeed only on GPUs (DeepSpeed's CPU accelerator needs oneCCL, not gloo): "
                "set distributed.strategy: ddp for a CPU run",
            )
        if dist.backend == "nccl":
            raise EngineError(
                "distributed.backend nccl needs CUDA GPUs; this machine has none visible",
                "set distributed.backend: auto (gloo on the CPU)",
            )
        return
    if dist.num_processes > visible_gpus:
        raise EngineError(
            f"distributed.num_processes is {dist.num_processes} but this node has {visible_gpus} visible GPU(s)",
            f"set distributed.num_processes: {visible_gpus} (one process per GPU), or free GPUs / widen CUDA_VISIBLE_DEVICES",
        )
    if strategy == "deepspeed":
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise EngineError(
                "distributed.strategy deepspeed needs the deepspeed package, which is not installed",
                "pip install deepspeed (it compiles its CUDA ops on first use), or use distributed.strategy: fsdp",
            )


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
            # overlap_comm off: it trades a lot of memory for little speed, and has produced wrong
            # losses with ZeRO-2 in some DeepSpeed releases.
            overlap_comm=False,
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


def fsdp_use_orig_params(preset: TrainPreset) -> bool:
    """FSDP1 flattens each wrapped unit into one tensor that needs one requires_grad.

    LoRA-family adapters are wrapped unit by unit by PEFT's policy (the Trainer installs it), so
    their units are uniform and the flat parameters save memory. Full and freeze training keep the
    original parameters: freeze mixes trainable and frozen tensors inside one decoder layer.
    """
    return preset.method.name not in LORA_FAMILY


def fsdp_config(preset: TrainPreset, layer_class: str | None) -> dict[str, Any]:
    dist = preset.distributed
    sharding = dist.fsdp_sharding.upper()
    config: dict[str, Any] = {
        # FSDP1: the Trainer adapts its wrap policy and mixed precision to PEFT / QLoRA only there.
        "fsdp_version": 1,
        "fsdp_sharding_strategy": sharding,
        "fsdp_reshard_after_forward": sharding,
        "fsdp_offload_params": dist.offload,
        "fsdp_backward_prefetch": "BACKWARD_PRE",
        "fsdp_forward_prefetch": False,
        # Only rank 0 reads the weights (the others start on the meta device and receive them),
        # so N processes do not need N copies of the model in CPU memory.
        "fsdp_cpu_ram_efficient_loading": True,
        "fsdp_sync_module_states": True,
        "fsdp_use_orig_params": fsdp_use_orig_params(preset),
        # Checkpoints are written shard by shard (fast, resumable); the final model is gathered.
        "fsdp_state_dict_type": "SHARDED_STATE_DICT",
        "fsdp_activation_checkpointing": False,  # the preset's gradient_checkpointing does this job
    }
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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- the launch plan


@dataclass
class LaunchPlan:
    argv: list[str]
    env: dict[str, str]  # the full environment of the launcher
    exports: dict[str, str]  # what launch() set on top of the caller's environment (shown in launch.sh)
    files: dict[str, Path]


def _write_text(path: Path, text: str, mode: int | None = None) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, path)


def _yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def entry_args(run_dir: Path, *, resume_from=None) -> list[str]:
    args = ["--run-dir", str(run_dir)]
    if resume_from is not None:
        args += ["--resume-from", str(resume_from)]
    return args


def prepare_launch(
    preset: TrainPreset,
    run_dir: str | os.PathLike,
    *,
    resume_from=None,
    env: Mapping[str, str] | None = None,
    supervisor_pid: int | None = None,
    layer_class: str | None = None,
) -> LaunchPlan:
    """Write accelerate.yaml, deepspeed.json, launch.sh and distributed.json; return the command.

    `layer_class` overrides the FSDP wrap class lookup (tests; models whose layer is known).
    """
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    base_env = dict(os.environ if env is None else env)
    gpus = visible_gpu_ids(base_env)
    use_cpu = not gpus
    dist = preset.distributed
    files: dict[str, Path] = {}

    deepspeed_file = None
    if dist.strategy == "deepspeed":
        deepspeed_file = run_dir / DEEPSPEED_CONFIG_FILE
        _write_text(deepspeed_file, json.dumps(deepspeed_config(preset), indent=2) + "\n")
        files["deepspeed"] = deepspeed_file
    if dist.strategy == "fsdp" and dist.fsdp_wrap == "transformer_layer" and layer_class is None:
        layer_class = decoder_layer_class(preset.model)

    # One node: any free port, so two runs side by side never collide. Several nodes: the
    # preset's port, which every node must agree on.
    port = dist.main_port if dist.num_nodes > 1 else free_port()
    config = accelerate_config(
        preset,
        use_cpu=use_cpu,
        main_port=port,
        precision=mixed_precision(preset, not use_cpu, gpus),
        deepspeed_file=deepspeed_file,
        layer_class=layer_class,
    )
    config_file = run_dir / ACCELERATE_CONFIG_FILE
    _write_text(config_file, "# Generated by tunebench from the preset's distributed section.\n" + _yaml(config))
    files["accelerate"] = config_file

    exports: dict[str, str] = {}
    if gpus and "CUDA_VISIBLE_DEVICES" in base_env:
        exports["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    if use_cpu:
        # The ranks' TrainingArguments read this to form a gloo (MULTI_CPU) group; without it each
        # rank would train alone on the whole dataset.
        exports["ACCELERATE_USE_CPU"] = "true"
        if "OMP_NUM_THREADS" not in base_env:
            exports["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // dist.num_processes))
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file)]
    entry = ["-m", "engine.dist_entry"]
    args = entry_args(run_dir, resume_from=resume_from)
    argv = launcher + ["--machine_rank", "0"] + entry + args
    if supervisor_pid is not None:
        argv += ["--supervisor-pid", str(supervisor_pid)]

    script = [
        "#!/usr/bin/env bash",
        "# Generated by tunebench: the command the engine ran for this run (the last launch).",
        "# Running it again trains this run folder again (outside the engine: the store is not told).",
    ]
    if dist.num_nodes > 1:
        script += [
            f"# Multi-node: on each other node (same paths, shared run folder), run it with NODE_RANK=1..{dist.num_nodes - 1}.",
        ]
    # A stop request or result left by the last launch would end this one at once.
    script += ["set -euo pipefail", f"cd {shlex.quote(str(run_dir))}", f"rm -f {STOP_FILE} {RESULT_FILE}"]
    shown = dict(exports)
    if base_env.get("PYTHONPATH"):
        shown["PYTHONPATH"] = base_env["PYTHONPATH"]
    script += [f"export {key}={shlex.quote(value)}" for key, value in shown.items()]
    rank_arg = '"${NODE_RANK:-0}"'
    script.append(
        "exec "
        + shlex.join(launcher)
        + f" --machine_rank {rank_arg} "
        + shlex.join(entry + args)
        + ' "$@"'
    )
    script_file = run_dir / LAUNCH_SCRIPT
    _write_text(script_file, "\n".join(script) + "\n", mode=0o755)
    files["launch"] = script_file

    world = {
        "strategy": dist.strategy,
        "world_size": world_size(preset),
        "num_processes": dist.num_processes,
        "num_nodes": dist.num_nodes,
        "zero_stage": dist.zero_stage if dist.strategy == "deepspeed" else None,
        "fsdp_sharding": dist.fsdp_sharding if dist.strategy == "fsdp" else None,
        "device": "cpu" if use_cpu else "cuda",
        "gpus": gpus,
    }
    world_file = run_dir / WORLD_FILE
    _write_text(world_file, json.dumps(world, indent=2) + "\n")
    files["world"] = world_file

    full_env = {**base_env, **exports}
    return LaunchPlan(argv=argv, env=full_env, exports=exports, files=files)


# --------------------------------------------------------------------------- resume


def checkpoint_world(checkpoint_dir: str | os.PathLike) -> tuple[int, str]:
    """(processes that wrote it, kind: "deepspeed" | "fsdp" | "plain") of a Trainer checkpoint.

    The Trainer saves one RNG state per process (rng_state_<rank>.pth) when there are several,
    rng_state.pth for one; DeepSpeed keeps its state in global_step*/, FSDP in *_fsdp_*/ shards.
    """
    path = Path(checkpoint_dir)
    ranks = [p for p in path.glob("rng_state_*.pth")]
    world = len(ranks) if ranks else 1
    names = [p.name for p in path.iterdir()] if path.is_dir() else []
    if any(name.startswith("global_step") for name in names):
        kind = "deepspeed"
    elif any("fsdp" in name or name.startswith("optimizer_0") for name in names):
        kind = "fsdp"
    else:
        kind = "plain"
    return world, kind


def check_resume(preset: TrainPreset, checkpoint_dir: str | os.PathLike) -> None:
    """Refuse a resume whose world or strategy differs from the checkpoint's, and say why."""
    path = Path(checkpoint_dir)
    if not path.is_dir():
        raise EngineError(f"no checkpoint at {path}", "list the run's checkpoints (tunebench show RUN) and pick one")
    written_by, kind = checkpoint_world(path)
    now = world_size(preset)
    if written_by != now:
        raise EngineError(
            f"{path.name} was written by {written_by} process(es); this preset runs {now}",
            f"resume with the same world size (num_processes x num_nodes = {written_by}): each process's "
            "data position and random state, and ZeRO/FSDP optimizer shards, are saved per process. "
            "To change the world size, start a new run from the checkpoint's weights instead",
        )
    strategy = preset.distributed.strategy
    wanted = {"deepspeed": "deepspeed", "fsdp": "fsdp"}.get(strategy, "plain")
    if kind != wanted:
        held = {"deepspeed": "DeepSpeed ZeRO state", "fsdp": "FSDP shards", "plain": "a plain (single/DDP) optimizer state"}[kind]
        raise EngineError(
            f"{path.name} holds {held}; this preset uses distributed.strategy {strategy}",
            "resume with the strategy the run was trained with (see distributed.json in the run folder)",
        )


# --------------------------------------------------------------------------- stop requests


def request_stop(run_dir: str | os.PathLike, reason: str) -> None:
    """Ask every rank of the run in `run_dir` to stop at the next step boundary (checkpoint first)."""
    if reason not in STOP_REASONS:
        raise ValueError(f"unknown stop reason {reason!r}")
    path = Path(run_dir) / STOP_FILE
    current = read_stop_request(run_dir)
    if current is not None and STOP_REASONS.index(current) >= STOP_REASONS.index(reason):
        return
    _write_text(path, reason + "\n")


def read_stop_request(run_dir: str | os.PathLike) -> str | None:
    try:
        reason = (Path(run_dir) / STOP_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return reason if reason in STOP_REASONS else None


def sharded_loading(env: Mapping[str, str] | None = None) -> str | None:
    """Inside a rank: "fsdp" or "zero3" when the base model's parameters will be sharded, else None.

    engine.models.load_model must then (1) pass no device_map (FSDP / ZeRO-3 place the shards),
    (2) store 4-bit weights as the compute dtype (bnb_4bit_quant_storage), so that each flattened
    shard holds one dtype, and (3) skip prepare_model_for_kbit_training, which upcasts norms to
    fp32 and would mix dtypes inside a shard.
    """
    env = os.environ if env is None else env
    if env.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "fsdp"
    if env.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
        config_file = env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
        if stage is None and config_file and Path(config_file).is_file():
            try:
                stage = str(json.loads(Path(config_file).read_text())["zero_optimization"]["stage"])
            except (OSError, ValueError, KeyError, TypeError):
                stage = None
        if stage == "3":
            return "zero3"
    return None


_stop_group = None  # a gloo group for the per-step stop agreement (no GPU sync on NCCL runs)


def _agreement_group():
    import torch.distributed as dist

    global _stop_group
    if dist.get_backend() == "gloo":
        return None  # the default group already talks over the CPU
    if _stop_group is None:
        # Collective: every rank creates it at the same first call of agree_on_stop.
        _stop_group = dist.new_group(backend="gloo")
    return _stop_group


def _precedence(reason: str) -> int:
    # A doctor rule that is not in STOP_REASONS ranks with "diverged".
    return STOP_REASONS.index(reason) if reason in STOP_REASONS else STOP_REASONS.index("diverged")


def agree_on_stop(reason: str | None, save: bool = True) -> tuple[str | None, bool]:
    """Every rank's stop proposal in, the same decision out on every rank: (reason, save checkpoint).

    Collective: under torch.distributed every rank must call it at the same step boundary (the
    engine's callback does, at each step end). One tiny all-reduce over CPU (gloo) when no rank
    wants to stop; the reasons themselves travel only when one does. The highest-precedence
    reason wins (STOP_REASONS); a checkpoint is saved when any rank proposing it asks for one.
    Without a process group (one process) the proposal is the decision.
    """
    try:
        import torch.distributed as dist
    except ImportError:
        return reason, save
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return reason, save
    import torch

    group = _agreement_group()
    flag = torch.tensor([0 if reason is None else 1], dtype=torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
    if int(flag.item()) == 0:
        return None, save
    proposals: list = [None] * dist.get_world_size()
    dist.all_gather_object(proposals, (reason, save) if reason is not None else None, group=group)
    wanted = [p for p in proposals if p is not None]
    top = max(_precedence(r) for r, _ in wanted)
    winners = [(r, s) for r, s in wanted if _precedence(r) == top]
    return winners[0][0], any(s for _, s in winners)


# --------------------------------------------------------------------------- launching


@dataclass
class LaunchResult:
    returncode: int
    status: str  # completed | cancelled | interrupted | stopped | failed
    error: str | None = None
    advice: str | None = None
    result: dict[str, Any] = field(default_factory=dict)  # the TrainResult's fields from rank 0


def write_result(run_dir: str | os.PathLike, payload: dict[str, Any], *, first_only: bool = False) -> None:
    """Leave how the job ended for launch(). `first_only`: keep an earlier result (the first rank
    to fail names the cause; the others usually fail because it did)."""
    target = Path(run_dir) / RESULT_FILE
    text = json.dumps(payload, default=str, indent=2) + "\n"
    if not first_only:
        _write_text(target, text)
        return
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    try:
        os.link(tmp, target)  # atomic, and refuses to replace an existing result
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def read_result(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    try:
        return json.loads((Path(run_dir) / RESULT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _failure_detail(run_dir: Path) -> str:
    """The last lines of the rank log that shows an error, for a job that died without a result."""
    logs = sorted(run_dir.glob("rank-*.log"), key=lambda p: p.stat().st_mtime, reverse=True)
    for log in logs:
        try:
            lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        if any("Error" in line or "Traceback" in line for line in lines):
            return f"; {log.name}: " + " | ".join(line.strip() for line in lines[-3:] if line.strip())
    return "; see run.log and the rank-<n>.log files in the run folder"


def launch(
    preset: TrainPreset,
    run_dir: str | os.PathLike,
    sink: Sink,
    *,
    resume_from: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    stop_grace_s: float = STOP_GRACE_S,
    poll_s: float = 0.25,
    layer_class: str | None = None,
) -> LaunchResult:
    """Run a distributed training job to its end and say how it ended; `train()`'s counterpart.

    - `sink` receives what rank 0 reports (replayed from the run's metrics.jsonl within `poll_s`);
      its `should_stop()` is asked every `poll_s` and a reason stops every rank at the same step
      boundary, checkpoint first. The caller closes it.
    - `resume_from`: a checkpoint (or run) folder written with the same world size and strategy.
    - `env`: the launcher's environment (default os.environ); the caller pins the run's GPUs in it
      with CUDA_VISIBLE_DEVICES.
    The engine runs node 0 of a multi-node run; the other nodes run the run folder's launch.sh
    with NODE_RANK set. Ranks still running `stop_grace_s` after a stop request get SIGTERM, then
    SIGKILL. The ranks
    stop by themselves ("interrupt") when this process disappears. The launcher's and rank 0's
    output go to this process's stdout/stderr; ranks >= 1 write rank-<n>.log in the run folder.
    EngineError, before anything starts, for what cannot run here.
    """
    run_dir = Path(run_dir).resolve()
    base_env = dict(os.environ if env is None else env)
    if preset.distributed.node_rank != 0:
        raise EngineError(
            f"distributed.node_rank is {preset.distributed.node_rank}: the engine runs the main node (node_rank 0) of a run",
            "submit the run on the main node; on each other node run the run folder's launch.sh with NODE_RANK=<rank>",
        )
    check_environment(preset, len(visible_gpu_ids(base_env)))
    if resume_from is not None:
        from engine.artifacts import RunArtifacts
        from engine.train import resolve_resume

        resume_from = resolve_resume(resume_from, RunArtifacts(run_dir))
        check_resume(preset, resume_from)
    preset_file = run_dir / "preset.yaml"
    if not preset_file.is_file():
        from presets.loader import dump_preset

        run_dir.mkdir(parents=True, exist_ok=True)
        _write_text(preset_file, dump_preset(preset))
    for stale in (RESULT_FILE, STOP_FILE):
        (run_dir / stale).unlink(missing_ok=True)
    plan = prepare_launch(
        preset, run_dir, resume_from=resume_from, env=base_env, supervisor_pid=os.getpid(), layer_class=layer_class,
    )
    replay = JsonlReplay(run_dir / METRICS_FILE, sink)  # from the end: an earlier attempt's records are told

    # Own session: a signal to the caller's process group does not kill the ranks mid-step; they
    # hear of it through the sink's should_stop() and stop together, checkpoint first.
    proc = subprocess.Popen(plan.argv, env=plan.env, start_new_session=True)
    try:
        returncode = _supervise(proc, run_dir, sink, replay, stop_grace_s, poll_s)
    except BaseException:
        # This process is going down: do not leave the ranks behind.
        _signal_group(proc, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        replay.poll()

    payload = read_result(run_dir)
    if payload is None:
        stopped = read_stop_request(run_dir)
        return LaunchResult(
            returncode=returncode,
            status="interrupted" if stopped in ("interrupt", "cancel") else "failed",
            error=f"the distributed job ended with exit code {returncode} before reporting a result" + _failure_detail(run_dir),
            advice="read run.log and rank-<n>.log in the run folder",
        )
    status = payload.get("status") or ("completed" if returncode == 0 else "failed")
    return LaunchResult(
        returncode=returncode,
        status=status,
        error=payload.get("error"),
        advice=payload.get("advice"),
        result=payload.get("result") or {},
    )


def _supervise(proc, run_dir: Path, sink: Sink, replay: "JsonlReplay", stop_grace_s: float, poll_s: float) -> int:
    """Wait for the launcher, pass rank 0's records on, pass stop requests down, force stuck ranks."""
    stop_seen_at = None
    forced = 0
    while True:
        try:
            return proc.wait(timeout=poll_s)
        except subprocess.TimeoutExpired:
            pass
        replay.poll()
        reason = sink.should_stop()
        if reason:
            request_stop(run_dir, reason if reason in STOP_REASONS else "interrupt")
            if stop_seen_at is None:
                stop_seen_at = time.monotonic()
        if stop_seen_at is not None and time.monotonic() - stop_seen_at > stop_grace_s * (forced + 1):
            forced += 1
            _signal_group(proc, signal.SIGTERM if forced == 1 else signal.SIGKILL)


def _signal_group(proc, sig) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


class JsonlReplay:
    """Follows a run's metrics.jsonl (engine.sink.JsonlSink's records) into another sink."""

    def __init__(self, path: Path, sink: Sink, *, from_start: bool = False):
        self.path = Path(path)
        self.sink = sink
        self.offset = 0 if from_start or not self.path.exists() else self.path.stat().st_size
        self._partial = b""

    def poll(self) -> int:
        """Pass on the records written since the last call; how many."""
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return 0
        self.offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()  # a line still being written
        count = 0
        for line in lines:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue  # not ours to judge: the file is the engine's
            self._dispatch(record)
            count += 1
        return count

    def _dispatch(self, record: dict) -> None:
        kind = record.pop("type", None)
        record.pop("time", None)
        if kind == "metrics":
            step = record.pop("step")
            values = {}
            for name, value in record.items():
                try:
                    values[name] = float(value)  # JsonlSink writes NaN / Inf as "nan" / "inf"
                except (TypeError, ValueError):
                    continue
            self.sink.metrics(step, values)
        elif kind == "event":
            self.sink.event(record.get("level", "info"), record.get("text", ""), record.get("step"))
        elif kind == "checkpoint":
            self.sink.checkpoint(record["step"], record["path"], record.get("metrics") or {})
        elif kind == "checkpoint_removed":
            self.sink.checkpoint_removed(record["step"], record["path"])
        elif kind == "finding":
            self.sink.finding(record)
        elif kind == "run_started":
            self.sink.run_started(record)
