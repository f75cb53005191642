"""The presets form beyond its first nine fields (issue 15, part 6): LlamaBoard's training fields and
the chosen method's own parameters, driven by the method table, each writing through the YAML text."""

from __future__ import annotations

import yaml
from helpers.tui_app import async_test, make_app, settle, until
from test_presets_editing import form_widget, open_presets, write_copy

from presets.methods import METHODS
from tui.preset_yaml import FORM_FIELDS, method_fields, method_sections, parse_field
from tui.widgets.preset_form import PresetForm
from tui.widgets.yaml_editor import YamlEditor


def shown(widget) -> bool:
    """Displayed, with every container above it (a hidden section hides its rows)."""
    node = widget
    while node is not None and not isinstance(node, PresetForm):
        if not node.display:
            return False
        node = node.parent
    return True


def method_paths(method: str) -> set[tuple[str, ...]]:
    """What the table says `method` takes: the fields of its method.* sections."""
    return {f.path for section in METHODS[method].params for f in method_fields(method, method_sections()[section])}


@async_test
async def test_the_form_has_the_training_fields_and_the_methods_own(workspace):
    original = write_copy(workspace, "mine")
    app = make_app(workspace)
    async with app.run_test(size=(160, 48)) as pilot:
        screen = await open_presets(pilot, "workspace:mine")
        editor = screen.query_one(YamlEditor)
        form = screen.query_one(PresetForm)

        # Filled from the text; keys the preset leaves out stay empty, the default as placeholder.
        assert form_widget(screen, ("training", "eval_steps")).value == "25"
        assert form_widget(screen, ("training", "scheduler")).value == "cosine"
        assert form_widget(screen, ("method", "lora", "r")).value == "16"
        assert form_widget(screen, ("training", "grad_accum")).value == ""
        assert form_widget(screen, ("training", "grad_accum")).placeholder == "1"

        # LoRA's parameters are shown, no other method's.
        for section, fields in method_sections().items():
            for field in fields:
                assert shown(form.widget_for(field)) == (field.path in method_paths("lora")), field.path

        # Typed fields write through the text, each only its own key.
        accum = form_widget(screen, ("training", "grad_accum"))
        accum.focus()
        await pilot.press("4")
        await until(pilot, lambda: yaml.safe_load(editor.text)["training"].get("grad_accum") == 4, "grad_accum")
        form_widget(screen, ("training", "scheduler")).value = "linear"
        form_widget(screen, ("data", "packing")).value = "true"
        form_widget(screen, ("model", "quantization", "mode")).value = "4bit"
        await until(pilot, lambda: yaml.safe_load(editor.text)["model"].get("quantization") == {"mode": "4bit"},
                    "the quantization")
        dropout = form_widget(screen, ("method", "lora", "dropout"))
        dropout.focus()
        await pilot.press("end", "backspace", "backspace", "backspace", *"0.1")
        await until(pilot, lambda: yaml.safe_load(editor.text)["method"]["lora"]["dropout"] == 0.1, "the dropout")
        await settle(pilot)
        data = yaml.safe_load(editor.text)
        assert data["training"]["scheduler"] == "linear" and data["data"]["packing"] is True
        assert editor.text.startswith("# The demo:"), "comments survive"
        expected = yaml.safe_load(original)
        expected["training"].update(grad_accum=4, scheduler="linear")
        expected["data"]["packing"] = True
        expected["model"]["quantization"] = {"mode": "4bit"}
        expected["method"]["lora"]["dropout"] = 0.1
        assert data == expected, "nothing else was written"

        # Another method: its own fields replace LoRA's, from the table.
        form_widget(screen, ("method", "name")).value = "prompt_tuning"
        await until(pilot, lambda: form.method == "prompt_tuning", "the prompt-tuning fields")
        tokens = form_widget(screen, ("method", "prompt", "num_virtual_tokens"))
        assert shown(tokens) and not shown(form_widget(screen, ("method", "lora", "r")))
        assert not shown(form_widget(screen, ("method", "prompt", "encoder_hidden_size"))), "p_tuning's alone"
        assert tokens.value == "" and tokens.placeholder == "20"
        tokens.focus()
        await pilot.press(*"32")
        await until(pilot, lambda: (yaml.safe_load(editor.text)["method"].get("prompt") or {}).get("num_virtual_tokens")
                    == 32, "the virtual tokens")
        # Emptying a field that may be null writes null, the schema's default.
        eval_steps = form_widget(screen, ("training", "eval_steps"))
        eval_steps.focus()
        await pilot.press("end", "backspace", "backspace")
        await until(pilot, lambda: "eval_steps" in yaml.safe_load(editor.text)["training"]
                    and yaml.safe_load(editor.text)["training"]["eval_steps"] is None, "eval_steps null")


@async_test
async def test_the_long_form_scrolls_to_the_focused_field_at_80x24(workspace):
    write_copy(workspace, "mine")
    app = make_app(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_presets(pilot, "workspace:mine")
        form = screen.query_one(PresetForm)
        await pilot.press("ctrl+f")  # narrow: the form takes the editor's place
        await settle(pilot)
        assert form.max_scroll_y > 0, "more fields than rows: the form scrolls"
        last = form_widget(screen, ("method", "lora", "loraplus_lr_ratio"))
        last.focus()
        await settle(pilot)
        assert form.scroll_y > 0 and form.region.contains_region(last.region), "the focused field is in view"


def test_field_kinds_come_from_the_schema():
    fields = {f.path: f for f in FORM_FIELDS}
    packing, eval_steps = fields[("data", "packing")], fields[("training", "eval_steps")]
    assert (packing.kind, packing.choices, packing.default) == ("bool", ("true", "false"), "false")
    assert parse_field(packing, "true") is True
    assert eval_steps.nullable and parse_field(eval_steps, " ") is None and parse_field(eval_steps, "50") == 50
    assert "cosine" in fields[("training", "scheduler")].choices
    targets = next(f for f in method_sections()["lora"] if f.path[-1] == "target_modules")
    assert targets.kind == "list" and parse_field(targets, "q_proj, v_proj") == ["q_proj", "v_proj"]
    # Each method gets exactly the sections the table gives it.
    adalora = {f.path[-1] for f in method_fields("adalora", method_sections()["lora"])}
    assert "r" in adalora and "init" not in adalora, "lora.init is for the methods the table gives lora_options"
    assert "init" in {f.path[-1] for f in method_fields("qlora", method_sections()["lora"])}
    assert method_paths("full") == set()
