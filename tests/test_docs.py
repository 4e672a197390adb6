"""The docs a newcomer reads stay true."""

from pathlib import Path

from pipeline.specs.reference import reference_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_spec_reference_is_current():
    assert (ROOT / "docs" / "spec-reference.md").read_text().strip() == reference_markdown().strip(), \
        "run: .venv/bin/python -m pipeline.specs > docs/spec-reference.md"


def test_readme_quick_start_has_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = [line.strip() for line in quick.splitlines() if line.strip().startswith("make ")]
    assert commands == ["make demo", "make test"]
