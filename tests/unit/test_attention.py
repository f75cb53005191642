"""model.attn_implementation: auto — the kernel chosen per kind of machine and batch layout (the
machines are mocked DeviceKinds: the choice is tested here, the numbers in test_data_packing)."""

from __future__ import annotations

import pytest

from engine.attention import DeviceKind, choose_attention

CPU = DeviceKind(cuda=False, flex_available=True)
AMPERE_NO_FLASH = DeviceKind(cuda=True, capability=(8, 0), flash_attn_installed=False, flex_available=True)
HOPPER_FLASH = DeviceKind(cuda=True, capability=(9, 0), flash_attn_installed=True, flex_available=True)
TURING_FLASH = DeviceKind(cuda=True, capability=(7, 5), flash_attn_installed=True, flex_available=True)


@pytest.mark.parametrize("packed", [True, False])
def test_cpu_gets_sdpa(packed):
    kernel, why = choose_attention("auto", packed=packed, device=CPU)
    assert kernel == "sdpa" and why.startswith("CPU")
    assert ("block-diagonal" in why) == packed


def test_cuda_without_flash_attn_packs_with_flex_and_pads_with_sdpa():
    kernel, why = choose_attention("auto", packed=True, device=AMPERE_NO_FLASH)
    assert kernel == "flex_attention"
    assert "sm_80" in why and "flash-attn is not installed" in why and "tunebench[flash]" in why
    assert choose_attention("auto", packed=False, device=AMPERE_NO_FLASH)[0] == "sdpa"
    # Without flex_attention (an older torch, no Triton) packed rows keep sdpa's block-diagonal mask.
    no_flex = DeviceKind(cuda=True, capability=(8, 6), flex_available=False)
    kernel, why = choose_attention("auto", packed=True, device=no_flex)
    assert kernel == "sdpa" and "block-diagonal" in why


@pytest.mark.parametrize("packed", [True, False])
def test_ampere_or_newer_with_flash_attn_gets_flash(packed):
    kernel, why = choose_attention("auto", packed=packed, device=HOPPER_FLASH)
    assert kernel == "flash_attention_2" and "sm_90" in why
    assert ("cu_seq_lens" in why) == packed


@pytest.mark.parametrize("packed", [True, False])
def test_pre_ampere_gets_sdpa_even_with_flash_attn(packed):
    kernel, why = choose_attention("auto", packed=packed, device=TURING_FLASH)
    assert kernel == "sdpa" and "sm_75" in why and "older than Ampere" in why


def test_a_model_without_a_kernel_is_not_given_it():
    only_dense = {"eager", "sdpa"}
    assert choose_attention("auto", packed=True, device=HOPPER_FLASH, supported=only_dense)[0] == "sdpa"
    kernel, why = choose_attention("auto", packed=True, device=HOPPER_FLASH, supported={"eager", "sdpa", "flex_attention"})
    assert kernel == "flex_attention" and "no flash-attention support" in why
    assert choose_attention("auto", packed=False, device=CPU, supported={"eager"})[0] == "eager"


def test_an_explicit_kernel_is_kept():
    assert choose_attention("eager", packed=True, device=HOPPER_FLASH) == ("eager", "set by model.attn_implementation")
    assert choose_attention("flex_attention", packed=False, device=CPU)[0] == "flex_attention"


def test_detect_on_the_cpu_imports_no_flash_attn():
    import sys

    import torch

    kind = DeviceKind.detect(torch.device("cpu"))
    assert kind.cuda is False and kind.capability is None
    assert "flash_attn" not in sys.modules


def test_supported_kernels_read_from_the_model_class(tiny_model_dir):
    from transformers import AutoConfig

    from engine.attention import supported_kernels

    assert supported_kernels(AutoConfig.from_pretrained(tiny_model_dir)) >= {"eager", "sdpa", "flex_attention", "flash_attention_2"}


def test_attention_for_the_tiny_model_on_the_cpu(tiny_model_dir):
    import torch

    from engine.models import attention_for
    from presets.schema import ModelConfig

    kernel, why = attention_for(ModelConfig(path=str(tiny_model_dir)), packed=True, device=torch.device("cpu"))
    assert kernel == "sdpa" and "block-diagonal" in why
    assert attention_for(ModelConfig(path=str(tiny_model_dir), attn_implementation="eager"), packed=True)[0] == "eager"


def test_flex_attention_is_refused_for_training_on_the_cpu(tiny_model_dir):
    import torch

    from engine.errors import EngineError
    from engine.models import load_model
    from presets.schema import ModelConfig

    cfg = ModelConfig(path=str(tiny_model_dir), attn_implementation="flex_attention")
    with pytest.raises(EngineError) as caught:
        load_model(cfg, precision="fp32", for_training=True, device=torch.device("cpu"))
    assert "flex_attention" in caught.value.message and "sdpa" in caught.value.advice
