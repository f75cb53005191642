"""The data pipeline: files in every common format → tokens with assistant-only labels → batches.

    build_datasets(data: DataConfig, tokenizer, *, seed=42, cache_dir=None, num_proc=None, progress=None)
        -> DataBundle(train, eval, eval_examples, report): memory-mapped Arrow datasets (an
        IterableDataset for data.streaming), from the prepared-data cache when cache_dir has them
    make_collator(tokenizer, *, packing, max_length, attn_implementation=None) -> callable(list[dict]) -> dict[str, Tensor]
    resolve_chat_template(tokenizer, data) -> str
    prompt_ids(tokenizer, messages, *, chat_template=None) -> list[int]
    build_preference_datasets(preset, tokenizer, *, seed=42, progress=None) -> PreferenceBundle(train, eval,
        report, chat_template): the preference stages' prompt / chosen / rejected (kto: prompt / completion /
        label) strings, rendered with the chat template, and their PreferenceReport

Modules: loading (files, hub), formats (detection, column/role mapping, normalisation), render
(chat templates, prefix-derived label masks), collate (padding, packing), report (DataReport),
build (the pipeline), preference (preference layouts and pairs), cache (keys, entries, the build lock), progress (progress lines). torch and transformers are imported inside functions only.
"""

from engine.data.build import DataBundle, Example, build_datasets, training_samples
from engine.data.collate import batch_efficiency, make_collator, plan_packs
from engine.data.preference import PreferenceBundle, build_preference_datasets
from engine.data.render import IGNORE_INDEX, prompt_ids, resolve_chat_template
from engine.data.report import (
    DataReport, HistogramBin, LengthStats, PreferenceExample, PreferenceReport, RenderedExample,
)
from engine.errors import DataError

__all__ = [
    "training_samples",
    "DataBundle", "DataError", "DataReport", "Example", "HistogramBin", "IGNORE_INDEX", "LengthStats",
    "PreferenceBundle", "PreferenceExample", "PreferenceReport", "RenderedExample", "batch_efficiency",
    "build_datasets", "build_preference_datasets", "make_collator", "plan_packs", "prompt_ids",
    "resolve_chat_template",
]
