"""A preset's distributed world: its size, precision and memory shards, and whether this machine
and a checkpoint fit it. Arithmetic and checks only; nothing is started or written here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from engine.errors import EngineError
from engine.hardware import gpus_have_bf16
from presets.schema import TrainPreset


def is_distributed(preset: TrainPreset) -> bool:
    return preset.distributed.strategy != "single"


def world_size(preset: TrainPreset) -> int:
    dist = preset.distributed
    return dist.num_processes * dist.num_nodes


def mixed_precision(preset: TrainPreset, on_gpu: bool, gpu_ids: list[str] | None = None) -> str:
    """accelerate's name for the run's precision (the engine resolves `auto` the same way)."""
    precision = preset.training.precision
    if precision == "auto":
        if not on_gpu:
            return "no"
        return "bf16" if gpus_have_bf16(gpu_ids or []) else "fp16"
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

        from presets.extras import install_hint

        if importlib.util.find_spec("deepspeed") is None:
            raise EngineError(
                "distributed.strategy deepspeed needs the deepspeed package, which is not installed",
                f"{install_hint('deepspeed')} (it compiles its CUDA ops on first use), or use distributed.strategy: fsdp",
            )


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
