"""The evaluate stage: measure a model package with its family's evaluation, and gate on it.

    aigc evaluate outputs/models/demo/<version> [--job jobs/demo.yaml] [--samples 1000]

or as the ``evaluate:`` stage of a job, which ``aigc run`` runs between train and generate: a
failing ``evaluate.gate`` raises :class:`~pipeline.errors.GateFailed` and nothing is generated.

Every family measures its models its own way (the image families: FLD, classifier score,
precision/recall and memorization beside the real-vs-real floor, :mod:`pipeline.image.evaluation`;
the byte-level GPT: held-out perplexity beside a unigram baseline). Each returns a **result**
that answers to

* ``uri``, ``model_uri``, ``model_sha256``, ``n``, ``skipped``, ``created_at``;
* ``summary()``: one line; ``lines(gate)``: the CLI table; ``record()``: what the run record keeps;
* ``gate_failures(gate)``: one phrase per failed threshold;
* ``to_json()``; ``html(gate, files)`` and ``report_files()``: its section of the HTML report.

Results live in ``<package>.eval/`` beside the package (:mod:`pipeline.layout`), so ``aigc
verify`` of the package stays clean, and a rerun with the same package and settings reads them.
"""

from __future__ import annotations

from typing import Any, Callable

from pipeline.catalog.registry import family_of, implementation, parse_config
from pipeline.errors import GateFailed, PipelineError
from pipeline.package import MODEL_JSON, load_package, train_package_uri
from pipeline.specs.schema import DataSpec, EvaluateSpec, GateSpec, JobSpec, StorageSpec
from pipeline.storage import StorageError, Store


def check_gate(gate: GateSpec, config: Any, model_uri: str) -> None:
    """Refuse gate thresholds the model's family does not measure (one line naming the key)."""
    fam = family_of(config)
    for key in GateSpec.model_fields:
        if getattr(gate, key) is not None and key not in fam.gate_keys:
            raise PipelineError(f"evaluate.gate.{key}: does not apply: the model at {model_uri} is a {fam.arch} model "
                                f"(its thresholds: {', '.join('evaluate.gate.' + k for k in fam.gate_keys) or 'none'})")


def evaluate_package(model_uri: str, spec: EvaluateSpec, *, data: DataSpec | None = None,
                     storage: StorageSpec | None = None, address: str | None = None,
                     log: Callable[[str], None] = print, **options: Any) -> Any:
    """Evaluate a model package with its family's evaluation; ``options`` go to it as they are."""
    pkg = load_package(model_uri, storage)
    check_gate(spec.gate, pkg.config, pkg.uri)
    return implementation(pkg.config).evaluate(pkg, spec, data=data, storage=storage, address=address, log=log,
                                               **options)


def enforce_gate(result: Any, gate: GateSpec) -> None:
    """Raise :class:`GateFailed` naming every failed threshold."""
    failed = result.gate_failures(gate)
    if failed:
        raise GateFailed(f"quality gate failed for {result.model_uri} at N={result.n:,}: " + "; ".join(failed))


def model_uri_for(job: JobSpec) -> str:
    """The package a job's evaluate stage judges: evaluate.model, else the train stage's, else generate.model."""
    ev = job.evaluate
    if ev is not None and ev.model:
        return ev.model
    if job.train is not None:
        return train_package_uri(job)
    if job.generate is not None and job.generate.model:
        return job.generate.model
    raise PipelineError("evaluate.model: needed when the job has neither a train stage nor generate.model")


def run_evaluate(job: JobSpec, *, model_uri: str | None = None, samples: int | None = None,
                 address: str | None = None, log: Callable[[str], None] = print) -> Any:
    """The evaluate stage of ``job`` (or the defaults when it has none). The gate is not applied here:
    call :func:`enforce_gate` with ``job.evaluate.gate``."""
    spec = job.evaluate or EvaluateSpec()
    if samples is not None:
        if samples <= 0:
            raise PipelineError(f"--samples: must be greater than 0, got {samples}")
        spec = spec.model_copy(update={"samples": samples})
    data = spec.data or (job.train.data if job.train is not None else None)
    return evaluate_package(model_uri or model_uri_for(job), spec, data=data, storage=job.storage,
                            address=address, log=log)


def read_results(package_uri: str, storage: StorageSpec | None = None, meta: dict | None = None) -> list:
    """Every evaluation stored beside a package (``meta``: its model.json, when already read)."""
    try:
        meta = meta if meta is not None else Store(package_uri, storage).read_json(MODEL_JSON)
        config = parse_config(meta["model"])
    except (StorageError, KeyError, TypeError, ValueError):
        return []
    return implementation(config).read_results(package_uri, storage)
