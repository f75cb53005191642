"""Formats, rendering and the assistant-only label mask, checked on hand-written samples.

Each test decodes the tokens whose label is not -100 and compares them with exactly the
assistant turns (and their end-of-turn token): nothing more, nothing less.
"""

from __future__ import annotations

import csv
import json

import pytest

from engine.data import IGNORE_INDEX, build_datasets, prompt_ids, resolve_chat_template
from presets.schema import DataConfig

EOT = "<|im_end|>"


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def supervised_runs(tokenizer, row) -> list[str]:
    """The supervised tokens of a sample, decoded run by run (one run per answer)."""
    runs, current = [], []
    for token, label in zip(row["input_ids"], row["labels"]):
        if label != IGNORE_INDEX:
            assert label == token  # labels are the tokens themselves; the model shifts them
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


def full_text(tokenizer, row) -> str:
    return tokenizer.decode(row["input_ids"])


def write_json(path, rows):
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return str(path)


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return str(path)


def build(tokenizer, files, **data):
    return build_datasets(DataConfig(train_files=files if isinstance(files, list) else [files], **data), tokenizer)


def by_first_user(tokenizer, bundle):
    """Training rows keyed by their text (the bundle's order is shuffled by seed)."""
    return {full_text(tokenizer, row): row for row in bundle.train}


# --------------------------------------------------------------------------- alpaca


def test_alpaca_supervises_exactly_the_output(tokenizer, tmp_path):
    rows = [
        {"instruction": "Name a colour.", "input": "", "output": "Blue."},
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    ]
    bundle = build(tokenizer, write_json(tmp_path / "a.json", rows))
    assert bundle.report.format == "alpaca"
    assert "detected" in bundle.report.format_detection
    texts = sorted(full_text(tokenizer, r) for r in bundle.train)
    assert texts == sorted([
        "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\nBlue.<|im_end|>\n",
        "<|im_start|>user\nAdd the numbers.\n2 and 3<|im_end|>\n<|im_start|>assistant\n5<|im_end|>\n",
    ])
    supervised = sorted(run for row in bundle.train for run in supervised_runs(tokenizer, row))
    assert supervised == sorted(["Blue." + EOT, "5" + EOT])


def test_alpaca_history_and_system_are_multi_turn(tokenizer, tmp_path):
    rows = [{
        "instruction": "And of Italy?", "input": "", "output": "Rome.",
        "system": "Be brief.", "history": [["Capital of France?", "Paris."], ["Of Spain?", "Madrid."]],
    }]
    bundle = build(tokenizer, write_json(tmp_path / "h.json", rows))
    row = bundle.train[0]
    assert full_text(tokenizer, row) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\nParis.<|im_end|>\n"
        "<|im_start|>user\nOf Spain?<|im_end|>\n<|im_start|>assistant\nMadrid.<|im_end|>\n"
        "<|im_start|>user\nAnd of Italy?<|im_end|>\n<|im_start|>assistant\nRome.<|im_end|>\n"
    )
    assert supervised_runs(tokenizer, row) == ["Paris." + EOT, "Madrid." + EOT, "Rome." + EOT]


def test_system_prompt_from_preset_fills_rows_without_one(tokenizer, tmp_path):
    rows = [{"instruction": "Hi", "output": "Hello"}, {"instruction": "Yo", "output": "Hey", "system": "Own."}]
    bundle = build(tokenizer, write_json(tmp_path / "s.json", rows), system_prompt="Global.")
    texts = sorted(full_text(tokenizer, r) for r in bundle.train)
    assert texts[0].startswith("<|im_start|>system\nGlobal.<|im_end|>\n<|im_start|>user\nHi")
    assert texts[1].startswith("<|im_start|>system\nOwn.<|im_end|>\n<|im_start|>user\nYo")


def test_alpaca_column_mapping(tokenizer, tmp_path):
    rows = [{"question": "Two plus two?", "answer": "Four."}]
    bundle = build(tokenizer, write_json(tmp_path / "m.json", rows), format="alpaca",
                   columns={"instruction": "question", "output": "answer"})
    assert supervised_runs(tokenizer, bundle.train[0]) == ["Four." + EOT]


# --------------------------------------------------------------------------- sharegpt / messages


def test_sharegpt_multi_turn_with_system(tokenizer, tmp_path):
    rows = [{"conversations": [
        {"from": "system", "value": "You are terse."},
        {"from": "human", "value": "Hello"},
        {"from": "gpt", "value": "Hi."},
        {"from": "human", "value": "Capital of Peru?"},
        {"from": "gpt", "value": "Lima."},
        {"from": "human", "value": "Thanks"},  # trailing user turn: teaches nothing, removed
    ]}]
    bundle = build(tokenizer, write_jsonl(tmp_path / "c.jsonl", rows))
    assert bundle.report.format == "sharegpt"
    row = bundle.train[0]
    assert supervised_runs(tokenizer, row) == ["Hi." + EOT, "Lima." + EOT]
    assert full_text(tokenizer, row).endswith("<|im_start|>assistant\nLima.<|im_end|>\n")


def test_sharegpt_tool_call_supervises_the_call_not_the_observation(tokenizer, tmp_path):
    call = {"name": "get_weather", "arguments": {"city": "Oslo"}}
    tools = [{"name": "get_weather", "description": "Weather of a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    rows = [{"conversations": [
        {"from": "human", "value": "Weather in Oslo?"},
        {"from": "function_call", "value": json.dumps(call)},
        {"from": "observation", "value": '{"temp": 3}'},
        {"from": "gpt", "value": "It is 3 degrees."},
    ], "tools": json.dumps(tools)}]
    bundle = build(tokenizer, write_json(tmp_path / "t.json", rows))
    row = bundle.train[0]
    # The tiny model's template has no tool support: the call is written as JSON text, tools go
    # into the system prompt, and the observation is a tool turn that carries no label.
    assert supervised_runs(tokenizer, row) == [json.dumps(call) + EOT, "It is 3 degrees." + EOT]
    text = full_text(tokenizer, row)
    assert text.startswith("<|im_start|>system\nYou can call the following tools.")
    assert '"get_weather"' in text.split("<|im_end|>")[0]
    assert "<|im_start|>tool\n{\"temp\": 3}<|im_end|>" in text


NATIVE_TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTOOLS:{% for t in tools %} {{ t['function']['name'] }}{% endfor %}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m.get('tool_calls') %}{% for c in m['tool_calls'] %}<call>{{ c['function']['name'] }}"
    "({{ c['function']['arguments'] | tojson }})</call>{% endfor %}{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_tool_calls_and_tools_go_to_a_template_that_supports_them(tokenizer, tmp_path):
    rows = [{"conversations": [
        {"from": "human", "value": "Weather?"},
        {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Rome"}}'},
        {"from": "observation", "value": "sunny"},
        {"from": "gpt", "value": "Sunny."},
    ], "tools": [{"name": "weather", "parameters": {}}]}]
    bundle = build(tokenizer, write_json(tmp_path / "n.json", rows), chat_template=NATIVE_TOOLS_TEMPLATE)
    row = bundle.train[0]
    assert full_text(tokenizer, row).startswith("<|im_start|>system\nTOOLS: weather<|im_end|>\n")
    assert supervised_runs(tokenizer, row) == ['<call>weather({"city": "Rome"})</call>' + EOT, "Sunny." + EOT]


def test_messages_format_with_openai_tool_calls_and_content_parts(tokenizer, tmp_path):
    rows = [{"messages": [
        {"role": "system", "content": "Sys."},
        {"role": "user", "content": [{"type": "text", "text": "Look "}, {"type": "text", "text": "it up."}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"type": "function", "function": {"name": "search", "arguments": "{\"q\": \"x\"}"}}]},
        {"role": "tool", "content": "found x"},
        {"role": "assistant", "content": "It is x."},
    ]}]
    bundle = build(tokenizer, write_jsonl(tmp_path / "m.jsonl", rows))
    assert bundle.report.format == "messages"
    row = bundle.train[0]
    assert "<|im_start|>user\nLook it up.<|im_end|>" in full_text(tokenizer, row)
    assert supervised_runs(tokenizer, row) == ['{"name": "search", "arguments": {"q": "x"}}' + EOT, "It is x." + EOT]


def test_role_tags_mapping(tokenizer, tmp_path):
    rows = [{"dialog": [{"speaker": "client", "text": "Hi"}, {"speaker": "bot", "text": "Hello!"}]}]
    bundle = build(tokenizer, write_json(tmp_path / "r.json", rows), format="sharegpt",
                   columns={"conversations": "dialog"},
                   tags={"role_key": "speaker", "content_key": "text", "user": "client", "assistant": "bot"})
    assert supervised_runs(tokenizer, bundle.train[0]) == ["Hello!" + EOT]


# --------------------------------------------------------------------------- text, loss on all tokens


def test_text_format_supervises_every_token_and_appends_eos(tokenizer, tmp_path):
    bundle = build(tokenizer, write_jsonl(tmp_path / "t.jsonl", [{"text": "The river follows the old bridge."}]))
    row = bundle.train[0]
    assert bundle.report.format == "text"
    assert bundle.report.chat_template == "none (text format)"
    assert row["labels"] == row["input_ids"]
    assert full_text(tokenizer, row) == "The river follows the old bridge." + EOT
    assert bundle.chat_template is None and bundle.eval_examples == []


def test_assistant_only_loss_off_supervises_everything(tokenizer, tmp_path):
    bundle = build(tokenizer, write_json(tmp_path / "a.json", [{"instruction": "Q", "output": "A"}]),
                   assistant_only_loss=False)
    row = bundle.train[0]
    assert row["labels"] == row["input_ids"]


# --------------------------------------------------------------------------- templates


@pytest.mark.parametrize("name, prompt_end, supervised", [
    ("alpaca", "### Response:\n", "Oslo." + EOT),           # eos rendered after the answer
    ("mistral", "[INST] Capital of Norway? [/INST]", "Oslo." + EOT),
    ("qwen2", "<|im_start|>assistant\n", "Oslo." + EOT),
])
def test_named_templates_supervise_the_answer_and_its_end_token(tokenizer, tmp_path, name, prompt_end, supervised):
    path = write_json(tmp_path / "a.json", [{"instruction": "Capital of Norway?", "output": "Oslo."}])
    bundle = build(tokenizer, path, chat_template=name)
    row = bundle.train[0]
    assert supervised_runs(tokenizer, row) == [supervised]
    prompt = prompt_ids(tokenizer, [{"role": "user", "content": "Capital of Norway?"}], chat_template=name)
    assert tokenizer.decode(prompt).endswith(prompt_end)
    assert row["input_ids"][: len(prompt)] == prompt  # training saw exactly the prompt chat will send
    assert bundle.report.chat_template == f"named: {name}"
    assert bundle.report.template_has_eos_after_assistant is True


def test_template_without_end_of_turn_token_is_reported(tokenizer, tmp_path):
    # The tiny tokenizer has no <|eot_id|> token: llama3's markers are plain text, no eos follows.
    bundle = build(tokenizer, write_json(tmp_path / "a.json", [{"instruction": "Q?", "output": "A."}]), chat_template="llama3")
    report = bundle.report
    assert report.template_has_eos_after_assistant is False
    assert report.end_of_turn_token is None
    assert any("will not learn to stop" in w for w in report.warnings)
    assert supervised_runs(tokenizer, bundle.train[0]) == ["A.<|eot_id|>"]


def test_template_whose_prefixes_differ_is_masked_by_common_prefix(tokenizer, tmp_path):
    # The generation prompt opens a <think> block that the rendered history does not have.
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n<think>{% endif %}"
    )
    bundle = build(tokenizer, write_json(tmp_path / "a.json", [{"instruction": "Q?", "output": "A."}]), chat_template=template)
    assert bundle.report.inexact_masks == 1
    assert supervised_runs(tokenizer, bundle.train[0]) == ["A." + EOT]


HISTORY_DIFFERS_TEMPLATE = (  # like Qwen3: only answers after the last user turn keep their <think> block
    "{% set ns = namespace(last_user=-1) %}"
    "{% for m in messages %}{% if m['role'] == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}{% endfor %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' and loop.index0 > ns.last_user %}<think></think>{% endif %}"
    "{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_template_rendering_history_differently_is_masked_exactly(tokenizer, tmp_path):
    rows = [{"conversations": [{"from": "human", "value": "Q1"}, {"from": "gpt", "value": "A1"},
                               {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}]}]
    bundle = build(tokenizer, write_json(tmp_path / "q.json", rows), chat_template=HISTORY_DIFFERS_TEMPLATE)
    row = bundle.train[0]
    assert full_text(tokenizer, row) == (
        "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
        "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n<think></think>A2<|im_end|>\n"
    )
    assert supervised_runs(tokenizer, row) == ["A1" + EOT, "<think></think>A2" + EOT]
    assert bundle.report.inexact_masks == 0


def test_chatml_fallback_is_said_out_loud(tokenizer, tmp_path, caplog):
    import copy

    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    data = DataConfig(train_files=[write_json(tmp_path / "a.json", [{"instruction": "Q?", "output": "A."}])])
    with caplog.at_level("WARNING", logger="tunebench.data"):
        bundle = build_datasets(data, bare)
        template = resolve_chat_template(bare, data)
    assert bundle.report.chat_template == "fallback: ChatML"
    assert any("no chat template" in w for w in bundle.report.warnings)
    assert "no chat template" in caplog.text
    assert "<|im_start|>" in template
    assert supervised_runs(bare, bundle.train[0]) == ["A." + EOT]


def test_chatml_fallback_adds_eos_when_the_tokenizer_lacks_chatml_tokens(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(["a base model without a chat template"], trainer=trainer)
    base = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="<pad>")
    bundle = build(base, write_json(tmp_path / "a.json", [{"instruction": "Q?", "output": "A."}]))
    assert bundle.report.template_has_eos_after_assistant is True
    assert bundle.report.end_of_turn_token == "</s>"
    assert supervised_runs(base, bundle.train[0]) == ["A.<|im_end|></s>"]


# --------------------------------------------------------------------------- files, split, truncation, report


def test_csv_and_parquet_files_load(tokenizer, tmp_path):
    path = tmp_path / "a.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["instruction", "input", "output", "history"])
        writer.writeheader()
        writer.writerow({"instruction": "Q, with comma", "input": "", "output": "A1", "history": json.dumps([["h", "H."]])})
        writer.writerow({"instruction": "Q2", "input": "", "output": "A2", "history": ""})
    bundle = build(tokenizer, str(path))
    runs = sorted(run for row in bundle.train for run in supervised_runs(tokenizer, row))
    assert runs == sorted(["H." + EOT, "A1" + EOT, "A2" + EOT])

    from datasets import Dataset

    parquet = tmp_path / "m.parquet"
    Dataset.from_list([{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}]).to_parquet(str(parquet))
    bundle = build(tokenizer, str(parquet))
    assert bundle.report.format == "messages"
    assert supervised_runs(tokenizer, bundle.train[0]) == ["Yo" + EOT]


def test_truncation_drops_and_counts_samples_left_without_labels(tokenizer, tmp_path):
    long_prompt = "The model learns the question with care. " * 20
    rows = [
        {"instruction": long_prompt, "output": "Lost."},  # answer falls beyond max_length: dropped
        {"instruction": "Short?", "output": "The small map " * 30},  # answer cut: kept, truncated
        {"instruction": "Tiny?", "output": "Yes."},
    ]
    bundle = build(tokenizer, write_json(tmp_path / "a.json", rows), max_length=40)
    report = bundle.report
    assert report.dropped == {"no supervised token left after truncation to max_length": 1}
    assert report.train_samples == 2
    assert report.truncated == 2 and report.truncated_share == pytest.approx(2 / 3)
    assert all(len(row["input_ids"]) <= 40 for row in bundle.train)
    assert report.length.max > 40


def test_validation_split_is_reproducible_by_seed(tokenizer, demo_data_file):
    def split(seed):
        bundle = build(tokenizer, str(demo_data_file), val_ratio=0.2, shuffle_seed=seed)
        return sorted(tokenizer.decode(r["input_ids"]) for r in bundle.eval), bundle

    first, bundle = split(1)
    again, _ = split(1)
    other, _ = split(2)
    assert first == again and first != other
    assert len(bundle.eval) == round(56 * 0.2) and len(bundle.train) == 56 - len(bundle.eval)
    assert bundle.report.train_val_overlap == 0
    example = bundle.eval_examples[0]
    assert [m["role"] for m in example.messages] == ["user"]
    assert example.reference.startswith("The capital of ")
    assert example.messages[0]["content"] in {tokenizer.decode(r["input_ids"]).split("\n")[1].split("<|im_end|>")[0] for r in bundle.eval}


def test_validation_files_duplicates_overlap_and_max_samples(tokenizer, tmp_path):
    train = [{"instruction": f"Q{i}", "output": f"A{i}"} for i in range(6)] + [{"instruction": "Q0", "output": "A0"}]
    val = [{"instruction": "Q1", "output": "A1"}, {"instruction": "Qv", "output": "Av"}]
    bundle = build(tokenizer, write_json(tmp_path / "t.json", train), val_files=[write_json(tmp_path / "v.json", val)])
    report = bundle.report
    assert report.duplicates == 1
    assert report.train_val_overlap == 1
    assert report.val_rows_read == 2 and len(bundle.eval) == 2
    assert sorted(e.reference for e in bundle.eval_examples) == ["A1", "Av"]
    limited = build(tokenizer, write_json(tmp_path / "t.json", train), max_samples=3)
    assert len(limited.train) == 3 and limited.report.limited == 4


def test_rows_without_answers_are_dropped_and_counted(tokenizer, tmp_path):
    rows = [
        {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
        {"conversations": [{"from": "human", "value": "only a question"}]},
        {"conversations": [{"from": "human", "value": "Q"}, {"from": "robot", "value": "A"}]},
    ]
    report = build(tokenizer, write_json(tmp_path / "a.json", rows)).report
    assert report.dropped == {"no assistant turn": 1, "unknown role 'robot' (map it with data.tags.*)": 1}
    assert report.train_samples == 1


def test_report_is_json_serialisable_and_shows_the_mask(tokenizer, demo_data_file):
    bundle = build(tokenizer, str(demo_data_file))
    report = bundle.report
    payload = json.loads(json.dumps(report.to_dict()))
    assert payload["rows_read"] == 56 and payload["format"] == "alpaca"
    assert 0 < payload["supervised_share"] < 1
    assert payload["template_has_eos_after_assistant"] is True and payload["end_of_turn_token"] == EOT
    assert sum(b["count"] for b in payload["histogram"]) == report.train_samples
    example = report.example
    assert len(example.tokens) == len(example.supervised)
    assert "".join(t for t, s in zip(example.tokens, example.supervised) if s) == "The capital of France is Paris." + EOT
    assert [s for _, s in example.segments] == [False, True, False]
    assert 0 < report.padding_efficiency <= 1 and 0 < report.packing_efficiency <= 1


def test_prompt_ids_match_transformers_and_training(tokenizer, demo_data_file):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]
    ids = prompt_ids(tokenizer, messages)
    assert ids == tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    bundle = build(tokenizer, str(demo_data_file), system_prompt="Be brief.")
    first = next(r for r in bundle.train if tokenizer.decode(r["input_ids"]).count("France?") == 1)
    assert first["input_ids"][: len(ids)] == ids
    assert all(label == IGNORE_INDEX for label in first["labels"][: len(ids)])
    assert first["labels"][len(ids)] != IGNORE_INDEX  # the answer starts right after the prompt


# --------------------------------------------------------------------------- the fast encoding path

TOOL_TEMPLATE = (  # reads tools, tool calls and reasoning, as tool-capable Hub templates do
    "{% if tools %}<|im_start|>system\n{{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m.reasoning_content %}<think>{{ m.reasoning_content }}</think>{% endif %}{{ m['content'] or '' }}"
    "{% for c in m.tool_calls or [] %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "assistant", "content": "", "thinking": "call the tool",
     "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}]},
    {"role": "tool", "content": "{\"temp\": 3}"},
    {"role": "assistant", "content": "3 °C.", "reasoning": None},
]
TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]


@pytest.mark.parametrize("template", ["chatml", "llama3", "qwen2", "mistral", "alpaca", TOOL_TEMPLATE, HISTORY_DIFFERS_TEMPLATE])
def test_renderer_renders_what_transformers_renders(tokenizer, template):
    # ChatRenderer calls the compiled template itself, converting a conversation once for all its
    # prefixes: every rendering must be render_jinja_template's, prefix by prefix.
    from transformers.utils.chat_template_utils import render_jinja_template

    from engine.data.render import ChatRenderer, template_for

    text = template_for(tokenizer, template).text
    renderer = ChatRenderer(tokenizer, text)
    messages, tools = renderer.prepare(CONVERSATION, TOOLS)
    for end in range(1, len(messages) + 1):
        for generation in (False, True):
            expected, _ = render_jinja_template(conversations=[messages[:end]], tools=tools, chat_template=text,
                                                add_generation_prompt=generation, **renderer.special_tokens)
            assert renderer.render(messages[:end], tools, add_generation_prompt=generation) == expected[0]


def test_tokenize_many_calls_the_rust_tokenizer_only_where_that_is_the_same_call(tiny_model_dir):
    from transformers import AutoTokenizer

    from engine.data.render import _direct_backend, tokenize_many

    texts = ["<|im_start|>user\nHello there<|im_end|>\n", "", "  spaced\n\n text "]
    fresh = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert _direct_backend(fresh) is not None
    assert tokenize_many(fresh, texts) == fresh(texts, add_special_tokens=False)["input_ids"]

    fresh._tokenizer.enable_truncation(max_length=3)  # the tokenizer's call would turn it off first
    assert _direct_backend(fresh) is None
    assert tokenize_many(fresh, texts) == AutoTokenizer.from_pretrained(tiny_model_dir)(texts, add_special_tokens=False)["input_ids"]

    splitting = AutoTokenizer.from_pretrained(tiny_model_dir)
    splitting.split_special_tokens = True
    assert _direct_backend(splitting) is None  # the backend keeps special tokens whole until the next call
    assert tokenize_many(splitting, texts[:1]) == splitting(texts[:1], add_special_tokens=False)["input_ids"]
    assert tokenize_many(splitting, texts[:1]) != tokenize_many(fresh, texts[:1])


def test_both_tokenising_paths_give_the_same_rows(tokenizer, shared_datasets, monkeypatch):
    import engine.data.render as render

    data = DataConfig(train_files=[str(shared_datasets / "sharegpt_toolcall_sample.json")], val_ratio=0.1)
    direct = build_datasets(data, tokenizer, num_proc=1)
    monkeypatch.setattr(render, "_direct_backend", lambda tokenizer: None)
    called = build_datasets(data, tokenizer, num_proc=1)
    assert direct.train[:] == called.train[:] and direct.eval[:] == called.eval[:]
    assert direct.report == called.report
