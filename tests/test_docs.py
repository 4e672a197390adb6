"""The docs a newcomer reads stay true."""

import re
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


def test_every_relative_link_in_the_docs_exists():
    """A newcomer follows the links of README.md and docs/: each relative target must exist (issue 13 moved
    modules; their old paths lingered in the README)."""
    root = ROOT
    pages = [root / "README.md", root / "benchmarks" / "README.md", *sorted((root / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            path = target.split("#", 1)[0]
            if not path or "://" in path or path.startswith("mailto:"):
                continue
            if not (page.parent / path).exists():
                broken.append(f"{page.relative_to(root)}: {target}")
    assert not broken, broken
