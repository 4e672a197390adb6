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


def main() -> None:
    app(prog_name="aigc")


if __name__ == "__main__":
    main()
