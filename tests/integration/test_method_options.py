"""The three options added through the method table, each doing what it says on the tiny model (CPU):
LoRA initialisation (method.lora.init: PiSSA, OLoRA, LoftQ), LoRA+ (method.lora.loraplus_lr_ratio) and
NEFTune (training.neftune_noise_alpha); and the schema refusing, by key, the combinations that cannot work."""

from __future__ import annotations

import json

import pytest
import torch

from helpers.training import RecordingSink, logits, tiny_preset
from presets import PresetError, load_preset_text

MINIMAL = "name: t\nmodel: {path: some/model}\ndata: {train_files: data.json}\n"
TWO_PROCESSES = ["distributed.num_processes=2"]


def _adapter_tensors(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def _prompt_ids():
    return torch.tensor([[1, 5, 7, 9, 11, 13, 17, 19]])


# --------------------------------------------------------------------------- the schema


@pytest.mark.parametrize("overrides, says", [
    (["method.name=ia3", "method.lora.loraplus_lr_ratio=16"],
     "method.lora.loraplus_lr_ratio does not apply to method ia3: it works with lora, qlora, dora, rslora"),
    (["method.name=adalora", "method.lora.init=pissa"], "method.lora.init pissa does not apply to method adalora"),
    (["method.lora.init=pissa_niter"], "method.lora.init: expected one of default, gaussian, pissa, pissa_niter_N, olora, loftq"),
    (["method.name=qlora", "model.quantization.mode=4bit", "method.lora.init=pissa"],
     "method.lora.init pissa needs model.quantization.mode: none (not 4bit)"),
    (["method.lora.init=loftq"], "method.lora.init loftq needs model.quantization.mode: 4bit (not none)"),
    (["method.name=qlora", "model.quantization.mode=8bit", "method.lora.init=loftq"], "method.lora.init loftq needs model.quantization.mode: 4bit (not 8bit)"),
    (["method.name=dora", "method.lora.init=olora"], "method.lora.init olora trains the A and B matrices alone"),
    (["method.lora.init=pissa", "method.lora.modules_to_save=[lm_head]"], "keeps neither method.lora.modules_to_save"),
    (["method.name=dora", "model.quantization.mode=4bit", "method.lora.init=loftq"], "method.lora.init loftq does not work with method dora"),
    (["method.lora.init=pissa", "distributed.strategy=fsdp", *TWO_PROCESSES],
     "method.lora.init pissa works under distributed.strategy single or ddp, not fsdp"),
    (["method.name=qlora", "model.quantization.mode=4bit", "method.lora.init=loftq", "distributed.strategy=deepspeed",
      "distributed.zero_stage=3", *TWO_PROCESSES], "method.lora.init loftq does not work under ZeRO-3, which loads the weights sharded"),
    (["method.name=qlora", "model.quantization.mode=4bit", "method.lora.init=loftq", "distributed.strategy=fsdp", *TWO_PROCESSES],
     "method.lora.init loftq does not work under FSDP"),
    (["method.lora.loraplus_lr_ratio=16", "distributed.strategy=fsdp", *TWO_PROCESSES], "method.lora.loraplus_lr_ratio does not work under FSDP"),
    (["method.lora.loraplus_lr_ratio=16", "distributed.strategy=deepspeed", "distributed.offload=true", *TWO_PROCESSES],
     "method.lora.loraplus_lr_ratio does not work with distributed.offload under DeepSpeed"),
    (["method.lora.loraplus_lr_ratio=0.5"], "method.lora.loraplus_lr_ratio: Input should be greater than or equal to 1"),
    (["training.neftune_noise_alpha=0"], "training.neftune_noise_alpha: Input should be greater than 0"),
])
def test_the_schema_refuses_what_cannot_work_naming_the_key(overrides, says):
    with pytest.raises(PresetError) as info:
        load_preset_text(MINIMAL, "p.yaml", overrides)
    problems = [str(p) for p in info.value.problems]
    assert len(problems) == 1 and says in problems[0], problems


@pytest.mark.parametrize("overrides", [
    ["method.lora.init=pissa_niter_16", "method.lora.loraplus_lr_ratio=16", "training.neftune_noise_alpha=5"],
    ["method.name=rslora", "method.lora.init=olora", "distributed.strategy=ddp", *TWO_PROCESSES],
    ["method.name=qlora", "model.quantization.mode=4bit", "method.lora.init=loftq", "method.lora.loraplus_lr_ratio=8"],
    ["method.name=qlora", "model.quantization.mode=4bit", "method.lora.init=loftq", "distributed.strategy=deepspeed", *TWO_PROCESSES],
    ["method.name=dora", "method.lora.init=gaussian", "method.lora.loraplus_lr_ratio=4", "distributed.strategy=deepspeed", *TWO_PROCESSES],
    ["method.name=prefix_tuning", "training.neftune_noise_alpha=5"],
])
def test_the_schema_accepts_the_options_where_they_work(overrides):
    load_preset_text(MINIMAL, "p.yaml", overrides)


# --------------------------------------------------------------------------- LoRA initialisation


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_2", "olora"])
def test_pissa_and_olora_start_as_the_base_with_the_residual_left_in_it(init, tiny_model_dir, demo_data_file):
    from engine.methods import apply_method
    from engine.models import load_model

    preset = tiny_preset("lora", tiny_model_dir, demo_data_file, f"method.lora.init={init}")
    model = load_model(preset.model, precision="fp32", for_training=True, trains_base_weights=False)
    expected = logits(model, _prompt_ids())
    original = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    model = apply_method(model, preset, total_steps=3)

    # The adapted model answers as the base did...
    torch.testing.assert_close(logits(model, _prompt_ids()), expected, atol=1e-4, rtol=1e-4)
    # ...but the base weight now holds only the residual: residual + scale x B A is the original weight.
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    residual = layer.base_layer.weight.detach()
    moved = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    assert (residual - original).abs().max() > 1e-2
    assert layer.lora_B["default"].weight.abs().max() > 0  # peft's default starts B at zero
    torch.testing.assert_close(residual + moved.detach(), original, atol=1e-4, rtol=1e-4)


def test_default_and_gaussian_initialisations_start_with_b_at_zero(tiny_model_dir, demo_data_file):
    from engine.methods import apply_method
    from engine.models import load_model

    first_a = {}
    for init in ("default", "gaussian"):
        preset = tiny_preset("lora", tiny_model_dir, demo_data_file, f"method.lora.init={init}")
        model = apply_method(load_model(preset.model, precision="fp32", for_training=True, trains_base_weights=False), preset, total_steps=3)
        layer = model.base_model.model.model.layers[0].self_attn.q_proj
        assert not layer.lora_B["default"].weight.any()
        first_a[init] = layer.lora_A["default"].weight.detach()
    # Kaiming-uniform A is bounded by sqrt(6 / ((1 + 5) * in_features)); a Gaussian A is not uniform.
    bound = (1 / first_a["default"].shape[1]) ** 0.5
    assert first_a["default"].abs().max() <= bound + 1e-6
    assert not torch.allclose(first_a["default"], first_a["gaussian"])


def test_pissa_saves_plain_lora_on_the_original_base_and_resumes(tiny_model_dir, demo_data_file, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from engine.train import train

    preset = tiny_preset("lora", tiny_model_dir, demo_data_file, "method.lora.init=pissa",
                         "training.max_steps=4", "training.save_steps=2", "training.lr=2e-3")
    straight_sink = RecordingSink()
    straight = train(preset, tmp_path / "straight", straight_sink)
    assert straight.status == "completed"
    checkpoint = straight.run_dir / "checkpoints" / "checkpoint-2"

    # Every saved adapter (checkpoints too: chat, eval and merge load them) is a plain LoRA of twice the rank...
    for folder in (checkpoint, straight.final_dir):
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["r"] == 2 * preset.method.lora.r and config["init_lora_weights"] is True
    # ...that the untouched base loads to the trained model's logits.
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, straight.final_dir)
    torch.testing.assert_close(logits(reloaded, _prompt_ids()), logits(straight.model, _prompt_ids()), atol=1e-4, rtol=1e-4)

    # Resuming reads the trained half of the converted checkpoint back into a fresh PiSSA model.
    sink = RecordingSink()
    resumed = train(preset, tmp_path / "resumed", sink, resume_from=checkpoint)
    assert resumed.status == "completed" and sorted(sink.series("loss")) == [3, 4]
    for step in (3, 4):
        assert sink.series("loss")[step] == pytest.approx(straight_sink.series("loss")[step], rel=1e-4)
    straight_tensors, resumed_tensors = _adapter_tensors(straight.final_dir), _adapter_tensors(resumed.final_dir)
    assert set(straight_tensors) == set(resumed_tensors)
    for name in straight_tensors:
        torch.testing.assert_close(resumed_tensors[name], straight_tensors[name], atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal on a machine without CUDA")
def test_loftq_without_a_cuda_gpu_is_refused_naming_the_key(tiny_model_dir, demo_data_file, tmp_path):
    from engine.errors import EngineError
    from engine.train import train

    preset = tiny_preset("qlora", tiny_model_dir, demo_data_file, "method.lora.init=loftq")
    with pytest.raises(EngineError, match="method.lora.init loftq fits A and B on a CUDA GPU"):
        train(preset, tmp_path / "run", RecordingSink())


@pytest.mark.cuda
def test_loftq_brings_the_4bit_model_closer_to_the_full_precision_one(tiny_model_dir, demo_data_file):
    from transformers import AutoModelForCausalLM

    from engine.methods import apply_method
    from engine.models import load_model

    ids = _prompt_ids().cuda()
    full = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).cuda()
    expected = logits(full, ids)
    errors = {}
    for init in ("default", "loftq"):
        preset = tiny_preset("qlora", tiny_model_dir, demo_data_file, f"method.lora.init={init}",
                             "training.precision=fp32", "model.quantization.compute_dtype=fp32")
        model = apply_method(load_model(preset.model, precision="fp32", for_training=True, trains_base_weights=False), preset, total_steps=3)
        errors[init] = (logits(model, ids) - expected).abs().mean().item()
    assert errors["loftq"] < errors["default"]


# --------------------------------------------------------------------------- LoRA+


def test_loraplus_gives_the_b_matrices_ratio_times_the_learning_rate(tiny_model_dir, demo_data_file, tmp_path):
    from transformers import get_scheduler

    from engine.artifacts import RunArtifacts
    from engine.methods import apply_method, loraplus_optimizer
    from engine.models import load_model
    from engine.train import training_arguments

    preset = tiny_preset("lora", tiny_model_dir, demo_data_file, "method.lora.loraplus_lr_ratio=16", "training.lr=1e-3")
    model = apply_method(load_model(preset.model, precision="fp32", for_training=True, trains_base_weights=False), preset, total_steps=10)
    args = training_arguments(preset, RunArtifacts(tmp_path / "run"), precision="fp32", device=torch.device("cpu"), steps=10, has_eval=False)
    factory, kwargs = loraplus_optimizer(preset, args)
    optimizer = factory()(model, **kwargs)
    assert type(optimizer).__name__ == "AdamW"  # training.optimizer adamw, as the Trainer names it
    names = {id(p): n for n, p in model.named_parameters()}
    lr_of = {names[id(p)]: group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert set(lr_of) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(lr == pytest.approx(1.6e-2 if "lora_B" in n else 1e-3) for n, lr in lr_of.items())
    # The schedule scales every group alike: the ratio holds all along.
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=2, num_training_steps=10)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
        rates = {group["lr"] for group in optimizer.param_groups if group["params"]}
        assert max(rates) == pytest.approx(16 * min(rates))
    assert loraplus_optimizer(tiny_preset("lora", tiny_model_dir, demo_data_file), args) is None


def test_loraplus_trains_b_ratio_times_further_and_resumes(tiny_model_dir, demo_data_file, tmp_path):
    from engine.train import train

    # At the first step B = 0 gives A no gradient, and Adam moves each weight by lr x g / |g|: with
    # the same gradients, LoRA+ moves B exactly `ratio` times further and leaves A alone.
    plain = train(tiny_preset("lora", tiny_model_dir, demo_data_file, "training.max_steps=1"), tmp_path / "plain", RecordingSink())
    preset = tiny_preset("lora", tiny_model_dir, demo_data_file, "method.lora.loraplus_lr_ratio=16",
                         "training.max_steps=2", "training.save_steps=1")
    straight_sink = RecordingSink()
    straight = train(preset, tmp_path / "plus", straight_sink)
    first_step = _adapter_tensors(straight.run_dir / "checkpoints" / "checkpoint-1")
    for name, tensor in _adapter_tensors(plain.final_dir).items():
        expected = 16 * tensor if "lora_B" in name else tensor
        torch.testing.assert_close(first_step[name], expected, atol=1e-7, rtol=1e-4)

    # The checkpoint holds LoRA+'s optimizer state; resuming from it ends where the straight run ended.
    sink = RecordingSink()
    resumed = train(preset, tmp_path / "resumed", sink, resume_from=straight.run_dir / "checkpoints" / "checkpoint-1")
    assert sink.series("loss")[2] == pytest.approx(straight_sink.series("loss")[2], rel=1e-5)
    for name, tensor in _adapter_tensors(straight.final_dir).items():
        torch.testing.assert_close(_adapter_tensors(resumed.final_dir)[name], tensor, atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------- NEFTune


def test_neftune_noises_the_embeddings_while_training_only(tiny_model_dir, demo_data_file, tmp_path):
    from engine.artifacts import RunArtifacts
    from engine.train import train, training_arguments

    preset = tiny_preset("lora", tiny_model_dir, demo_data_file, "training.max_steps=1", "training.neftune_noise_alpha=5")
    args = training_arguments(preset, RunArtifacts(tmp_path / "args"), precision="fp32", device=torch.device("cpu"), steps=1, has_eval=False)
    assert args.neftune_noise_alpha == 5

    plain_sink, noisy_sink = RecordingSink(), RecordingSink()
    train(tiny_preset("lora", tiny_model_dir, demo_data_file, "training.max_steps=1"), tmp_path / "plain", plain_sink)
    noisy = train(preset, tmp_path / "noisy", noisy_sink)
    # Same seed, same data, same initial adapter (B = 0): only the noise tells the two losses apart.
    assert noisy_sink.series("loss")[1] != pytest.approx(plain_sink.series("loss")[1], rel=1e-6)

    # The noise hook is gone once training ends: the embeddings are deterministic in training mode too.
    embeddings = noisy.model.get_input_embeddings()
    embeddings.train()
    with torch.no_grad():
        assert torch.equal(embeddings(_prompt_ids()), embeddings(_prompt_ids()))
        assert torch.equal(embeddings(_prompt_ids()), embeddings.weight[_prompt_ids()])
