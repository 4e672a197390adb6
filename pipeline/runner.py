"""`aigc run`: every stage of a job in order (train → generate), each skipped when its output
for this exact spec already exists, with a summary of what happened.

    aigc run jobs/demo.yaml --date 2026-11-28

Without ``--address`` and ``$RAY_ADDRESS`` it starts an embedded local Ray; with either it
joins that cluster. Stages share the one Ray connection.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from pipeline.specs import JobSpec, check_date, check_run_id, today


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

    def lines(self) -> list[str]:
        out = [f"run {self.job} for {self.date}:"]
        for s in self.stages:
            out.append(f"  {s.stage:<9} {s.outcome:<8} {s.seconds:7.1f}s  {s.detail}")
            out += [f"  {'':<9} {'':<8} {'':>8}  → {o}" for o in s.outputs]
        return out


def run_job(job: JobSpec, *, date: str | None = None, run_id: str | None = None, address: str | None = None,
            verify: bool = False, on_train_progress: Callable | None = None,
            log: Callable[[str], None] = print) -> RunSummary:
    """Run the job's stages in order; the first failing stage raises. ``verify`` rechecks the outputs."""
    from pipeline.runtime import ensure_ray

    date = check_date(date) if date else today()
    run_id = check_run_id(run_id) if run_id else None
    summary = RunSummary(job=job.name, date=date)
    ensure_ray(address)

    if job.train is not None:
        from pipeline.train import train

        t0 = time.monotonic()
        res = train(job, on_progress=on_train_progress, address=address)
        if res.skipped:
            log(f"train: skipped, a model package for this exact train spec exists: {res.package_uri}")
            summary.stages.append(StageOutcome("train", "skipped", time.monotonic() - t0, [res.package_uri],
                                               "package for this spec exists"))
        else:
            last = res.history[-1] if res.history else {}
            detail = f"{res.epochs} epochs" + (f", loss_G {last['loss_G']:.3f} loss_D {last['loss_D']:.3f}" if last else "")
            summary.stages.append(StageOutcome("train", "done", time.monotonic() - t0, [res.package_uri], detail))

    if job.generate is not None:
        from pipeline.generate import run_generate

        t0 = time.monotonic()
        res = run_generate(job, date=date, run_id=run_id, address=address, log=log)
        if res.skipped:
            summary.stages.append(StageOutcome("generate", "skipped", time.monotonic() - t0, [res.output],
                                               f"already complete ({res.items:,} items)"))
        else:
            summary.stages.append(StageOutcome(
                "generate", "done", time.monotonic() - t0, [res.output],
                f"{res.items:,} items, {res.bytes:,} bytes, {res.items_per_s:,.0f} items/s"
                + (f", {res.shards_skipped} shards resumed" if res.shards_skipped else "")
                + (f", {res.rejected} prompts rejected" if res.rejected else "")))
        if verify:
            from pipeline.errors import PipelineError
            from pipeline.storage import verify as verify_uri

            t0 = time.monotonic()
            report = verify_uri(res.output, job.storage)
            summary.stages.append(StageOutcome("verify", "ok" if report.ok else "failed", time.monotonic() - t0,
                                               [res.output], f"{report.files_checked:,} files checked"))
            if not report.ok:
                raise PipelineError(f"verify: {res.output}: " + "; ".join(report.lines()[:5]))
    return summary
