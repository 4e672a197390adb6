"""`aigc`: the command line. Each command parses, loads the spec and calls one function.

    aigc validate jobs/demo.yaml
    aigc verify outputs/generated/demo/2026-11-28
"""

from __future__ import annotations

import functools
import json
import sys
from typing import Annotated, Callable, Optional

import typer
import yaml

from pipeline import specs
from pipeline.errors import USER_ERRORS, exit_code_for

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="aigc-pipeline: train a GAN with Ray Train, bulk-generate assets with Ray Data.")

JobArg = Annotated[str, typer.Argument(help="Job spec YAML, e.g. jobs/demo.yaml.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a spec key: --set generate.seeds.count=100 (repeatable).")]


def _fail(lines: list[str], code: int) -> None:
    for line in lines:
        typer.echo(line, err=True)
    raise typer.Exit(code)


def handles_errors(fn: Callable) -> Callable:
    """User-facing failures become one line per problem and a non-zero exit, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except specs.SpecError as exc:
            _fail(exc.problems, 2)
        except USER_ERRORS as exc:
            _fail([f"error: {exc}"], exit_code_for(exc))

    return wrapper


def load(job: str, overrides: list[str] | None) -> specs.JobSpec:
    return specs.load_job(job, overrides or [])


@app.command()
@handles_errors
def validate(job: JobArg, set_: SetOpt = None) -> None:
    """Check a job spec; print it resolved (secrets masked) or one line per problem (exit 2)."""
    spec = load(job, set_)
    typer.echo(f"# {job}: valid")
    typer.echo(yaml.safe_dump(spec.masked(), sort_keys=False).rstrip())


@app.command()
@handles_errors
def verify(
    uri: Annotated[str, typer.Argument(help="Output URI holding manifest.json (local path, s3://, gs://, memory://).")],
    endpoint: Annotated[Optional[str], typer.Option(help="S3 endpoint URL for S3-compatible stores.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Recompute every checksum in a manifest; exit 1 naming each missing, extra or corrupt file."""
    from pipeline.storage import verify as verify_uri

    report = verify_uri(uri, specs.StorageSpec(root=uri, endpoint=endpoint))
    if as_json:
        typer.echo(json.dumps(report.__dict__, indent=1))
    else:
        for line in report.lines():
            typer.echo(line, err=not report.ok)
        status = "OK" if report.ok else "FAILED"
        typer.echo(f"{status}: {report.files_checked} files, {report.bytes_checked:,} bytes checked at {report.uri}")
    if not report.ok:
        raise typer.Exit(1)


DateOpt = Annotated[Optional[str], typer.Option(help="Logical run date YYYY-MM-DD for {date} (default: today).")]
RunIdOpt = Annotated[Optional[str], typer.Option("--run-id", help="Run id for {run_id} (default: the date).")]
AddressOpt = Annotated[Optional[str], typer.Option(help="Ray cluster to join (default: $RAY_ADDRESS, else an embedded local Ray).")]


@app.command()
@handles_errors
def generate(job: JobArg, set_: SetOpt = None, date: DateOpt = None, run_id: RunIdOpt = None,
             address: AddressOpt = None) -> None:
    """Generate PNG + Parquet assets for a job's seeds and prompts; resumes committed shards."""
    from pipeline.generate import run_generate

    spec = load(job, set_)
    res = run_generate(spec, date=date, run_id=run_id, address=address)
    if not res.skipped:
        typer.echo(f"generate: {res.items:,} items ({res.shards} shards, {res.shards_skipped} resumed, "
                   f"{res.rejected} prompts rejected), {res.bytes:,} bytes in {res.seconds:.1f}s "
                   f"({res.items_per_s:,.0f} items/s)")
    typer.echo(f"output: {res.output}")


@app.command()
@handles_errors
def run(job: JobArg, set_: SetOpt = None, date: DateOpt = None, run_id: RunIdOpt = None,
        address: AddressOpt = None,
        verify: Annotated[bool, typer.Option("--verify", help="Recheck every output checksum at the end.")] = False) -> None:
    """Run every stage of a job in order (train → generate); stages already done for this spec are skipped."""
    from pipeline.runner import run_job

    spec = load(job, set_)
    summary = run_job(spec, date=date, run_id=run_id, address=address, verify=verify,
                      on_train_progress=lambda event: typer.echo(event.line(), err=True))
    for line in summary.lines():
        typer.echo(line)


DashOpt = Annotated[Optional[str], typer.Option(help="Ray dashboard URL, e.g. http://HEAD:8265 (default: $RAY_ADDRESS).")]


@app.command()
@handles_errors
def submit(job: JobArg, address: DashOpt = None, set_: SetOpt = None, date: DateOpt = None,
           run_id: RunIdOpt = None,
           working_dir: Annotated[Optional[str], typer.Option(help="Folder uploaded as the job's working_dir (default: current directory); must hold JOB.")] = None,
           wait: Annotated[bool, typer.Option("--wait", help="Stream the logs and exit with the job's status.")] = False) -> None:
    """Submit `aigc run JOB` to a Ray cluster through the Job Submission API (idempotent per date)."""
    from pipeline import submit as sub

    spec = load(job, set_)
    s = sub.submit(spec, job, address=address, date=date, run_id=run_id, overrides=set_ or [], working_dir=working_dir)
    verb = "submitted" if s.created else f"already submitted ({s.status})"
    typer.echo(f"{verb}: {s.submission_id}")
    if wait:
        final = sub.wait(s.submission_id, address)
        typer.echo(f"{s.submission_id}: {final}")
        raise typer.Exit(sub.exit_code(final))


@app.command()
@handles_errors
def status(submission_id: Annotated[str, typer.Argument(help="Submission id printed by `aigc submit`.")],
           address: DashOpt = None) -> None:
    """Print a submitted run's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)."""
    from pipeline import submit as sub

    typer.echo(sub.status(submission_id, address))


@app.command()
@handles_errors
def logs(submission_id: Annotated[str, typer.Argument(help="Submission id printed by `aigc submit`.")],
         address: DashOpt = None) -> None:
    """Print a submitted run's logs."""
    from pipeline import submit as sub

    typer.echo(sub.logs(submission_id, address), nl=False)


def main() -> None:
    app(prog_name="aigc")


if __name__ == "__main__":
    main()
