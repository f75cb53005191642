"""Preference data (issue 19): each layout detected and rendered on the tiny tokenizer, the pair
report, and every bad-data case refused with its file:line and what to do."""

from __future__ import annotations

import csv
import json

import pytest

from engine.data import IGNORE_INDEX, DataError, build_datasets, build_preference_datasets
from engine.data.render import ChatRenderer, template_for
from presets.schema import DataConfig, TrainPreset

EOT = "<|im_end|>"
PROMPT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def write_json(path, rows):
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return str(path)


def preset(files, stage="dpo", preference=None, **data) -> TrainPreset:
    return TrainPreset.model_validate({
        "name": "pairs", "model": {"path": "unused"}, "stage": stage, "preference": preference or {},
        "data": {"train_files": files if isinstance(files, list) else [files], **data},
    })


def build(tokenizer, files, stage="dpo", preference=None, **data):
    return build_preference_datasets(preset(files, stage, preference, **data), tokenizer)


def refused(tokenizer, files, stage="dpo", **data) -> DataError:
    with pytest.raises(DataError) as caught:
        build(tokenizer, files, stage, **data)
    return caught.value


def full_text(tokenizer, messages) -> str:
    """The whole conversation as the SFT renderer renders it."""
    renderer = ChatRenderer(tokenizer, template_for(tokenizer, None).text)
    return renderer.render(messages, None, add_generation_prompt=False)


QA = [{"prompt": f"Question {i}?", "chosen": f"Right answer {i}.", "rejected": f"Wrong answer {i}."} for i in range(6)]


# --------------------------------------------------------------------------- layouts


def test_trl_strings_render_as_the_sft_renderer_does(tokenizer, tmp_path):
    bundle = build(tokenizer, write_jsonl(tmp_path / "pairs.jsonl", QA))
    report = bundle.report
    assert report.format == "pairs"
    assert "'prompt', 'chosen' and 'rejected'" in report.format_detection and "TRL" in report.format_detection
    assert bundle.train.column_names == ["prompt", "chosen", "rejected"] and bundle.eval is None
    row = next(r for r in bundle.train if r["prompt"] == PROMPT.format("Question 0?"))
    assert row["chosen"] == "Right answer 0." + EOT and row["rejected"] == "Wrong answer 0." + EOT
    # prompt + chosen is the rendered conversation through the answer's end-of-turn token: the
    # template's newline after it is scaffolding, as in the SFT label mask.
    full = full_text(tokenizer, [{"role": "user", "content": "Question 0?"}, {"role": "assistant", "content": "Right answer 0."}])
    assert full == row["prompt"] + row["chosen"] + "\n"
    assert bundle.chat_template == tokenizer.chat_template


def test_chosen_is_exactly_what_sft_supervises(tokenizer, tmp_path):
    alpaca = write_json(tmp_path / "sft.json", [{"instruction": "Question 0?", "output": "Right answer 0."}])
    sft = build_datasets(DataConfig(train_files=[alpaca]), tokenizer).train[0]
    supervised = [t for t, label in zip(sft["input_ids"], sft["labels"]) if label != IGNORE_INDEX]
    pairs = build(tokenizer, write_jsonl(tmp_path / "pairs.jsonl", QA[:2])).train
    row = next(r for r in pairs if "Question 0?" in r["prompt"])
    assert tokenizer.decode(supervised) == row["chosen"]
    assert tokenizer.decode(sft["input_ids"][: len(sft["input_ids"]) - len(supervised) - 1]) == row["prompt"]


def test_a_bos_the_tokenizer_adds_itself_is_not_doubled(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    # As Llama 3: the template renders the bos, and encoding a text adds one too (as TRL encodes the prompt).
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, bos_token="<|endoftext|>", add_bos_token=True)
    template = "{{ bos_token }}" + tokenizer.chat_template
    row = build(tokenizer, write_jsonl(tmp_path / "pairs.jsonl", QA[:1]), chat_template=template).train[0]
    assert row["prompt"] == PROMPT.format("Question 0?")
    ids = tokenizer(row["prompt"] + row["chosen"])["input_ids"]
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id


def test_a_prompt_rendered_differently_alone_splits_at_the_common_prefix(tokenizer, tmp_path):
    # The generation prompt opens a think block that the rendered conversation does not have.
    template = tokenizer.chat_template.replace("'<|im_start|>assistant\n'", "'<|im_start|>assistant\n<think>'")
    assert "<think>" in template
    bundle = build(tokenizer, write_jsonl(tmp_path / "pairs.jsonl", QA[:2]), chat_template=template)
    row = next(r for r in bundle.train if "Question 0?" in r["prompt"])
    assert (row["prompt"], row["chosen"]) == (PROMPT.format("Question 0?"), "Right answer 0." + EOT)
    assert bundle.report.inexact_prompts == 2 and any("split where the two renderings part" in w for w in bundle.report.warnings)


def test_trl_conversations_explicit_prompt_with_system(tokenizer, tmp_path):
    rows = [{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Hi {i}"}],
             "chosen": [{"role": "assistant", "content": f"Hello {i}"}],
             "rejected": [{"role": "assistant", "content": f"Go away {i}"}]} for i in range(3)]
    bundle = build(tokenizer, write_jsonl(tmp_path / "conv.jsonl", rows))
    row = next(r for r in bundle.train if "Hi 0" in r["prompt"])
    assert row["prompt"] == "<|im_start|>system\nBe brief.<|im_end|>\n" + PROMPT.format("Hi 0")
    assert (row["chosen"], row["rejected"]) == ("Hello 0" + EOT, "Go away 0" + EOT)


def test_trl_implicit_prompt_shares_the_turns(tokenizer, tmp_path):
    shared = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, ask away."},
              {"role": "user", "content": "Capital of France?"}]
    rows = [{"chosen": shared + [{"role": "assistant", "content": "Paris."}],
             "rejected": shared + [{"role": "assistant", "content": "Berlin."}]}]
    bundle = build(tokenizer, write_json(tmp_path / "implicit.json", rows))
    assert "without 'prompt'" in bundle.report.format_detection and "implicit prompt" in bundle.report.format_detection
    row = bundle.train[0]
    assert row["prompt"] == ("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello, ask away.<|im_end|>\n"
                             + PROMPT.format("Capital of France?"))
    assert (row["chosen"], row["rejected"]) == ("Paris." + EOT, "Berlin." + EOT)
    assert row["prompt"] + row["chosen"] + "\n" == full_text(tokenizer, rows[0]["chosen"])


def test_trl_explicit_prompt_repeated_in_the_answers(tokenizer, tmp_path):
    prompt = [{"role": "user", "content": "Capital of Italy?"}]
    rows = [{"prompt": prompt, "chosen": prompt + [{"role": "assistant", "content": "Rome."}],
             "rejected": prompt + [{"role": "assistant", "content": "Milan."}]}]
    row = build(tokenizer, write_jsonl(tmp_path / "repeat.jsonl", rows)).train[0]
    assert (row["prompt"], row["chosen"], row["rejected"]) == (PROMPT.format("Capital of Italy?"), "Rome." + EOT, "Milan." + EOT)


def test_llamafactory_alpaca_ranking(tokenizer, tmp_path):
    rows = [{"instruction": "Translate", "input": "chat", "system": "You translate.", "history": [["Hi", "Hello"]],
             "chosen": "cat", "rejected": "dog"}]
    bundle = build(tokenizer, write_json(tmp_path / "alpaca.json", rows))
    assert bundle.report.format == "alpaca" and "alpaca ranking" in bundle.report.format_detection
    row = bundle.train[0]
    assert row["prompt"] == ("<|im_start|>system\nYou translate.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                             "<|im_start|>assistant\nHello<|im_end|>\n" + PROMPT.format("Translate\nchat"))
    assert (row["chosen"], row["rejected"]) == ("cat" + EOT, "dog" + EOT)


@pytest.mark.parametrize("turns, keys", [("conversations", ("from", "value", "human", "gpt")),
                                         ("messages", ("role", "content", "user", "assistant"))])
def test_llamafactory_sharegpt_ranking(tokenizer, tmp_path, turns, keys):
    role, content, user, assistant = keys
    rows = [{turns: [{role: user, content: "Capital of Spain?"}], "system": "Be terse.",
             "chosen": {role: assistant, content: "Madrid."}, "rejected": {role: assistant, content: "Lisbon."}}]
    bundle = build(tokenizer, write_json(tmp_path / "sharegpt.json", rows), system_prompt="unused: the row has one")
    assert bundle.report.format == "sharegpt" and f"'{turns}', 'chosen' and 'rejected'" in bundle.report.format_detection
    row = bundle.train[0]
    assert row["prompt"] == "<|im_start|>system\nBe terse.<|im_end|>\n" + PROMPT.format("Capital of Spain?")
    assert (row["chosen"], row["rejected"]) == ("Madrid." + EOT, "Lisbon." + EOT)


def test_kto_unpaired_rows_from_csv(tokenizer, tmp_path):
    path = tmp_path / "kto.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "completion", "label"])
        writer.writerows([["Capital of Peru?", "Lima.", "true"], ["Capital of Chile?", "Lima.", "false"],
                          ["Capital of Cuba?", "Havana.", "True"]])
    bundle = build(tokenizer, str(path), stage="kto")
    assert bundle.report.format == "unpaired" and "KTO" in bundle.report.format_detection
    assert bundle.train.column_names == ["prompt", "completion", "label"]
    rows = {r["prompt"]: (r["completion"], r["label"]) for r in bundle.train}
    assert rows[PROMPT.format("Capital of Chile?")] == ("Lima." + EOT, False)
    assert (bundle.report.desirable, bundle.report.undesirable) == (2, 1)


def test_kto_on_pairs_gets_one_row_of_each(tokenizer, tmp_path):
    bundle = build(tokenizer, write_jsonl(tmp_path / "pairs.jsonl", QA), stage="kto")
    assert bundle.report.unpaired_from_pairs and len(bundle.train) == 12
    assert (bundle.report.desirable, bundle.report.undesirable) == (6, 6)
    mine = sorted((r["completion"], r["label"]) for r in bundle.train if "Question 2?" in r["prompt"])
    assert mine == [("Right answer 2." + EOT, True), ("Wrong answer 2." + EOT, False)]
    assert not bundle.report.warnings  # balanced


def test_kto_imbalance_suggests_a_weight(tokenizer, tmp_path):
    rows = [{"prompt": f"Q{i}?", "completion": f"A{i}.", "label": i < 8} for i in range(10)]
    report = build(tokenizer, write_jsonl(tmp_path / "kto.jsonl", rows), stage="kto").report
    assert (report.desirable, report.undesirable) == (8, 2)
    assert any("preference.undesirable_weight: 4.00" in w for w in report.warnings), report.warnings
    balanced = build(tokenizer, write_jsonl(tmp_path / "kto.jsonl", rows), stage="kto",
                     preference={"undesirable_weight": 4.0}).report
    assert not balanced.warnings


# --------------------------------------------------------------------------- report, split


def test_report_lengths_truncation_and_prompt_too_long(tokenizer, tmp_path):
    long_prompt = "word " * 60
    rows = QA[:4] + [{"prompt": long_prompt, "chosen": "yes", "rejected": "no"},
                     {"prompt": "Short?", "chosen": "a long answer " * 20, "rejected": "no"}]
    report = build(tokenizer, write_jsonl(tmp_path / "pairs.jsonl", rows), max_length=32).report
    assert report.train == 6 and report.max_length == 32
    assert report.prompt_too_long == 1 and report.truncated == 2
    assert report.chosen_length.max > report.rejected_length.max
    assert report.prompt_length.max >= 32
    assert any("TRL drops them" in w for w in report.warnings) and any("cuts the answers" in w for w in report.warnings)
    lines = "\n".join(report.lines())
    assert "stage dpo: 6 training pairs" in lines and "prompt alone reaches max_length: 1" in lines
    assert json.loads(json.dumps(report.to_dict()))["examples"][0]["answers"][0][0] == "chosen"


def test_every_prompt_too_long_is_refused(tokenizer, tmp_path):
    rows = [{"prompt": "word " * 60, "chosen": "yes", "rejected": "no"}]
    error = refused(tokenizer, write_jsonl(tmp_path / "pairs.jsonl", rows), max_length=16)
    assert "every training prompt is 16 tokens or longer" in str(error) and "data.max_length" in error.advice


def test_validation_ratio_files_and_max_samples(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", QA * 2 + QA[:1])  # 13 pairs
    first = build(tokenizer, path, val_ratio=0.25, shuffle_seed=3)
    again = build(tokenizer, path, val_ratio=0.25, shuffle_seed=3)
    assert (first.report.train, first.report.eval) == (10, 3)
    assert first.eval.to_list() == again.eval.to_list()  # the split is the seed's
    limited = build(tokenizer, path, max_samples=4)
    assert limited.report.train == 4 and limited.report.limited == 9
    assert limited.report.duplicates == 0 and build(tokenizer, path).report.duplicates == 7
    val = write_jsonl(tmp_path / "val.jsonl", QA[:2])
    split = build(tokenizer, path, val_files=[val])
    assert (split.report.eval, split.report.val_rows_read, split.report.train_val_overlap) == (2, 2, 2)


def test_demo_preference_rows(tmp_path, tokenizer):
    from engine.demo_data import CAPITALS, DEMO_PAIRS_PER_QUESTION, demo_preference_rows, write_demo_preference_dataset

    train, val = demo_preference_rows(seed=1)
    assert (train, val) == demo_preference_rows(seed=1) and (train, val) != demo_preference_rows(seed=2)
    assert len(train) == DEMO_PAIRS_PER_QUESTION * len(CAPITALS) and len(val) == len(CAPITALS)
    by_prompt: dict[str, set[str]] = {}
    for row in train:
        by_prompt.setdefault(row["prompt"], set()).add(row["rejected"])
    for row in val:  # every validation pair asks a trained question against a wrong answer no training pair names
        assert row["rejected"] not in by_prompt[row["prompt"]]
    for row in train + val:
        capital = row["prompt"].removeprefix("Which country has ").removesuffix(" as its capital?")
        country = next(c for c, cap in CAPITALS.items() if cap == capital)
        assert row["chosen"] == f"{capital} is the capital of {country}." != row["rejected"]
    train_path, val_path = write_demo_preference_dataset(tmp_path / "d" / "train.json", tmp_path / "d" / "val.json")
    bundle = build(tokenizer, str(train_path), val_files=[str(val_path)])
    assert (bundle.report.train, bundle.report.eval, bundle.report.format) == (len(train), len(val), "pairs")


# --------------------------------------------------------------------------- bad data


@pytest.mark.parametrize("case, rows, where, reason", [
    ("equal", [QA[0], {"prompt": "Q?", "chosen": "Same.", "rejected": "Same."}], ":2", "chosen equals rejected"),
    ("empty-chosen", [QA[0], QA[1], {"prompt": "Q?", "chosen": " ", "rejected": "No."}], ":3", "chosen is empty"),
    ("missing-rejected", [{"prompt": "Q?", "chosen": "Yes."}, QA[0]], ":1", "rejected is empty"),
    ("empty-prompt", [QA[0], {"prompt": "", "chosen": "Yes.", "rejected": "No."}], ":2", "prompt is empty"),
    ("other-user-turn", [QA[0], {"prompt": "Q?", "chosen": [{"role": "user", "content": "Other?"},
                                                            {"role": "assistant", "content": "Yes."}], "rejected": "No."}],
     ":2", "chosen and rejected do not share the prompt"),
])
def test_bad_pairs_are_refused_with_file_and_line(tokenizer, tmp_path, case, rows, where, reason):
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    error = refused(tokenizer, path)
    assert f"{path}{where}: {reason}" in str(error), str(error)
    assert "1 preference row cannot be used" in str(error)
    assert "fix or remove these rows" in error.advice


def test_implicit_prompts_that_differ_are_refused(tokenizer, tmp_path):
    rows = [{"chosen": [{"role": "user", "content": "A?"}, {"role": "assistant", "content": "Yes."}],
             "rejected": [{"role": "user", "content": "B?"}, {"role": "assistant", "content": "No."}]},
            {"chosen": [{"role": "user", "content": "A?"}, {"role": "assistant", "content": "1"},
                        {"role": "user", "content": "B?"}, {"role": "assistant", "content": "2"}],
             "rejected": [{"role": "user", "content": "A?"}, {"role": "assistant", "content": "3"},
                          {"role": "user", "content": "B?"}, {"role": "assistant", "content": "4"}]}]
    path = write_jsonl(tmp_path / "implicit.jsonl", rows)
    error = refused(tokenizer, path)
    assert f"{path}:1: chosen and rejected do not share the prompt" in str(error)
    assert f"{path}:2: chosen and rejected do not share the prompt" in str(error)
    assert "(chosen and rejected do not share the prompt: 2)" in str(error)
    assert "answer the same prompt turns" in error.advice


def test_many_bad_rows_name_the_first_and_count_the_rest(tokenizer, tmp_path):
    rows = [{"prompt": f"Q{i}?", "chosen": "Same.", "rejected": "Same."} for i in range(8)] + [QA[0]]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    error = str(refused(tokenizer, path))
    assert "8 preference rows cannot be used (chosen equals rejected: 8)" in error
    assert f"{path}:5: chosen equals rejected" in error and f"{path}:6:" not in error and "and 3 more" in error


def test_bad_validation_rows_are_refused_too(tokenizer, tmp_path):
    val = write_jsonl(tmp_path / "val.jsonl", [QA[0], {"prompt": "Q?", "chosen": "", "rejected": "No."}])
    error = refused(tokenizer, write_jsonl(tmp_path / "train.jsonl", QA), val_files=[val])
    assert f"{val}:2: chosen is empty" in str(error)


def test_sharegpt_conversation_ending_with_an_answer_is_refused(tokenizer, tmp_path):
    rows = [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}],
             "chosen": {"from": "gpt", "value": "A"}, "rejected": {"from": "gpt", "value": "B"}}]
    path = write_json(tmp_path / "sharegpt.json", rows)
    assert f"{path}:1: conversations ends with the assistant's turn, not the user's" in str(refused(tokenizer, path))


def test_kto_label_that_is_not_a_boolean(tokenizer, tmp_path):
    rows = [{"prompt": "Q?", "completion": "A.", "label": True}, {"prompt": "Q?", "completion": "B.", "label": "maybe"}]
    path = write_jsonl(tmp_path / "kto.jsonl", rows)
    error = refused(tokenizer, path, stage="kto")
    assert f"{path}:2: label is 'maybe', not true or false" in str(error) and "true (a desirable answer)" in error.advice


def test_pair_stage_on_unpaired_rows(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "kto.jsonl", [{"prompt": "Q?", "completion": "A.", "label": True}])
    error = refused(tokenizer, path, stage="orpo")
    assert f"{path}: stage orpo trains on pairs" in str(error) and "use stage kto" in error.advice


def test_plain_text_pairs_without_a_prompt(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "noprompt.jsonl", [{"chosen": "Yes.", "rejected": "No."}])
    error = refused(tokenizer, path)
    assert f"{path}: chosen and rejected are plain texts and there is no 'prompt' column" in str(error)
    assert "data.columns.prompt" in error.advice


def test_sft_data_under_a_preference_stage(tokenizer, tmp_path):
    path = write_json(tmp_path / "sft.json", [{"instruction": "Q?", "output": "A."}])
    error = refused(tokenizer, path, stage="simpo")
    assert f"{path}: cannot tell the preference layout from its columns ['instruction', 'output']" in str(error)
    assert "looks like alpaca data for supervised fine-tuning" in str(error) and "stage: sft" in error.advice


def test_explicit_layout_with_a_renamed_column_that_is_missing(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", QA)
    error = refused(tokenizer, path, format="pairs", columns={"chosen": "better"})
    assert "'better' (data.columns.chosen" in str(error) and str(path) in str(error)


@pytest.mark.parametrize("stage, fmt, message", [
    ("sft", "pairs", "data.format pairs is preference data: set stage dpo, orpo, simpo"),
    ("sft", "unpaired", "data.format unpaired is preference data: set stage kto"),
    ("dpo", "text", "stage dpo reads preference data, not data.format text"),
    ("simpo", "unpaired", "stage simpo trains on pairs"),
    ("kto", "auto, streaming: true, val_files: [v.json]", "stage kto reads its pairs whole, before training: data.streaming"),
])
def test_format_must_fit_the_stage(stage, fmt, message):
    from presets.loader import PresetError, load_preset_text

    text = f"name: x\nstage: {stage}\nmodel: {{path: m}}\ndata: {{train_files: [d.json], format: {fmt}}}\n"
    with pytest.raises(PresetError) as caught:
        load_preset_text(text)
    assert message in str(caught.value)


# --------------------------------------------------------------------------- tunebench data


def test_tunebench_data_prints_the_pair_report(cli, workspace, tiny_model_dir, tmp_path):
    from engine.demo_data import write_demo_preference_dataset

    train, val = write_demo_preference_dataset(tmp_path / "train.json", tmp_path / "val.json")
    preset_file = tmp_path / "dpo.yaml"
    preset_file.write_text(f"name: demo-pairs\nstage: dpo\nmodel: {{path: '{tiny_model_dir}'}}\n"
                           f"data: {{train_files: ['{train}'], val_files: ['{val}'], max_length: 64}}\n")
    code, out = cli("data", str(preset_file))
    assert code == 0, out
    assert "stage dpo: 336 training pairs, 56 validation pairs" in out
    assert "format: pairs — detected: columns 'prompt', 'chosen' and 'rejected'" in out
    assert "chosen" in out and "rejected" in out and "prompt alone reaches max_length: 0" in out
    assert "is the capital of" in out  # a rendered example
    code, out = cli("data", str(preset_file), "--json")
    assert code == 0
    report = json.loads(out)
    assert (report["stage"], report["train"], report["eval"], report["format"]) == ("dpo", 336, 56, "pairs")
    assert report["chosen_length"]["max"] > 0 and report["examples"][0]["answers"][1][0] == "rejected"


def test_tunebench_data_names_the_bad_row(cli, tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", [QA[0], {"prompt": "Q?", "chosen": "Same.", "rejected": "Same."}])
    preset_file = tmp_path / "dpo.yaml"
    preset_file.write_text(f"name: bad\nstage: dpo\nmodel: {{path: '{tiny_model_dir}'}}\ndata: {{train_files: ['{data}']}}\n")
    code, out = cli("data", str(preset_file))
    assert code != 0 and f"{data}:2: chosen equals rejected" in out and "Traceback" not in out
