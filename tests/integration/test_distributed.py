"""Distributed launch: the generated accelerate / DeepSpeed / FSDP configs, read back by accelerate
itself; the preset validator's rejections; the machine checks; resume checks; stop requests."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import pytest
import yaml

from engine.distributed.configs import decoder_layer_class, deepspeed_config
from engine.distributed.launcher import prepare_launch
from engine.distributed.messages import STOP_FILE, read_stop_request, request_stop
from engine.distributed.rank import agree_on_stop, sharded_loading
from engine.distributed.world import MemoryShards, check_environment, check_resume, checkpoint_world, memory_shards
from engine.errors import EngineError
from presets import PresetError
from presets.loader import load_preset_text

BASE = """
name: dist
model: {path: /models/base}
data: {train_files: [/data/train.json]}
"""


def make_preset(distributed: dict, **sections):
    data = yaml.safe_load(BASE)
    data["distributed"] = distributed
    for key, value in sections.items():
        data[key] = value
    return load_preset_text(yaml.safe_dump(data), "dist.yaml")


def accelerate_env(plan) -> tuple[object, dict]:
    """What `accelerate launch` makes of our files: its parsed args and the ranks' environment."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    argv = plan.argv[plan.argv.index("--config_file"):]
    args = launch_command_parser().parse_args(argv)
    with mock.patch.dict(os.environ, plan.env, clear=True):
        args, defaults, mp_from_config = _validate_launch_command(args)
        if args.use_deepspeed:
            fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
            args.deepspeed_fields_from_accelerate_config = ",".join(fields)
            _cmd, env = prepare_deepspeed_cmd_env(args)
        else:
            env = prepare_multi_gpu_env(args)
    return args, env


GPUS = {"CUDA_VISIBLE_DEVICES": "0,1,2,3", "PATH": os.environ.get("PATH", "")}


# --------------------------------------------------------------------------- DeepSpeed


@pytest.mark.parametrize("stage", [1, 2, 3])
@pytest.mark.parametrize("offload", [False, True])
def test_deepspeed_json_per_stage(stage, offload):
    preset = make_preset({"strategy": "deepspeed", "num_processes": 2, "zero_stage": stage, "offload": offload})
    config = deepspeed_config(preset)
    zero = config["zero_optimization"]
    assert zero["stage"] == stage
    # Batch, accumulation, clipping and precision come from the preset through the Trainer.
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert config[key] == "auto"
    assert config["bf16"]["enabled"] == "auto" and config["fp16"]["enabled"] == "auto"
    assert ("offload_optimizer" in zero) == offload
    assert ("offload_param" in zero) == (offload and stage == 3)
    # Offloaded optimizer state is stepped by DeepSpeed's CPU Adam, named in the config.
    assert ("optimizer" in config) == offload
    assert zero.get("stage3_gather_16bit_weights_on_model_save", False) == (stage == 3)
    # The gradient reduce overlaps the backward (ZeRO-2/3 only: stage 1 keeps whole gradients).
    assert zero.get("overlap_comm", False) == (stage >= 2)


@pytest.mark.parametrize("stage,offload", [(2, False), (3, True), (1, False)])
def test_accelerate_reads_the_deepspeed_config(tmp_path, stage, offload):
    preset = make_preset({"strategy": "deepspeed", "num_processes": 4, "zero_stage": stage, "offload": offload})
    plan = prepare_launch(preset, tmp_path, env=GPUS)
    written = json.loads((tmp_path / "deepspeed.json").read_text())
    assert written == deepspeed_config(preset)
    args, env = accelerate_env(plan)
    assert args.use_deepspeed and args.num_processes == 4
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert env["ACCELERATE_DEEPSPEED_CONFIG_FILE"] == str(tmp_path / "deepspeed.json")
    from accelerate.utils import DeepSpeedPlugin

    with mock.patch.dict(os.environ, env):
        plugin = DeepSpeedPlugin()
    assert plugin.zero_stage == stage
    assert plugin.offload_optimizer_device == ("cpu" if offload else "none")
    assert plugin.offload_param_device == ("cpu" if offload and stage == 3 else "none")
    # ZeRO-3 builds the model already partitioned (zero.Init) instead of whole on every rank.
    assert plugin.zero3_init_flag == (stage == 3)
    assert sharded_loading(env) == ("zero3" if stage == 3 else None)


# --------------------------------------------------------------------------- FSDP


def fsdp_plugin(env):
    from accelerate.utils import FullyShardedDataParallelPlugin

    # The plugin asks for the current CUDA device (for sync_module_states); stand in for the GPU.
    with mock.patch.dict(os.environ, env), \
            mock.patch("accelerate.utils.dataclasses.is_cuda_available", return_value=True), \
            mock.patch("torch.cuda.current_device", return_value=0):
        return FullyShardedDataParallelPlugin()


@pytest.mark.parametrize("sharding", ["full_shard", "shard_grad_op", "hybrid_shard", "no_shard"])
def test_accelerate_reads_the_fsdp_sharding(tmp_path, sharding):
    preset = make_preset({"strategy": "fsdp", "num_processes": 2, "fsdp_sharding": sharding})
    plan = prepare_launch(preset, tmp_path, env=GPUS, layer_class="LlamaDecoderLayer")
    args, env = accelerate_env(plan)
    assert args.use_fsdp and env["ACCELERATE_USE_FSDP"] == "true"
    plugin = fsdp_plugin(env)
    if sharding in ("full_shard", "shard_grad_op"):
        # FSDP2 expresses these two by whether the gathered weights are freed after the forward.
        assert plugin.fsdp_version == 2
        assert plugin.reshard_after_forward is (sharding == "full_shard")
    else:  # FSDP2 cannot take these from accelerate's config: FSDP1 stays
        assert plugin.fsdp_version == 1
        assert plugin.sharding_strategy.name == sharding.upper()
    assert sharded_loading(env) == "fsdp"


@pytest.mark.parametrize("method", ["lora", "dora", "full", "freeze"])
def test_fsdp2_wrap_and_offload(tmp_path, method):
    preset = make_preset({"strategy": "fsdp", "num_processes": 2, "offload": True}, method={"name": method})
    plan = prepare_launch(preset, tmp_path, env=GPUS, layer_class="LlamaDecoderLayer")
    _, env = accelerate_env(plan)
    plugin = fsdp_plugin(env)
    # FSDP2 shards tensor by tensor, so freeze's mixed trainable/frozen layers need no special case.
    assert plugin.fsdp_version == 2
    from torch.distributed.fsdp import CPUOffloadPolicy

    assert isinstance(plugin.cpu_offload, CPUOffloadPolicy)
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    assert env["FSDP_TRANSFORMER_CLS_TO_WRAP"] == "LlamaDecoderLayer"
    assert "SHARDED_STATE_DICT" in str(plugin.state_dict_type)
    assert plugin.cpu_ram_efficient_loading


def test_fsdp1_for_a_quantized_base(tmp_path):
    preset = make_preset(
        {"strategy": "fsdp", "num_processes": 2, "offload": True},
        method={"name": "qlora"},
        model={"path": "/models/base", "quantization": {"mode": "4bit"}},
    )
    plan = prepare_launch(preset, tmp_path, env=GPUS, layer_class="LlamaDecoderLayer")
    _, env = accelerate_env(plan)
    plugin = fsdp_plugin(env)
    # The Trainer fits FSDP's mixed precision to the 4-bit storage dtype only under FSDP1.
    assert plugin.fsdp_version == 1
    assert plugin.use_orig_params is False  # PEFT's wrap policy makes uniform units: flat params
    assert plugin.cpu_offload.offload_params is True
    assert "SHARDED_STATE_DICT" in str(plugin.state_dict_type)
    assert plugin.cpu_ram_efficient_loading and plugin.sync_module_states


@pytest.mark.parametrize("version_of", [{}, {"fsdp_sharding": "hybrid_shard"}])
@pytest.mark.parametrize("checkpointing", [True, False])
def test_fsdp_does_its_own_activation_checkpointing(tmp_path, version_of, checkpointing):
    from engine.artifacts import RunArtifacts
    from engine.train import training_arguments

    preset = make_preset(
        {"strategy": "fsdp", "num_processes": 2, **version_of}, training={"gradient_checkpointing": checkpointing}
    )
    plan = prepare_launch(preset, tmp_path, env=GPUS, layer_class="LlamaDecoderLayer")
    _, env = accelerate_env(plan)
    assert fsdp_plugin(env).activation_checkpointing is checkpointing
    # The Trainer's own checkpointing stays off: it would add an all-gather in the backward, and
    # transformers refuses both at once.
    import torch

    args = training_arguments(
        preset, RunArtifacts(tmp_path / "run"), precision="fp32", device=torch.device("cpu"), steps=10, has_eval=False
    )
    assert args.activation_checkpointing is False


def test_fsdp_size_wrap(tmp_path):
    preset = make_preset({"strategy": "fsdp", "num_processes": 2, "fsdp_wrap": "size"})
    plan = prepare_launch(preset, tmp_path, env=GPUS)  # no model lookup for a size policy
    _, env = accelerate_env(plan)
    assert env["FSDP_AUTO_WRAP_POLICY"] == "SIZE_BASED_WRAP"
    assert int(env["FSDP_MIN_NUM_PARAMS"]) > 0


def test_decoder_layer_class_from_the_config_alone(tmp_path, tiny_model_dir):
    # Only config.json: the wrap class comes from the architecture, no weights are read.
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    shutil.copy(tiny_model_dir / "config.json", config_only / "config.json")
    preset = make_preset({"strategy": "fsdp", "num_processes": 2}, model={"path": str(config_only)})
    assert decoder_layer_class(preset.model) == "LlamaDecoderLayer"
    plan = prepare_launch(preset, tmp_path / "run", env=GPUS)
    written = yaml.safe_load((tmp_path / "run" / "accelerate.yaml").read_text())
    assert written["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"
    assert plan.files["accelerate"].is_file()


# --------------------------------------------------------------------------- DDP, CPU, multi-node


def test_ddp_on_cpu(tmp_path):
    preset = make_preset({"strategy": "ddp", "num_processes": 2})
    env = {"CUDA_VISIBLE_DEVICES": "", "PATH": os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1"}
    plan = prepare_launch(preset, tmp_path, env=env)
    # Without it each rank's Trainer would train alone on the whole dataset (no gloo group).
    assert plan.exports["ACCELERATE_USE_CPU"] == "true"
    args, rank_env = accelerate_env(plan)
    assert args.multi_gpu and args.num_processes == 2 and args.nproc_per_node == "2"
    written = yaml.safe_load((tmp_path / "accelerate.yaml").read_text())
    assert written["distributed_type"] == "MULTI_GPU" and written["mixed_precision"] == "no"
    assert written["use_cpu"] is True
    # One node: a free port per launch, so two runs side by side never collide.
    assert written["main_process_port"] != 29500
    script = (tmp_path / "launch.sh").read_text()
    assert os.stat(tmp_path / "launch.sh").st_mode & stat.S_IXUSR
    assert "export ACCELERATE_USE_CPU=true" in script
    assert f"-m engine.dist_entry --run-dir {tmp_path.resolve()}" in script
    world = json.loads((tmp_path / "distributed.json").read_text())
    assert world["world_size"] == 2 and world["device"] == "cpu"


def test_launch_script_is_the_command_that_runs(tmp_path):
    preset = make_preset({"strategy": "ddp", "num_processes": 2})
    plan = prepare_launch(preset, tmp_path, env={"CUDA_VISIBLE_DEVICES": "2,3"}, resume_from="/ckpt/checkpoint-4")
    script = (tmp_path / "launch.sh").read_text()
    # bash -n parses it; the exec line holds the launcher's argv (the machine rank may be overridden).
    subprocess.run(["bash", "-n", str(tmp_path / "launch.sh")], check=True)
    assert "export CUDA_VISIBLE_DEVICES=2,3" in script
    assert "--resume-from /ckpt/checkpoint-4" in script
    assert plan.argv[plan.argv.index("--machine_rank") + 1] == "0"


def test_multi_node(tmp_path):
    preset = make_preset({
        "strategy": "deepspeed", "zero_stage": 3, "num_processes": 4, "num_nodes": 2, "node_rank": 1,
        "main_address": "10.0.0.1", "main_port": 29511,
    })
    plan = prepare_launch(preset, tmp_path, env=GPUS)
    written = yaml.safe_load((tmp_path / "accelerate.yaml").read_text())
    # accelerate counts processes over all machines.
    assert written["num_processes"] == 8 and written["num_machines"] == 2 and written["machine_rank"] == 1
    assert written["main_process_ip"] == "10.0.0.1" and written["main_process_port"] == 29511
    assert written["deepspeed_config"]["deepspeed_multinode_launcher"] == "standard"
    # The engine starts node 0; launch.sh starts the others with NODE_RANK=<rank>.
    assert plan.argv[plan.argv.index("--machine_rank") + 1] == "0"
    assert '--machine_rank "${NODE_RANK:-0}"' in (tmp_path / "launch.sh").read_text()

    ddp = make_preset({"strategy": "ddp", "num_processes": 4, "num_nodes": 2, "node_rank": 1,
                       "main_address": "10.0.0.1", "main_port": 29511})
    plan = prepare_launch(ddp, tmp_path / "ddp", env=GPUS)
    plan.argv[plan.argv.index("--machine_rank") + 1] = "1"  # what NODE_RANK=1 bash launch.sh runs
    args, _ = accelerate_env(plan)
    assert (args.nnodes, args.nproc_per_node, args.node_rank) == ("2", "4", 1)
    # torchrun's static rendezvous at the rank-0 node's address
    assert args.rdzv_endpoint == "10.0.0.1:29511" and args.rdzv_backend == "static"


# --------------------------------------------------------------------------- the validator


def rejected(distributed: dict, **sections) -> str:
    with pytest.raises(PresetError) as info:
        make_preset(distributed, **sections)
    return str(info.value)


QLORA = {"model": {"path": "/m", "quantization": {"mode": "4bit"}}, "method": {"name": "qlora"}}
QLORA_8BIT = {"model": {"path": "/m", "quantization": {"mode": "8bit"}}, "method": {"name": "qlora"}}


@pytest.mark.parametrize(
    "distributed,sections,says",
    [
        ({"strategy": "single", "num_processes": 2}, {}, "strategy single runs one process"),
        ({"strategy": "single", "num_nodes": 2, "main_address": "10.0.0.1"}, {}, "strategy single runs one process"),
        ({"strategy": "ddp", "num_processes": 1}, {}, "replicates nothing"),
        ({"strategy": "ddp", "num_processes": 2, "num_nodes": 2, "node_rank": 2, "main_address": "10.0.0.1"}, {}, "node_rank 2 must be below num_nodes 2"),
        ({"strategy": "ddp", "num_processes": 2, "num_nodes": 2}, {}, "main_address 127.0.0.1 only reaches this machine"),
        ({"strategy": "fsdp", "num_processes": 2}, QLORA_8BIT, "8-bit weights cannot be sharded by FSDP"),
        ({"strategy": "deepspeed", "zero_stage": 3, "num_processes": 2}, QLORA_8BIT, "8-bit weights cannot be sharded by ZeRO-3"),
        ({"strategy": "fsdp", "num_processes": 2}, {"method": {"name": "prompt_tuning"}}, "does not work under FSDP"),
        ({"strategy": "fsdp", "num_processes": 2}, {"method": {"name": "prefix_tuning"}}, "does not work under FSDP"),
        ({"strategy": "fsdp", "num_processes": 2}, {"method": {"name": "adalora"}}, "adalora does not work under FSDP"),
        ({"strategy": "deepspeed", "num_processes": 2}, {"method": {"name": "adalora"}}, "adalora does not work under DeepSpeed"),
        ({"strategy": "fsdp", "num_processes": 2}, {"method": {"name": "ia3"}}, "ia3 under FSDP needs model.dtype: fp32"),
        ({"strategy": "deepspeed", "num_processes": 2, "offload": True}, {"training": {"optimizer": "adamw_8bit"}}, "cannot step ZeRO-offloaded state"),
        ({"strategy": "fsdp", "num_processes": 2, "offload": True}, {"training": {"optimizer": "paged_adamw_8bit"}}, "pages optimizer state"),
        ({"strategy": "fsdp", "num_processes": 2}, {"training": {"load_best_at_end": True}}, "load_best_at_end cannot load"),
        ({"strategy": "deepspeed", "zero_stage": 3, "num_processes": 2}, {"training": {"load_best_at_end": True}}, "load_best_at_end cannot load"),
    ],
)
def test_validator_rejects_what_cannot_work(distributed, sections, says):
    assert says in rejected(distributed, **sections)


@pytest.mark.parametrize(
    "distributed,sections",
    [
        ({"strategy": "fsdp", "num_processes": 4}, QLORA),  # QLoRA shards with the matching storage dtype
        ({"strategy": "deepspeed", "zero_stage": 3, "num_processes": 4, "offload": True}, QLORA),
        ({"strategy": "deepspeed", "zero_stage": 2, "num_processes": 2}, QLORA_8BIT),  # ZeRO-2 does not shard weights
        ({"strategy": "ddp", "num_processes": 2}, QLORA_8BIT),
        ({"strategy": "fsdp", "num_processes": 2}, {"method": {"name": "freeze"}}),  # use_orig_params makes it work
        ({"strategy": "fsdp", "num_processes": 2}, {"method": {"name": "ia3"}, "model": {"path": "/m", "dtype": "fp32"}}),
        ({"strategy": "deepspeed", "num_processes": 2}, {"method": {"name": "prompt_tuning"}}),
        ({"strategy": "ddp", "num_processes": 2}, {"method": {"name": "adalora"}}),
        ({"strategy": "fsdp", "num_processes": 1, "offload": True}, {}),  # one GPU, parameters offloaded
        ({"strategy": "deepspeed", "num_processes": 4, "num_nodes": 2, "node_rank": 1, "main_address": "node0.cluster"}, {}),
    ],
)
def test_validator_accepts_what_works(distributed, sections):
    make_preset(distributed, **sections)


def test_validator_problem_names_the_section(tmp_path):
    text = BASE + "distributed:\n  strategy: single\n  num_processes: 2\n"
    with pytest.raises(PresetError) as info:
        load_preset_text(text, "p.yaml")
    problem = info.value.problems[0]
    assert problem.path == "distributed" and problem.line == 5


# --------------------------------------------------------------------------- the machine


def test_cpu_machine_runs_only_ddp():
    for strategy, says in (("fsdp", "fsdp needs CUDA GPUs"), ("deepspeed", "deepspeed needs CUDA GPUs")):
        with pytest.raises(EngineError, match=says) as info:
            check_environment(make_preset({"strategy": strategy, "num_processes": 2}), visible_gpus=0)
        assert "strategy: ddp" in info.value.advice
    with pytest.raises(EngineError, match="nccl needs CUDA GPUs"):
        check_environment(make_preset({"strategy": "ddp", "num_processes": 2, "backend": "nccl"}), visible_gpus=0)
    check_environment(make_preset({"strategy": "ddp", "num_processes": 2}), visible_gpus=0)


def test_the_engine_launches_only_the_main_node(tmp_path):
    from engine.distributed.launcher import launch
    from engine.sink import Sink

    preset = make_preset({"strategy": "ddp", "num_processes": 2, "num_nodes": 2, "node_rank": 1, "main_address": "10.0.0.1"})
    with pytest.raises(EngineError, match="node_rank is 1") as info:
        launch(preset, tmp_path, Sink(), env=GPUS)
    assert "NODE_RANK" in info.value.advice
    assert not (tmp_path / "launch.sh").exists()  # refused before anything is written


def test_more_processes_than_gpus():
    with pytest.raises(EngineError, match="num_processes is 4 but this node has 2 visible GPU") as info:
        check_environment(make_preset({"strategy": "ddp", "num_processes": 4}), visible_gpus=2)
    assert "num_processes: 2" in info.value.advice
    check_environment(make_preset({"strategy": "fsdp", "num_processes": 2}), visible_gpus=2)


def test_deepspeed_must_be_installed():
    preset = make_preset({"strategy": "deepspeed", "num_processes": 2})
    with mock.patch("importlib.util.find_spec", return_value=None):
        with pytest.raises(EngineError, match="needs the deepspeed package"):
            check_environment(preset, visible_gpus=2)


def test_sharded_loading_from_the_rank_environment(tmp_path):
    assert sharded_loading({}) is None
    assert sharded_loading({"ACCELERATE_USE_FSDP": "true"}) == "fsdp"
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    assert sharded_loading({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(config)}) == "zero3"
    config.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    assert sharded_loading({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(config)}) is None


# --------------------------------------------------------------------------- resume


def fake_checkpoint(path: Path, ranks: int, extra: str | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text("{}")
    if ranks == 1:
        (path / "rng_state.pth").write_bytes(b"")
    for rank in range(ranks if ranks > 1 else 0):
        (path / f"rng_state_{rank}.pth").write_bytes(b"")
    if extra:
        (path / extra).mkdir()
    return path


def test_resume_needs_the_same_world(tmp_path):
    ckpt = fake_checkpoint(tmp_path / "checkpoint-10", ranks=2)
    assert checkpoint_world(ckpt) == (2, "plain")
    check_resume(make_preset({"strategy": "ddp", "num_processes": 2}), ckpt)
    with pytest.raises(EngineError, match="written by 2 process") as info:
        check_resume(make_preset({"strategy": "ddp", "num_processes": 4}), ckpt)
    assert "same world size" in info.value.advice
    single = fake_checkpoint(tmp_path / "checkpoint-20", ranks=1)
    with pytest.raises(EngineError, match="written by 1 process"):
        check_resume(make_preset({"strategy": "ddp", "num_processes": 2}), single)


def test_resume_needs_the_same_strategy(tmp_path):
    ds = fake_checkpoint(tmp_path / "checkpoint-10", ranks=2, extra="global_step10")
    assert checkpoint_world(ds) == (2, "deepspeed")
    check_resume(make_preset({"strategy": "deepspeed", "num_processes": 2}), ds)
    with pytest.raises(EngineError, match="holds DeepSpeed ZeRO state"):
        check_resume(make_preset({"strategy": "fsdp", "num_processes": 2}), ds)
    fsdp = fake_checkpoint(tmp_path / "checkpoint-20", ranks=2, extra="pytorch_model_fsdp_0")
    with pytest.raises(EngineError, match="holds FSDP shards"):
        check_resume(make_preset({"strategy": "ddp", "num_processes": 2}), fsdp)


# --------------------------------------------------------------------------- stopping


def test_stop_requests_keep_the_strongest_reason(tmp_path):
    assert read_stop_request(tmp_path) is None
    request_stop(tmp_path, "interrupt")
    assert read_stop_request(tmp_path) == "interrupt"
    request_stop(tmp_path, "cancel")
    assert read_stop_request(tmp_path) == "cancel"
    request_stop(tmp_path, "interrupt")  # a cancel is not turned back into a resumable interrupt
    assert read_stop_request(tmp_path) == "cancel"
    (tmp_path / STOP_FILE).write_text("garbage\n")
    assert read_stop_request(tmp_path) is None
    with pytest.raises(ValueError):
        request_stop(tmp_path, "later")


def test_agreement_without_a_process_group_is_the_proposal():
    assert agree_on_stop(None) == (None, True)
    assert agree_on_stop("nan", False) == ("nan", False)


def test_rank_sink(tmp_path):
    from engine.dist_entry import RankSink

    main = RankSink(tmp_path, is_main=True, poll_s=0)
    other = RankSink(tmp_path, is_main=False, poll_s=0)
    assert main.should_stop() is None and other.should_stop() is None
    request_stop(tmp_path, "cancel")  # written by launch(): read by rank 0, agreed with the others
    assert main.should_stop() == "cancel" and other.should_stop() is None
    other.on_signal(15, None)  # a signal reaches each rank by itself
    assert other.should_stop() == "interrupt"

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    orphan = RankSink(tmp_path / "elsewhere", is_main=True, supervisor_pid=gone.pid, poll_s=0)
    assert orphan.should_stop() == "interrupt"


def test_rank_zero_records_reach_the_callers_sink(tmp_path):
    """launch() passes on what rank 0's train() writes to metrics.jsonl, from where it stood."""
    from engine.distributed.launcher import JsonlReplay
    from engine.sink import JsonlSink, Sink

    class Recorder(Sink):
        def __init__(self):
            self.calls = []

        def run_started(self, info):
            self.calls.append(("run_started", info))

        def metrics(self, step, values):
            self.calls.append(("metrics", step, values))

        def event(self, level, text, step=None):
            self.calls.append(("event", level, text, step))

        def checkpoint(self, step, path, metrics):
            self.calls.append(("checkpoint", step, path, metrics))

        def checkpoint_removed(self, step, path):
            self.calls.append(("checkpoint_removed", step, path))

        def finding(self, finding):
            self.calls.append(("finding", finding))

    path = tmp_path / "metrics.jsonl"
    earlier = JsonlSink(path)
    earlier.metrics(1, {"loss": 9.0})  # an earlier attempt's record: already told
    earlier.close()
    recorder = Recorder()
    replay = JsonlReplay(path, recorder)
    rank0 = JsonlSink(path)
    rank0.run_started({"total_steps": 4, "method": "lora"})
    rank0.metrics(2, {"loss": 1.5, "grad_norm": float("nan")})
    rank0.event("info", "hello", 2)
    assert replay.poll() == 3
    rank0.checkpoint(2, "/ckpt/checkpoint-2", {"loss": 1.5})
    rank0.checkpoint_removed(1, "/ckpt/checkpoint-1")
    rank0.finding({"rule": "nan", "severity": "error", "stop": True})
    rank0.close()
    with path.open("a") as f:
        f.write('{"type": "metrics", "step": 3, "lo')  # a line still being written
    assert replay.poll() == 3
    with path.open("a") as f:
        f.write('ss": 1.25}\n')
    assert replay.poll() == 1
    names = [call[0] for call in recorder.calls]
    assert names == ["run_started", "metrics", "event", "checkpoint", "checkpoint_removed", "finding", "metrics"]
    assert recorder.calls[0][1] == {"total_steps": 4, "method": "lora"}
    step, values = recorder.calls[1][1:]
    assert step == 2 and values["loss"] == 1.5 and values["grad_norm"] != values["grad_norm"]  # NaN survives
    assert recorder.calls[3][1:] == (2, "/ckpt/checkpoint-2", {"loss": 1.5})
    assert recorder.calls[5][1] == {"rule": "nan", "severity": "error", "stop": True}
    assert recorder.calls[6][1:] == (3, {"loss": 1.25})


AGREE_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch.distributed as dist
    from engine.distributed.rank import agree_on_stop
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    # rank 1 is signalled at step 3; rank 0's store says cancel at step 5 (it outranks interrupt);
    # the doctor (rank 0) wants to stop at step 7 without a checkpoint.
    plan = {1: {3: ("interrupt", True)}, 0: {5: ("cancel", True), 7: ("nan", False)}}
    decisions = []
    for step in range(1, 9):
        reason, save = plan.get(rank, {}).get(step, (None, True))
        decisions.append((step, *agree_on_stop(reason, save)))
    with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
        json.dump(decisions, f)
    dist.destroy_process_group()
    """
)


def test_ranks_agree_on_one_stop_decision(tmp_path):
    """Two real gloo ranks launched by accelerate from our generated config agree at every step."""
    script = tmp_path / "agree.py"
    script.write_text(AGREE_SCRIPT)
    preset = make_preset({"strategy": "ddp", "num_processes": 2})
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    plan = prepare_launch(preset, tmp_path / "run", env=env)
    argv = plan.argv[: plan.argv.index("-m", 3)] + [str(script), str(tmp_path)]
    done = subprocess.run(argv, env=plan.env, capture_output=True, text=True, timeout=180,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-3000:]
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank0 == rank1
    by_step = {step: (reason, save) for step, reason, save in rank0}
    assert by_step[1] == (None, True) and by_step[3] == ("interrupt", True)
    assert by_step[5] == ("cancel", True) and by_step[7] == ("nan", False)


@pytest.mark.parametrize(
    "distributed,shards",
    [
        ({}, MemoryShards()),
        ({"strategy": "ddp", "num_processes": 4}, MemoryShards()),
        ({"strategy": "deepspeed", "num_processes": 4, "zero_stage": 1}, MemoryShards(optimizer=4)),
        ({"strategy": "deepspeed", "num_processes": 4, "zero_stage": 2}, MemoryShards(gradients=4, optimizer=4)),
        ({"strategy": "deepspeed", "num_processes": 4, "zero_stage": 3, "offload": True},
         MemoryShards(weights=4, gradients=4, optimizer=4, weights_on_cpu=True, gradients_on_cpu=True, optimizer_on_cpu=True)),
        ({"strategy": "fsdp", "num_processes": 2, "num_nodes": 2, "main_address": "10.0.0.1"},
         MemoryShards(weights=4, gradients=4, optimizer=4)),
        ({"strategy": "fsdp", "num_processes": 2, "num_nodes": 2, "main_address": "10.0.0.1", "fsdp_sharding": "hybrid_shard"},
         MemoryShards(weights=2, gradients=2, optimizer=2)),
        ({"strategy": "fsdp", "num_processes": 4, "fsdp_sharding": "shard_grad_op"}, MemoryShards(gradients=4, optimizer=4)),
        ({"strategy": "fsdp", "num_processes": 4, "fsdp_sharding": "no_shard"}, MemoryShards()),
    ],
)
def test_memory_shards_per_strategy(distributed, shards):
    assert memory_shards(make_preset(distributed)) == shards
