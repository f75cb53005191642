"""The test tiers import their modules by basename (no packages under tests/): two files of the same
name in different tiers cannot both be collected in one session, which only a full run shows."""

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_names_are_unique_across_tiers():
    names = Counter(path.name for path in TESTS.rglob("test_*.py"))
    assert [name for name, count in names.items() if count > 1] == []
