"""``python -m pipeline.specs``: print the spec reference (docs/spec-reference.md)."""

from pipeline.specs.reference import reference_markdown

print(reference_markdown())
