"""What runs inside each rank of a distributed run (engine.dist_entry, and the engine's model
loading and callback under it): is the base model loaded sharded, is the supervisor still there,
and one stop decision agreed by every rank at each step boundary.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

from engine.distributed.messages import STOP_REASONS


# --------------------------------------------------------------------------- loading the model


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


# --------------------------------------------------------------------------- stopping together


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


def pid_alive(pid: int) -> bool:
    """Whether process `pid` still exists (a rank asks it of the supervisor that launched it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
