"""The extension tables: presets/methods.py's rows and the engine's builders name the same methods and
LoRA initialisations, the data formats table the schema's formats; the schema, the TUI and the doctor
read them."""

from __future__ import annotations

import typing

import pytest
import yaml

from presets import load_preset_text
from presets.methods import LORA_INITS, METHODS, lora_init, method_names
from presets.schema import DATA_FORMATS, DistributedConfig, MethodConfig


def test_builders_and_traits_name_the_same_methods():
    from engine.methods import BUILDERS

    assert list(BUILDERS) == list(METHODS)


def test_lora_init_builders_and_rows_name_the_same_initialisations():
    from engine.methods import LORA_INITS as BUILDERS

    assert list(BUILDERS) == list(LORA_INITS)
    assert lora_init("pissa_niter_16") is LORA_INITS["pissa_niter_N"]
    with pytest.raises(KeyError):
        lora_init("pissa_niter_N")  # the row's name, not a value


def test_data_formats_table_has_the_schemas_formats():
    from engine.data.formats import FORMATS

    assert set(FORMATS) == set(DATA_FORMATS)
    for name, row_format in FORMATS.items():
        assert (row_format.turns is not None) == (name in ("sharegpt", "messages")), name


def test_the_schema_and_the_tui_read_the_method_table():
    from tui.preset_yaml import FORM_FIELDS, METHODS as TUI_METHODS

    assert typing.get_args(MethodConfig.model_fields["name"].annotation) == tuple(METHODS)
    assert TUI_METHODS == method_names() == tuple(METHODS)
    assert next(f for f in FORM_FIELDS if f.path == ("method", "name")).choices == tuple(METHODS)
    # The LoRA family is typed once, in the table.
    assert method_names("lora") == ("lora", "qlora", "dora", "rslora", "adalora")
    assert method_names("prompt") == ("prompt_tuning", "prefix_tuning", "p_tuning")
    assert MethodConfig.model_fields["lora"].description == "lora, qlora, dora, rslora, adalora"


def test_every_row_points_at_things_that_exist():
    strategies = typing.get_args(DistributedConfig.model_fields["strategy"].annotation)
    for name, method in METHODS.items():
        assert method.name == name
        assert all(section in MethodConfig.model_fields for section in method.params), name
        assert all(limit.strategy in strategies for limit in method.strategy_limits), name
        assert method.lighter is None or method.lighter in METHODS, name
        section, field = method.memory.rank_field.split(".")
        assert field in MethodConfig.model_fields[section].annotation.model_fields, name
    for init in LORA_INITS.values():
        assert init.strategies is None or set(init.strategies) <= set(strategies)
    assert [n for n, m in METHODS.items() if m.trains_base_weights] == ["full", "freeze"]
    assert [n for n, m in METHODS.items() if not m.mergeable] == ["full", "freeze", "prompt_tuning", "prefix_tuning", "p_tuning"]


def test_the_doctor_estimates_every_method():
    from engine.doctor.memory import estimate_memory

    config = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
              "num_hidden_layers": 2, "vocab_size": 256}
    for name, method in METHODS.items():
        data = {"name": "t", "model": {"path": "m"}, "data": {"train_files": ["a.json"], "max_length": 32}, "method": {"name": name}}
        if method.quantization == "required":
            data["model"]["quantization"] = {"mode": "4bit"}
        estimate = estimate_memory(load_preset_text(yaml.safe_dump(data)), config)
        assert estimate.details["trainable_params"] > 0, name
        assert (estimate.parts["adapter"] > 0) == method.is_adapter, name
