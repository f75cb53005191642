"""Text metrics for generated answers against references: exact match, token F1, ROUGE-L, BLEU.

Exact match and token F1 follow SQuAD's answer normalisation (lower case, no punctuation, no
English articles, collapsed spaces). ROUGE-L is rouge-score's LCS F-measure over Unicode word
tokens (each CJK character a token; English tokens Porter-stemmed as rouge-score does), so answers
in any script score. BLEU is sacrebleu's (13a tokenisation, 0–100): corpus BLEU in aggregate,
smoothed sentence BLEU per sample. Everything runs offline; no torch.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from functools import lru_cache

from presets.extras import require

METRICS = ("exact_match", "token_f1", "rouge_l", "bleu")
METRIC_LABELS = {"exact_match": "exact match", "token_f1": "token F1", "rouge_l": "ROUGE-L", "bleu": "BLEU"}
METRIC_SCALE = {"exact_match": 1.0, "token_f1": 1.0, "rouge_l": 1.0, "bleu": 100.0}  # the best possible value

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_WORD = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+")


def _is_punctuation(char: str) -> bool:
    return char in string.punctuation or unicodedata.category(char).startswith("P")


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation, made Unicode-aware (punctuation of every script is dropped)."""
    text = "".join(" " if _is_punctuation(c) else c for c in text.lower())
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall over the normalised bags of words."""
    predicted = normalize_answer(prediction).split()
    expected = normalize_answer(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)  # both empty: a match; one empty: nothing in common
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


class _UnicodeTokenizer:
    """rouge-score's tokenizer interface over Unicode words (its default keeps only [a-z0-9])."""

    def __init__(self):
        from nltk.stem import porter

        self._stemmer = porter.PorterStemmer()

    def tokenize(self, text: str) -> list[str]:
        tokens = _WORD.findall(text.lower())
        # As rouge-score: stem only longer ASCII words (short ones stem badly).
        return [self._stemmer.stem(t) if len(t) > 3 and t.isascii() and t.isalpha() else t for t in tokens]


@lru_cache(maxsize=1)
def _rouge_scorer():
    require("rouge_score", "ROUGE-L in evaluation")
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=_UnicodeTokenizer())


def rouge_l(prediction: str, reference: str) -> float:
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].fmeasure)


def sentence_bleu(prediction: str, reference: str) -> float:
    require("sacrebleu", "BLEU in evaluation")
    import sacrebleu

    return float(sacrebleu.sentence_bleu(prediction, [reference]).score)


def corpus_bleu(predictions: list[str], references: list[str]) -> float:
    require("sacrebleu", "BLEU in evaluation")
    import sacrebleu

    if not predictions:
        return 0.0
    return float(sacrebleu.corpus_bleu(predictions, [references]).score)


def score_sample(prediction: str, reference: str) -> dict[str, float]:
    return {
        "exact_match": exact_match(prediction, reference),
        "token_f1": token_f1(prediction, reference),
        "rouge_l": rouge_l(prediction, reference),
        "bleu": sentence_bleu(prediction, reference),
    }


def aggregate(predictions: list[str], references: list[str], per_sample: list[dict[str, float]] | None = None) -> dict[str, float]:
    """Means of the per-sample metrics; BLEU is corpus-level, as BLEU is meant to be computed."""
    per_sample = per_sample if per_sample is not None else [score_sample(p, r) for p, r in zip(predictions, references)]
    count = len(per_sample)
    result = {name: (sum(s[name] for s in per_sample) / count if count else 0.0) for name in ("exact_match", "token_f1", "rouge_l")}
    result["bleu"] = corpus_bleu(predictions, references)
    return result
