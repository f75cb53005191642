"""engine.kernels: which loss path (Liger's fused linear cross-entropy or the plain loss) and which
optimizer kernel a run uses on each kind of machine. CUDA and liger-kernel are mocked: this is the
choice only; tests/integration/test_gpu_kernels.py checks the numbers on a GPU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import engine.kernels as kernels
from engine.errors import EngineError
from presets import load_preset


def _preset(*overrides: str):
    return load_preset("lora", None, list(overrides))


@pytest.fixture
def liger(monkeypatch):
    """A machine with liger-kernel installed, Liger knowing llama and qwen2 only."""
    import presets.extras

    real = presets.extras.is_installed
    monkeypatch.setattr(presets.extras, "is_installed", lambda module: module == "liger_kernel" or real(module))
    monkeypatch.setattr(kernels, "liger_supports", lambda model_type: model_type in {"llama", "qwen2"})


@pytest.fixture
def no_liger(monkeypatch):
    import presets.extras

    real = presets.extras.is_installed
    monkeypatch.setattr(presets.extras, "is_installed", lambda module: module != "liger_kernel" and real(module))


@pytest.mark.parametrize("kernels_setting", ["auto", "none"])
def test_the_cpu_uses_the_plain_loss(kernels_setting, liger):
    assert kernels.loss_path(_preset(f"training.kernels={kernels_setting}"), False, model_type="llama") == kernels.PLAIN_LOSS


def test_auto_on_cuda_with_liger_installed_uses_the_fused_linear_cross_entropy(liger):
    loss, why = kernels.kernel_choice(_preset(), True, model_type="qwen2")
    assert loss == kernels.LIGER_LOSS == "liger_fused_linear_cross_entropy" and "qwen2" in why


def test_auto_on_cuda_without_liger_falls_back_and_says_what_to_install(no_liger):
    loss, why = kernels.kernel_choice(_preset(), True, model_type="llama")
    assert loss == "plain" and "tunebench[liger]" in why


def test_auto_on_an_architecture_liger_does_not_know_falls_back(liger):
    loss, why = kernels.kernel_choice(_preset(), True, model_type="gpt2")
    assert loss == "plain" and "gpt2" in why


def test_none_keeps_the_plain_loss_on_cuda(liger):
    assert kernels.loss_path(_preset("training.kernels=none"), True, model_type="llama") == "plain"


def test_liger_without_cuda_is_refused_with_what_to_set(liger):
    with pytest.raises(EngineError) as caught:
        kernels.kernel_choice(_preset("training.kernels=liger"), False, model_type="llama")
    assert "CUDA" in caught.value.message and "training.kernels: auto" in caught.value.advice


def test_liger_without_the_package_names_the_extra(no_liger):
    with pytest.raises(EngineError) as caught:
        kernels.kernel_choice(_preset("training.kernels=liger"), True, model_type="llama")
    assert "liger-kernel" in caught.value.message and "pip install 'tunebench[liger]'" in caught.value.advice


def test_liger_on_an_unknown_architecture_is_refused(liger):
    with pytest.raises(EngineError, match="no kernels for model type gpt2"):
        kernels.kernel_choice(_preset("training.kernels=liger"), True, model_type="gpt2")


def test_loss_path_reads_a_refused_liger_as_the_plain_loss(no_liger):
    # What the memory estimate asks: a run that cannot use Liger materialises the logits.
    assert kernels.loss_path(_preset("training.kernels=liger"), True, model_type="llama") == "plain"


def test_the_cpu_path_never_imports_liger(liger):
    kernels.kernel_choice(_preset("training.kernels=auto"), False)
    assert "liger_kernel" not in sys.modules


def test_a_bad_kernels_value_names_the_key():
    from presets.errors import TunebenchError

    with pytest.raises(TunebenchError, match="training.kernels"):
        _preset("training.kernels=triton")


def test_adamw_is_fused_on_cuda_only():
    assert kernels.optimizer_name("adamw", device_is_cuda=True) == "adamw_torch_fused"
    assert kernels.optimizer_name("adamw", device_is_cuda=False) == "adamw_torch"
    assert kernels.optimizer_name("adamw_8bit", device_is_cuda=True) == "adamw_bnb_8bit"
    assert set(kernels.OPTIMIZERS) == set(type(_preset().training).model_fields["optimizer"].annotation.__args__)


@pytest.mark.parametrize("device, optim", [("cuda", "adamw_torch_fused"), ("cpu", "adamw_torch")])
def test_training_arguments_take_the_optimizer_liger_and_compile(device, optim, tmp_path: Path):
    from engine.artifacts import RunArtifacts
    from engine.train import training_arguments

    preset = _preset("training.compile=true")
    loss = kernels.LIGER_LOSS if device == "cuda" else kernels.PLAIN_LOSS
    args = training_arguments(preset, RunArtifacts(tmp_path), precision="fp32", device=torch.device(device), steps=3,
                              has_eval=False, loss=loss)
    assert args.optim == optim and args.torch_compile is True and args.use_liger_kernel is (device == "cuda")


def test_a_lora_on_the_head_keeps_the_plain_loss(liger):
    # Liger's fused loss reads lm_head's weight itself: a LoRA there would silently not train.
    on_head = "method.lora.target_modules=[q_proj,lm_head]"
    assert kernels.kernel_choice(_preset(on_head), True, model_type="llama")[0] == "plain"
    with pytest.raises(EngineError, match="lm_head"):
        kernels.kernel_choice(_preset(on_head, "training.kernels=liger"), True, model_type="llama")
