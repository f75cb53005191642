"""The doctor's data findings: each rule on a DataReport, and the real demo data (no findings)."""

from __future__ import annotations

import pytest

from engine.data.report import DataReport, LengthStats
from engine.doctor.data_rules import data_findings


def report(**fields) -> DataReport:
    base = dict(
        files=["train.json"], rows_read=100, train_samples=90, eval_samples=10, max_length=512,
        length=LengthStats(min=20, median=100, p95=200, max=260, mean=110.0), total_tokens=9900,
        supervised_tokens=3000, supervised_share=3000 / 9900, padding_efficiency=0.8, packing_efficiency=0.97,
        template_has_eos_after_assistant=True, end_of_turn_token="<|im_end|>", chat_template="the tokenizer's",
    )
    base.update(fields)
    return DataReport(**base)


def by_rule(findings):
    return {f.rule: f for f in findings}


def test_a_clean_report_has_no_findings():
    assert data_findings(report()) == []


def test_nothing_supervised_is_an_error_that_refuses_the_run():
    found = by_rule(data_findings(report(train_samples=0, supervised_tokens=0, dropped={"no supervised tokens": 100})))
    assert found["data_unsupervised"].severity == "error"
    assert "no supervised tokens: 100" in found["data_unsupervised"].title
    assert "data.tags.assistant" in found["data_unsupervised"].advice


def test_some_unsupervised_samples_left_out():
    found = by_rule(data_findings(report(dropped={"no supervised tokens": 20})))
    assert found["data_unsupervised"].severity == "warning" and found["data_unsupervised"].evidence["samples"] == 20
    few = by_rule(data_findings(report(dropped={"no supervised tokens": 2})))
    assert few["data_unsupervised"].severity == "info"


def test_almost_nothing_supervised_per_sample():
    found = by_rule(data_findings(report(supervised_tokens=90, supervised_share=90 / 9900)))
    assert found["data_unsupervised"].severity == "warning" and "1.0 labelled token" in found["data_unsupervised"].title


def test_low_supervised_share_is_only_info():
    found = by_rule(data_findings(report(supervised_tokens=400, supervised_share=0.04)))
    assert found["data_supervised_share"].severity == "info"


def test_truncation_share_and_length_outliers():
    found = by_rule(data_findings(report(truncated=20, truncated_share=20 / 90,
                                         length=LengthStats(min=20, median=100, p95=220, max=5000, mean=160.0))))
    truncation = found["data_truncation"]
    assert truncation.severity == "warning" and truncation.evidence["p95"] == 220 and "data.max_length" in truncation.advice
    assert found["data_length_outliers"].evidence["longest"] == 5000
    mild = by_rule(data_findings(report(truncated=2, truncated_share=2 / 90)))
    assert mild["data_truncation"].severity == "info" and "data_length_outliers" not in mild


def test_duplicates_and_overlap():
    found = by_rule(data_findings(report(duplicates=30, train_val_overlap=4)))
    assert found["data_duplicates"].severity == "warning" and found["data_duplicates"].evidence["share"] == pytest.approx(30 / 90, abs=1e-4)
    assert found["data_overlap"].severity == "warning" and "4 of 10" in found["data_overlap"].title


def test_padding_waste_suggests_packing_unless_packing():
    found = by_rule(data_findings(report(padding_efficiency=0.35, packing_efficiency=0.96)))
    assert found["data_padding"].severity == "warning" and "packing: true" in found["data_padding"].advice
    assert "data_padding" not in by_rule(data_findings(report(padding_efficiency=0.35, packing=True)))


def test_a_template_without_end_of_turn_after_the_answer():
    found = by_rule(data_findings(report(template_has_eos_after_assistant=False)))
    assert found["data_no_eos"].severity == "warning" and "never learn to stop" in found["data_no_eos"].advice
    # The text format appends eos itself: None says nothing.
    assert "data_no_eos" not in by_rule(data_findings(report(template_has_eos_after_assistant=None)))


def test_dropped_rows_by_reason():
    found = by_rule(data_findings(report(rows_read=120, dropped={"empty output": 15, "empty instruction": 5})))
    assert found["data_dropped"].severity == "warning" and "empty output: 15" in found["data_dropped"].title


def test_reads_a_report_dict_too():
    as_dict = report(duplicates=30).to_dict()
    assert "data_duplicates" in by_rule(data_findings(as_dict))


def test_the_demo_data_has_no_findings(tiny_model_dir, demo_data_file):
    from presets import load_preset

    from engine.data import build_datasets
    from engine.models import load_tokenizer

    preset = load_preset("demo", None, [f"model.path={tiny_model_dir}", f"data.train_files={demo_data_file}"])
    bundle = build_datasets(preset.data, load_tokenizer(preset.model), seed=preset.data.shuffle_seed)
    assert data_findings(bundle.report) == []


def test_a_template_that_drops_the_eos_is_caught_on_real_data(tiny_model_dir, demo_data_file):
    from presets import load_preset

    from engine.data import build_datasets
    from engine.models import load_tokenizer

    # ChatML without <|im_end|> after the assistant's turn.
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\\n{{ m['content'] }}"
        "{% if m['role'] != 'assistant' %}<|im_end|>{% endif %}\\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\\n{% endif %}"
    )
    preset = load_preset("demo", None, [f"model.path={tiny_model_dir}", f"data.train_files={demo_data_file}",
                                        f'data.chat_template="{template}"'])
    bundle = build_datasets(preset.data, load_tokenizer(preset.model), seed=preset.data.shuffle_seed)
    assert "data_no_eos" in by_rule(data_findings(bundle.report))
