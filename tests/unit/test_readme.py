"""The README's preset reference is generated from the schema; a stale copy fails here."""

from pathlib import Path

from presets.reference import README_BEGIN, README_END, update_readme

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_preset_reference_is_current():
    text = README.read_text(encoding="utf-8")
    assert README_BEGIN in text and README_END in text
    assert update_readme(text) == text, "README preset reference is stale: run `tunebench presets reference --update README.md`"


def test_reference_covers_every_field():
    from presets.reference import schema_markdown

    reference = schema_markdown()
    for key in ("`training.lr`", "`method.lora.target_modules`", "`data.assistant_only_loss`", "`distributed.zero_stage`", "`lambda`"):
        assert key in reference
