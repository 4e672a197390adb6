"""`aigc run`: every stage of a job in order (train → evaluate → generate), each skipped when its
output for this exact spec already exists, with a summary of what happened.

    aigc run jobs/demo.yaml --date 2026-11-28

Without ``--address`` and ``$RAY_ADDRESS`` it starts an embedded local Ray; with either it
joins that cluster. Stages share the one Ray connection.

The evaluate stage is the quality gate: when a threshold in ``evaluate.gate`` fails, the run
stops with :class:`~pipeline.errors.GateFailed` (exit 3) before generate, so nothing of the
night is written or published. Every run, succeeded or failed, leaves its record in
``<storage.root>/runs/<job name>/<run id or date>.json``: status, the reason of a failure, each
stage's outcome, and the evaluation's figures beside the real-vs-real floor.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from pipeline.cost import estimate, summary_line
from pipeline.errors import GateFailed, PipelineError
from pipeline.evaluate import run_evaluate
from pipeline.generate import run_generate
from pipeline.layout import run_record_uri as layout_uri
from pipeline.runtime import ensure_ray
from pipeline.specs import JobSpec, check_date, check_run_id, today
from pipeline.storage import StorageError, Store, absolute_uri, package_versions
from pipeline.storage import verify as verify_uri
from pipeline.terminal import StageProgress
from pipeline.train.driver import train

RUN_FORMAT = "aigc-run/1"


@dataclass
class StageOutcome:
    stage: str
    outcome: str  # "done" | "skipped" | "failed"
    seconds: float
    outputs: list[str] = field(default_factory=list)
    detail: str = ""


@dataclass
class RunSummary:
    job: str
    date: str
    stages: list[StageOutcome] = field(default_factory=list)
    cost: str = ""  # what the run used and, with the job's price table, cost (pipeline.cost.summary_line)

    def lines(self) -> list[str]:
        out = [f"run {self.job} for {self.date}:"]
        for s in self.stages:
            out.append(f"  {s.stage:<9} {s.outcome:<8} {s.seconds:7.1f}s  {s.detail}")
            out += [f"  {'':<9} {'':<8} {'':>8}  → {o}" for o in s.outputs]
        if self.cost:
            out.append(f"  {self.cost}")
        return out


def run_record_uri(job: JobSpec, date: str, run_id: str | None = None) -> str:
    """Where a run's record goes: ``<storage.root>/runs/<job name>/<run id or date>.json``."""
    return layout_uri(job.storage.root, job.name, run_id or date)


@dataclass
class RunRecord:
    """What a run leaves behind for people and monitors, whether it succeeded or not."""

    job: str
    date: str
    run_id: str | None
    started_at: str
    status: str = "running"  # "succeeded" | "failed" | "gate_failed" | "interrupted"
    reason: str = ""
    failed_stage: str = ""
    finished_at: str = ""
    seconds: float = 0.0
    stages: list[dict[str, Any]] = field(default_factory=list)
    evaluation: dict[str, Any] | None = None
    usage: dict[str, dict[str, Any]] = field(default_factory=dict)  # per stage: CPU/GPU-s, requests, bytes, items
    cost: dict[str, Any] | None = None  # pipeline.cost.estimate of the usage with the job's price table
    spec: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"format": RUN_FORMAT, **asdict(self), "versions": package_versions()}


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _write_record(job: JobSpec, record: RunRecord, uri: str, log: Callable[[str], None]) -> None:
    """Write the run record; a storage problem here is reported, never allowed to hide the run's own outcome."""
    root, _, name = uri.rpartition("/")
    try:
        Store(root, job.storage).write_json(name, record.to_json())
    except StorageError as exc:
        log(f"warning: could not write the run record {uri}: {exc}")


def run_job(job: JobSpec, *, date: str | None = None, run_id: str | None = None, address: str | None = None,
            verify: bool = False, on_train_progress: Callable | None = None,
            log: Callable[[str], None] = print, progress: bool = True) -> RunSummary:
    """Run the job's stages in order; the first failing stage raises. ``verify`` rechecks the outputs.

    ``progress`` shows one progress display per stage (:class:`~pipeline.terminal.StageProgress`);
    ``on_train_progress`` gets every training event as well.

    A failing quality gate raises :class:`~pipeline.errors.GateFailed` before generate runs. The run
    record is written in every case.
    """
    date = check_date(date) if date else today()
    run_id = check_run_id(run_id) if run_id else None
    summary = RunSummary(job=job.name, date=date)
    record = RunRecord(job=job.name, date=date, run_id=run_id, started_at=_now(), spec=job.masked())
    record_uri = run_record_uri(job, date, run_id)
    t0 = time.monotonic()
    stage = ["setup"]  # the stage running now, for the record of a failure
    try:
        _run_stages(job, summary, record, stage, date=date, run_id=run_id, address=address, verify=verify,
                    on_train_progress=on_train_progress, log=log, progress=progress)
        record.status = "succeeded"
    except BaseException as exc:
        record.failed_stage = stage[0]
        if isinstance(exc, KeyboardInterrupt):
            record.status, record.reason = "interrupted", "interrupted (Ctrl-C or SIGINT)"
        else:
            record.status = "gate_failed" if isinstance(exc, GateFailed) else "failed"
            text = str(exc).strip().splitlines()
            record.reason = text[0] if text else type(exc).__name__
        if stage[0] not in {s["stage"] for s in record.stages}:
            record.stages.append({"stage": stage[0], "outcome": "failed", "seconds": 0.0, "outputs": [],
                                  "detail": record.reason})
        raise
    finally:
        record.finished_at, record.seconds = _now(), round(time.monotonic() - t0, 2)
        record.cost = estimate(record.usage, job.cost.model_dump() if job.cost is not None else None)
        summary.cost = summary_line(record.cost)
        _write_record(job, record, record_uri, log)
    return summary


def _add(summary: RunSummary, record: RunRecord, outcome: StageOutcome) -> None:
    summary.stages.append(outcome)
    # the record names outputs absolutely: a reader in another directory must find them
    record.stages.append({**asdict(outcome), "outputs": [absolute_uri(o) for o in outcome.outputs]})


def _run_stages(job: JobSpec, summary: RunSummary, record: RunRecord, stage: list[str], *, date: str,
                run_id: str | None, address: str | None, verify: bool, on_train_progress: Callable | None,
                log: Callable[[str], None], progress: bool) -> None:
    ensure_ray(address, dashboard=job.train is not None)  # Ray Train's controller wants the dashboard

    if job.train is not None:
        stage[0] = "train"
        t0, cpu0 = time.monotonic(), time.process_time()
        with StageProgress("train", unit="steps", enabled=progress) as bar:
            def events(event: Any) -> None:
                bar.train_event(event)
                if on_train_progress is not None:
                    on_train_progress(event)

            res = train(job, on_progress=events, address=address)
        if res.skipped:
            log(f"train: skipped, a model package for this exact train spec exists: {res.package_uri}")
            _add(summary, record, StageOutcome("train", "skipped", time.monotonic() - t0, [res.package_uri],
                                               "package for this spec exists"))
        else:
            _add(summary, record, StageOutcome("train", "done", time.monotonic() - t0, [res.package_uri],
                                               res.detail or f"{res.epochs} epochs"))
        record.usage["train"] = {"cpu_s": round(float(res.usage.get("cpu_s", 0.0)) + time.process_time() - cpu0, 2),
                                 "gpu_s": float(res.usage.get("gpu_s", 0.0)), "workers": res.usage.get("workers", 0),
                                 **({"peak_rss_mb": res.usage["peak_rss_mb"]} if "peak_rss_mb" in res.usage else {})}

    if job.evaluate is not None:
        cpu0 = time.process_time()
        try:
            _evaluate_stage(job, summary, record, stage, address=address, log=log)
        finally:  # the evaluation runs in this process: its CPU time is the driver's
            record.usage["evaluate"] = {"cpu_s": round(time.process_time() - cpu0, 2), "gpu_s": 0.0}

    if job.generate is not None:
        stage[0] = "generate"
        t0 = time.monotonic()
        res = run_generate(job, date=date, run_id=run_id, address=address, log=log, progress=progress)
        record.usage["generate"] = res.usage
        if res.skipped:
            _add(summary, record, StageOutcome("generate", "skipped", time.monotonic() - t0, [res.output],
                                               f"already complete ({res.items:,} items)"))
        else:
            _add(summary, record, StageOutcome(
                "generate", "done", time.monotonic() - t0, [res.output],
                f"{res.items:,} items, {res.bytes:,} bytes, {res.items_per_s:,.0f} items/s"
                + (f", {res.shards_skipped} shards resumed" if res.shards_skipped else "")
                + (f", {res.rejected} prompts rejected" if res.rejected else "")))
        if verify:
            stage[0] = "verify"
            t0 = time.monotonic()
            report = verify_uri(res.output, job.storage)
            _add(summary, record, StageOutcome("verify", "ok" if report.ok else "failed", time.monotonic() - t0,
                                               [res.output], f"{report.files_checked:,} files checked"))
            if not report.ok:
                raise PipelineError(f"verify: {res.output}: " + "; ".join(report.lines()[:5]))


def _evaluate_stage(job: JobSpec, summary: RunSummary, record: RunRecord, stage: list[str], *,
                    address: str | None, log: Callable[[str], None]) -> None:
    """Evaluate the model and apply the gate: a failure raises GateFailed before anything is generated."""
    assert job.evaluate is not None
    stage[0] = "evaluate"
    t0 = time.monotonic()
    res = run_evaluate(job, address=address, log=log)
    gate = job.evaluate.gate
    failures = res.gate_failures(gate)
    record.evaluation = {"result": absolute_uri(res.uri) if res.uri else res.uri, "n": res.n,
                         "model_uri": absolute_uri(res.model_uri), "model_sha256": res.model_sha256, **res.record(),
                         "gate": {**gate.model_dump(mode="json"), "passed": not failures, "failures": failures}}
    outcome = "failed" if failures else ("skipped" if res.skipped else "done")
    gate_txt = "gate FAILED" if failures else ("gate passed" if any(v is not None for v in gate.model_dump().values())
                                               else "no gate thresholds")
    _add(summary, record, StageOutcome("evaluate", outcome, time.monotonic() - t0, [res.uri or res.model_uri],
                                       f"{res.summary()}; {gate_txt}"))
    if failures:
        for line in res.lines(gate):
            log(line)
        later = ("generate did not run and nothing was published" if job.generate is not None
                 else "nothing was published")
        raise GateFailed(f"quality gate failed for {res.model_uri} at N={res.n:,}: " + "; ".join(failures)
                         + f"; {later}")
