"""The spec reference (``docs/spec-reference.md``), generated from the schema's field descriptions.

    python -m pipeline.specs > docs/spec-reference.md

A test keeps the checked-in file in sync. ``train.model`` gets one table per built-in family
(installed plugin families document their own configuration).
"""

from __future__ import annotations

import typing
from typing import Annotated, Any

from pydantic import BaseModel

from pipeline.specs.schema import JobSpec


def reference_markdown() -> str:
    """The spec reference (docs/spec-reference.md), generated from the models' field descriptions."""
    lines = ["# Job spec reference", "",
             "Generated from `pipeline/specs/schema.py` and the families' configuration classes by "
             "`python -m pipeline.specs > docs/spec-reference.md`; "
             "a test keeps it in sync. Every model is strict: an unknown key is an error.", ""]

    def models_in(ann: Any) -> list[type[BaseModel]]:
        """The spec models a field holds: one, or each member of a union (``train.model``)."""
        out = []
        for a in getattr(ann, "__args__", (ann,)):
            a = typing.get_args(a)[0] if typing.get_origin(a) is Annotated else a
            # the package's own models: an installed plugin family documents its configuration itself
            if isinstance(a, type) and issubclass(a, BaseModel) and a.__module__.startswith("pipeline."):
                out.append(a)
        return out

    def walk(model: type[BaseModel], prefix: str, label: str = "") -> None:
        rows, nested = [], []
        for name, f in model.model_fields.items():
            ann = f.annotation
            subs = models_in(ann)
            sub = subs[0] if subs else None
            path = f"{prefix}{name}"
            if f.is_required():
                default = "required"
            elif f.default_factory is not None:
                default = "see below" if sub else f"`{f.default_factory()}`"
            else:
                default = f"`{f.default}`"
            plain = str(ann)
            for old, new in (("typing.", ""), ("pydantic.types.", ""), ("<class '", ""), ("'>", ""), (" | ", " or ")):
                plain = plain.replace(old, new)
            typ = "section" if sub else plain
            rows.append(f"| `{path}` | {typ} | {default} | {f.description or ''} |")
            if len(subs) > 1:  # a union chosen by `arch`: one table per architecture
                nested += [(s, path + ".", f" (arch: {typing.get_args(s.model_fields['arch'].annotation)[0]})")
                           for s in subs]
            elif sub:
                nested.append((sub, path + ".", ""))
        doc = model.__doc__.strip().splitlines()[0] if model.__doc__ else ""
        lines.extend([f"## `{prefix.rstrip('.') or '(top level)'}`{label}", "", doc, "",
                      "| key | type | default | meaning |", "|---|---|---|---|", *rows, ""])
        for sub, p, lab in nested:
            walk(sub, p, lab)

    walk(JobSpec, "")
    return "\n".join(lines)


