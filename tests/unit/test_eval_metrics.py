"""Text metrics against values computed by hand."""

from __future__ import annotations

import math

import pytest

from engine.metrics_text import aggregate, corpus_bleu, exact_match, normalize_answer, rouge_l, score_sample, sentence_bleu, token_f1


def test_normalisation_drops_case_punctuation_articles_and_spaces():
    assert normalize_answer("  The capital of France is   Paris! ") == "capital of france is paris"
    assert normalize_answer("«Ça va?» — oui.") == "ça va oui"


def test_exact_match():
    assert exact_match("The capital of France is Paris.", "the capital of france is paris") == 1.0
    assert exact_match("The capital of France is Lyon.", "The capital of France is Paris.") == 0.0


def test_token_f1_by_hand():
    # pred {paris, is, capital}; ref {capital, is, paris, france}: 3 shared, P = 1, R = 3/4.
    assert token_f1("Paris is the capital", "The capital is Paris, France") == pytest.approx(2 * 1 * 0.75 / 1.75)
    # Bags, not sets: x x y vs x y y share one x and one y: P = R = 2/3.
    assert token_f1("x x y", "x y y") == pytest.approx(2 / 3)
    assert token_f1("", "") == 1.0 and token_f1("", "paris") == 0.0 and token_f1("lyon", "paris") == 0.0


def test_rouge_l_by_hand():
    # LCS of "the cat sat on the mat" and "the cat is on the mat" is 5 of 6 tokens either way.
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # Each CJK character is a token: 5 of 7 in common, P = 1, R = 5/7.
    assert rouge_l("東京は首都", "東京は首都です") == pytest.approx(2 * (5 / 7) / (1 + 5 / 7))
    assert rouge_l("Paris", "Paris") == 1.0 and rouge_l("", "Paris") == 0.0


def test_bleu_by_hand():
    # n-gram precisions 5/6, 3/5, 2/4, 1/3; equal lengths, so no brevity penalty.
    expected = 100 * math.exp(sum(math.log(p) for p in (5 / 6, 3 / 5, 2 / 4, 1 / 3)) / 4)
    assert corpus_bleu(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(expected, abs=1e-6)
    assert sentence_bleu("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(100.0)
    assert corpus_bleu([], []) == 0.0


def test_aggregate_means_per_sample_and_corpus_bleu():
    predictions = ["The capital of France is Paris.", "The capital of Spain is Paris."]
    references = ["The capital of France is Paris.", "The capital of Spain is Madrid."]
    per_sample = [score_sample(p, r) for p, r in zip(predictions, references)]
    assert [s["exact_match"] for s in per_sample] == [1.0, 0.0]
    # Second answer: 5 normalised tokens, 4 shared (capital, of, spain, is): F1 = 0.8.
    assert per_sample[1]["token_f1"] == pytest.approx(0.8)
    result = aggregate(predictions, references)
    assert result["exact_match"] == 0.5
    assert result["token_f1"] == pytest.approx(0.9)
    assert result["rouge_l"] == pytest.approx((1.0 + per_sample[1]["rouge_l"]) / 2)
    assert result["bleu"] == pytest.approx(corpus_bleu(predictions, references))
