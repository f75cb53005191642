"""The slot layouts of ChatRenderer (one skeleton rendering per conversation shape) give exactly the
segments of the exact path (renderings of every prefix), so no token or label changes."""

from __future__ import annotations

import pytest

from engine.data import build_datasets
from engine.data import render as render_module
from engine.data.build import _read
from engine.data.render import _SLOT_TEMPLATES, ChatRenderer
from engine.templates import CHATML, LLAMA3, NAMED_TEMPLATES
from presets.schema import DataConfig

SHARED_FILES = ("alpaca_en_sample.json", "sharegpt_toolcall_sample.json", "conversations_zh_sample.jsonl")

# Conversations at the edges: empty, blank and slot-like contents, unknown roles, a system turn in
# the middle, answers back to back, no user turn, a trailing user turn.
EDGE_CASES = [
    [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}],
    [{"role": "user", "content": "  hi \n"}, {"role": "assistant", "content": "\n\n ok  \t"}],
    [{"role": "user", "content": "\x000\x01 and \x001\x01"}, {"role": "assistant", "content": "\x00x\x01\x00"}],
    [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"},
     {"role": "system", "content": "s2"}, {"role": "user", "content": "u2"}, {"role": "assistant", "content": "a2"}],
    [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}],
    [{"role": "assistant", "content": "alone"}],
    [{"role": "narrator", "content": "n"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}],
    [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}, {"role": "tool", "content": "t"},
     {"role": "assistant", "content": "b"}, {"role": "user", "content": "last"}],
    [{"role": "user", "content": "<|im_end|>\n<|im_start|>assistant\n"}, {"role": "assistant", "content": "<|eot_id|>"}],
]


def template_id(template: str) -> str:
    return next((name for name, text in NAMED_TEMPLATES.items() if text == template), "chatml_with_eos")


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def exact_segments(renderer: ChatRenderer, messages, tools):
    return renderer._segments(*renderer._plain(messages, tools))


def check_same(renderer: ChatRenderer, conversations) -> None:
    for messages, tools in conversations:
        prepared, prepared_tools = renderer.prepare(messages, tools)
        assert renderer.segments(prepared, prepared_tools) == exact_segments(renderer, prepared, prepared_tools), messages


@pytest.mark.parametrize("template", list(_SLOT_TEMPLATES), ids=template_id)
def test_slot_layouts_match_the_exact_path_on_shared_datasets(tokenizer, shared_datasets, template):
    renderer = ChatRenderer(tokenizer, template)
    conversations = []
    for name in SHARED_FILES:
        samples = _read([str(shared_datasets / name)], DataConfig(train_files=[str(shared_datasets / name)])).samples
        assert samples, name
        conversations += [(s.messages, s.tools) for s in samples]
    check_same(renderer, conversations)
    # Tools go into the system prompt (prepare), so every conversation took the slot layouts.
    assert renderer.exact_renders == 0
    assert renderer._layouts and all(layout is not None for layout in renderer._layouts.values())


@pytest.mark.parametrize("template", list(_SLOT_TEMPLATES), ids=template_id)
def test_slot_layouts_match_the_exact_path_on_edge_cases(tokenizer, template):
    renderer = ChatRenderer(tokenizer, template)
    check_same(renderer, [(messages, None) for messages in EDGE_CASES])
    # Only conversations whose boundaries are inexact anyway (Qwen2's default system prompt before
    # a leading answer) take the exact path.
    inexact = sum(not exact_segments(renderer, messages, None)[1] for messages in EDGE_CASES)
    assert renderer.exact_renders == inexact


def test_the_tiny_tokenizers_own_template_takes_the_slot_layouts(tokenizer):
    assert tokenizer.chat_template == CHATML  # the benchmark's and the demo's template


def test_other_templates_and_inputs_take_the_exact_path(tokenizer):
    # A template that tests a content (as Qwen3's do) is not in the table: every conversation is exact.
    testing = ("{% for m in messages %}{% if m['content'].startswith('!') %}{{ 'LOUD ' }}{% endif %}"
               "{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
               "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    renderer = ChatRenderer(tokenizer, testing)
    check_same(renderer, [(messages, None) for messages in EDGE_CASES])
    assert renderer.exact_renders == len(EDGE_CASES)

    renderer = ChatRenderer(tokenizer, LLAMA3)
    odd = [{"role": "user", "content": ["not", "a string"]}, {"role": "assistant", "content": "a"}]
    renderer.segments(odd, None)
    assert renderer.exact_renders == 1


def test_prepared_rows_are_identical_with_and_without_slot_layouts(tokenizer, shared_datasets, monkeypatch):
    files = [str(shared_datasets / name) for name in SHARED_FILES]
    for template in ("llama3", "mistral", None):
        data = DataConfig(train_files=files, chat_template=template, val_ratio=0.1)
        fast = build_datasets(data, tokenizer, num_proc=1)
        with monkeypatch.context() as patch:
            patch.setattr(render_module, "_SLOT_TEMPLATES", {})
            exact = build_datasets(data, tokenizer, num_proc=1)
        assert fast.train.to_dict() == exact.train.to_dict()
        assert fast.eval.to_dict() == exact.eval.to_dict()
        assert (fast.report.prefix_rendered, exact.report.prefix_rendered) == (0, exact.report.train_samples)
        assert {**fast.report.to_dict(), "prefix_rendered": 0} == {**exact.report.to_dict(), "prefix_rendered": 0}


def test_a_mixed_batch_gives_each_row_what_it_gets_alone(tokenizer):
    """The batch is assembled in flat arrays (offsets, one gather for truncation and drops): every
    row must come out as it does in a batch of its own, where no other row shifts it."""
    from engine.data.build import _Encoder
    from engine.data.formats import Sample

    long = " ".join(["word"] * 120)
    samples = [
        Sample("a:1", messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]),
        Sample("a:2", text="a plain document to continue"),
        Sample("a:3", messages=[{"role": "user", "content": long}, {"role": "assistant", "content": "cut off"}]),
        Sample("a:4", messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": long}]),
        Sample("a:5", messages=[{"role": "user", "content": "only a question"}]),
        Sample("a:6", text=long),
        Sample("a:7", messages=[{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"},
                                {"role": "user", "content": "u2"}, {"role": "assistant", "content": "b"}]),
    ]
    for assistant_only_loss in (True, False):
        data = DataConfig(train_files=["x.json"], max_length=48, assistant_only_loss=assistant_only_loss)
        encoder = _Encoder(tokenizer, data, ChatRenderer(tokenizer, CHATML))
        together = encoder.encode_each(samples)
        alone = [encoder.encode_each([sample])[0] for sample in samples]
        assert together == alone
        kinds = [item if isinstance(item, str) else len(item.input_ids) for item in together]
        assert kinds[2] == "no supervised token left after truncation to max_length" or not assistant_only_loss
        assert kinds[3] == kinds[5] == 48  # truncated, kept
        assert isinstance(kinds[4], str) or not assistant_only_loss  # no answer: nothing trains


@pytest.mark.parametrize("gaps", [(1, 3), tuple(range(1, 40, 2))], ids=["few", "many"])
def test_rows_dropped_in_the_map_leave_the_others_in_order(tokenizer, tmp_path, gaps):
    import json

    from engine.data.build import _Encoder, _read

    long_prompt = " ".join(["word"] * 200)  # its answer is cut off at max_length: dropped in the map
    rows = [{"instruction": long_prompt if i in gaps else f"question {i}", "input": "", "output": f"answer {i}"}
            for i in range(42)]
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(rows))
    data = DataConfig(train_files=[str(path)], max_length=64, val_ratio=0)
    bundle = build_datasets(data, tokenizer, num_proc=1)
    renderer = ChatRenderer(tokenizer, bundle.chat_template)
    expected = [item for item in _Encoder(tokenizer, data, renderer).encode_each(_read([str(path)], data).samples)
                if not isinstance(item, str)]
    assert len(expected) == 42 - len(gaps)
    rows_by_ids = {tuple(row["input_ids"]): row["labels"] for row in bundle.train}
    assert rows_by_ids == {tuple(item.input_ids): item.labels for item in expected}
