"""The job spec schema: every pydantic model of a job, from ``storage`` to ``generate``.

``train.model`` is the configuration class of the model's family, chosen by ``arch`` from the
family registry (:mod:`pipeline.catalog.registry`), so an installed third-party family is a valid
``arch`` with no edit here. Which data sources, formats, gate thresholds and optional settings
apply to a model is the family's to say (:class:`~pipeline.catalog.base.Family`); this module
checks them without knowing any family by name.

The key paths named in the spec reference (``storage.root``, ``train.epochs``,
``generate.output``, ...) are the public interface; keep them stable.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import Field, field_validator, model_validator

from pipeline.catalog.registry import family_of
from pipeline.checks import Strict, check_env_name, check_name, output_overlap
from pipeline.specs.cost_schema import CostSpec
from pipeline.specs.stage_schema import (
    EvaluateSpec,
    GateSpec,
    GenerateScaling,
    GenerateSpec,
    PromptsSpec,
    SafetySpec,
    SeedsSpec,
    TextSamplingSpec,
)
from pipeline.specs.storage_schema import Credentials, StorageSpec
from pipeline.specs.train_schema import (
    MODEL_ARCHS,
    AnyModelConfig,
    CheckpointSpec,
    DataSpec,
    LMSpec,
    TrainScaling,
    TrainSpec,
)

__all__ = ["MODEL_ARCHS", "AnyModelConfig", "CheckpointSpec", "Credentials", "DataSpec", "EvaluateSpec", "GateSpec",
           "GenerateScaling", "GenerateSpec", "JobSpec", "LMSpec", "PromptsSpec", "SafetySpec", "SeedsSpec",
           "StorageSpec", "TextSamplingSpec", "TrainScaling", "TrainSpec"]


# --------------------------------------------------------------------------------------------- job
class JobSpec(Strict):
    """A whole job: any of the stages train, evaluate, generate."""

    name: str = Field(..., min_length=1, max_length=100, description="Job name: letters, digits, '-', '_', '.'.")
    storage: StorageSpec = Field(default_factory=StorageSpec, description="Where outputs, checkpoints and models go.")
    env: list[str] = Field(default_factory=list, description="Env-var names passed to the cluster on `aigc submit`.")
    train: TrainSpec | None = Field(None, description="Train stage.")
    evaluate: EvaluateSpec | None = Field(None, description="Evaluate stage.")
    generate: GenerateSpec | None = Field(None, description="Generate stage.")
    cost: CostSpec | None = Field(None, description="Price table: what a run used becomes what it cost, in the run "
                                                    "record and `aigc run`'s summary (no default prices).")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)

    @field_validator("env")
    @classmethod
    def _env(cls, v: list[str]) -> list[str]:
        for i, name in enumerate(v):
            check_env_name(name, f"item {i}: ")
        return v

    @model_validator(mode="after")
    def _cross(self) -> JobSpec:
        if self.train is None and self.evaluate is None and self.generate is None:
            raise ValueError("a job needs at least one of train, evaluate, generate")
        gen = self.generate
        if gen is not None and gen.prompts is not None and self.train is None and gen.model is None:
            raise ValueError("generate.prompts: prompts need a conditional model; set generate.model or a train stage")
        if gen is not None and gen.model is None and self.train is None:
            raise ValueError("generate.model: needed when the job has no train stage")
        if self.train is not None:
            self._check_family()
        if gen is not None:
            self._check_output_place(gen)
        return self

    def _check_family(self) -> None:
        """The settings that apply to the train stage's family: its formats, seeds, gate and options."""
        assert self.train is not None
        fam = family_of(self.train.model)
        gen, ev = self.generate, self.evaluate
        if gen is not None:
            if gen.seeds is not None and not fam.seeds:
                raise ValueError(f"generate.seeds: the {fam.arch} architecture does not generate from latent seeds; "
                                 "use generate.prompts")
            odd = [f for f in gen.formats if f not in fam.formats]
            if odd and "formats" in gen.model_fields_set:  # the default is cut to what the family writes
                raise ValueError(f"generate.formats: the {fam.arch} architecture writes {', '.join(fam.formats)} only; "
                                 f"set formats: [{', '.join(fam.formats)}]")
            for option in ("text", "provenance"):
                if getattr(gen, option) is not None and option not in fam.generate_options:
                    raise ValueError(f"generate.{option}: does not apply to the {fam.arch} architecture")
        if ev is not None:
            for key in GateSpec.model_fields:
                if getattr(ev.gate, key) is not None and key not in fam.gate_keys:
                    raise ValueError(f"evaluate.gate.{key}: does not apply to the {fam.arch} architecture (its "
                                     f"thresholds: {', '.join('evaluate.gate.' + k for k in fam.gate_keys) or 'none'})")
        if fam.check_job is not None:
            fam.check_job(self)

    def _check_output_place(self, gen: GenerateSpec) -> None:
        data = [(where, uri) for where, section in (("train.data.uri", self.train and self.train.data),
                                                    ("evaluate.data.uri", self.evaluate and self.evaluate.data),
                                                    ("evaluate.heldout.uri", self.evaluate and self.evaluate.heldout))
                if section is not None and (uri := section.uri)]
        problem = output_overlap(gen.output, self.storage.root, self.name, data)
        if problem:
            raise ValueError(f"generate.output: {problem}")

    # ------------------------------------------------------------------ helpers
    def fingerprint(self, *sections: str) -> str:
        """sha256 of the canonical JSON of the named sections (all when none)."""
        data = self.model_dump(mode="json", include=set(sections) if sections else None, exclude_none=True)
        return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def masked(self) -> dict[str, Any]:
        """The spec as plain data, safe to print or store (no secret values)."""
        return self.model_dump(mode="json", exclude_none=True)
