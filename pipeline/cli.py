"""`aigc`: the command line. Each command parses, loads the spec and calls one function.

    aigc validate jobs/demo.yaml
    aigc verify outputs/generated/demo/2026-11-28
    aigc verify outputs/generated/demo/2026-11-28 --c2pa --trust-anchors ca.pem
"""

from __future__ import annotations

import functools
import json
from typing import Annotated, Callable, Optional

import typer
import yaml

from pipeline import specs, terminal
from pipeline.errors import USER_ERRORS, exit_code_for

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="aigc-pipeline: train a generative model (GAN, VAE, GPT or your own) with Ray Train, "
                       "bulk-generate assets with Ray Data.")

JobArg = Annotated[str, typer.Argument(help="Job spec YAML, e.g. jobs/demo.yaml.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a spec key: --set "
                                                                   "generate.seeds.count=100 (repeatable).")]


def _fail(lines: list[str], code: int) -> None:
    for line in lines:
        typer.echo(line, err=True)
    raise typer.Exit(code)


def handles_errors(fn: Callable) -> Callable:
    """User-facing failures become one line per problem and a non-zero exit, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        terminal.last_log = None
        try:
            return fn(*args, **kwargs)
        except specs.SpecError as exc:
            _fail(exc.problems, 2)
        except USER_ERRORS as exc:
            where = f" (Ray's log: {terminal.last_log})" if terminal.last_log else ""
            _fail([f"error: {exc}{where}"], exit_code_for(exc))

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
    c2pa: Annotated[bool, typer.Option("--c2pa", help="Also validate every signed asset's C2PA manifest (a changed "
                                                      "pixel fails, by name).")] = False,
    trust_anchors: Annotated[Optional[str], typer.Option("--trust-anchors", help="PEM file of the CA certificates "
                                                                                 "to trust for --c2pa (without it: "
                                                                                 "signatures and bindings only).")]
    = None,
) -> None:
    """Recompute every checksum in a manifest; exit 1 naming each missing, extra or corrupt file (and, with --c2pa,
    each asset whose content credentials do not validate)."""
    from pipeline.errors import PipelineError
    from pipeline.storage import verify as verify_uri

    anchors = None
    if trust_anchors is not None:
        if not c2pa:
            raise PipelineError("--trust-anchors: applies to --c2pa only")
        try:
            with open(trust_anchors, encoding="utf-8") as fh:
                anchors = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise PipelineError(f"--trust-anchors: cannot read {trust_anchors} ({type(exc).__name__})") from None
        if "-----BEGIN CERTIFICATE-----" not in anchors:
            raise PipelineError(f"--trust-anchors: {trust_anchors} holds no PEM certificate")
    report = verify_uri(uri, specs.StorageSpec(root=uri, endpoint=endpoint), c2pa=c2pa, trust_anchors=anchors)
    if as_json:
        typer.echo(json.dumps(report.__dict__, indent=1))
    else:
        for line in report.lines():
            typer.echo(line, err=not report.ok)
        status = "OK" if report.ok else "FAILED"
        signed = (f"; {report.c2pa_checked:,} C2PA manifests checked ({report.c2pa_trust})" if c2pa else "")
        typer.echo(f"{status}: {report.files_checked} files, {report.bytes_checked:,} bytes checked at {report.uri}"
                   f"{signed}")
    if not report.ok:
        raise typer.Exit(1)


DateOpt = Annotated[Optional[str], typer.Option(help="Logical run date YYYY-MM-DD for {date} (default: today).")]
RunIdOpt = Annotated[Optional[str], typer.Option("--run-id", help="Run id for {run_id} (default: the date).")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", help="Show Ray's own log lines and its workers' output "
                                                           "on the terminal instead of only in the log file.")]
AddressOpt = Annotated[Optional[str], typer.Option(help="Ray cluster to join (default: $RAY_ADDRESS, else an embedded "
                                                        "local Ray).")]


@app.command()
@handles_errors
def generate(job: JobArg, set_: SetOpt = None, date: DateOpt = None, run_id: RunIdOpt = None,
             address: AddressOpt = None, verbose: VerboseOpt = False) -> None:
    """Generate PNG + Parquet assets for a job's seeds and prompts; resumes committed shards."""
    from pipeline.generate import run_generate

    spec = load(job, set_)
    ident = specs.check_run_id(run_id) if run_id else (specs.check_date(date) if date else None)
    with terminal.ray_to_log(terminal.log_path(spec.storage.root, spec.name, "generate", ident), verbose):
        res = run_generate(spec, date=date, run_id=run_id, address=address)
    if not res.skipped:
        typer.echo(f"generate: {res.items:,} items ({res.shards} shards, {res.shards_skipped} resumed, "
                   f"{res.rejected} prompts rejected), {res.bytes:,} bytes in {res.seconds:.1f}s "
                   f"({res.items_per_s:,.0f} items/s)")
    typer.echo(f"output: {res.output}")
    _log_line()


def _log_line() -> None:
    if terminal.last_log:
        terminal.say(f"log: {terminal.last_log}")


@app.command()
@handles_errors
def run(job: JobArg, set_: SetOpt = None, date: DateOpt = None, run_id: RunIdOpt = None,
        address: AddressOpt = None,
        verify: Annotated[bool, typer.Option("--verify",
                                             help="Recheck every output checksum at the end.")] = False,
        verbose: VerboseOpt = False) -> None:
    """Run every stage of a job in order (train → generate); stages already done for this spec are skipped.

    Ray's own output goes to <storage.root>/runs/<job>/<run id or date>.log, beside the run record
    (docs/architecture.md, "Ray on a small machine"), unless --verbose.
    """
    from pipeline.runner import run_job

    spec = load(job, set_)
    ident = specs.check_run_id(run_id) if run_id else (specs.check_date(date) if date else specs.today())
    with terminal.ray_to_log(terminal.log_path(spec.storage.root, spec.name, "run", ident), verbose):
        summary = run_job(spec, date=date, run_id=run_id, address=address, verify=verify)
    for line in summary.lines():
        typer.echo(line)
    _log_line()


DashOpt = Annotated[Optional[str], typer.Option(help="Ray dashboard URL, e.g. http://HEAD:8265 "
                                                     "(default: $RAY_ADDRESS).")]


@app.command()
@handles_errors
def submit(job: JobArg, address: DashOpt = None, set_: SetOpt = None, date: DateOpt = None,
           run_id: RunIdOpt = None,
           working_dir: Annotated[Optional[str], typer.Option(help="Folder uploaded as the job's working_dir (default: "
                                                                   "current directory); must hold JOB.")] = None,
           wait: Annotated[bool, typer.Option("--wait",
                                              help="Stream the logs and exit with the job's status.")] = False) -> None:
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


@app.command()
@handles_errors
def train(job: JobArg, set_: SetOpt = None, verbose: VerboseOpt = False) -> None:
    """Train the job's model (GAN or text) with Ray Train, resuming from its last checkpoint; export a model package."""
    from pipeline.train.driver import train as train_job

    spec = load(job, set_)
    with terminal.ray_to_log(terminal.log_path(spec.storage.root, spec.name, "train"), verbose), \
            terminal.StageProgress("train", unit="steps") as bar:
        result = train_job(spec, on_progress=bar.train_event)
    if result.skipped:
        typer.echo(f"already trained from this spec: {result.package_uri}")
        return
    ran = f"epochs {result.epochs_run[0] + 1}-{result.epochs_run[-1] + 1}" if result.epochs_run else "no epochs"
    typer.echo(f"trained {ran} of {result.epochs} in {result.seconds:.0f}s ({result.global_step} steps; "
               f"{result.detail})")
    if result.data.get("cache"):
        built = result.data.get("cache_built_s")
        typer.echo(f"data: {result.data.get('count', 0):,} {result.data.get('unit', 'examples')}, streamed from "
                   f"{result.data['cache']} ({f'decoded into it in {built:.0f}s' if built is not None else 'reused'})")
    typer.echo(f"checkpoints: {result.run_uri}")
    typer.echo(f"model package: {result.package_uri}  (sha256 {result.model_sha256[:12]})")
    _log_line()


EndpointOpt = Annotated[Optional[str], typer.Option(help="S3 endpoint URL for S3-compatible stores.")]
JobOpt = Annotated[Optional[str], typer.Option("--job", help="Job spec whose storage settings (and evaluate stage) to "
                                                             "use.")]


def _job_or_bare(job: str | None, set_: list[str] | None, root: str, endpoint: str | None) -> specs.JobSpec:
    """The --job spec, or a minimal one (storage at ``root``, default evaluate stage) that --set can still change."""
    if job:
        return load(job, set_)
    bare = {"name": "aigc", "storage": {"root": root, **({"endpoint": endpoint} if endpoint else {})}, "evaluate": {}}
    return specs.validate_job(specs.apply_overrides(bare, set_ or []), "--set")


@app.command()
@handles_errors
def evaluate(
    model_uri: Annotated[str, typer.Argument(help="Model package URI (local path, s3://, gs://, memory://).")],
    job: JobOpt = None,
    samples: Annotated[Optional[int], typer.Option(help="Generated samples N, and held-out real images for the floor "
                                                        "(default: evaluate.samples).")] = None,
    set_: SetOpt = None,
    endpoint: EndpointOpt = None,
    address: AddressOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Measure a model: FLD, classifier score, precision/recall, memorization, each beside the real-vs-real floor.

    The result is stored in <MODEL_URI>.eval/n<N>.json and reused by a rerun. Exit 3 when a threshold in
    evaluate.gate (from --job or --set) fails.
    """
    from pipeline.evaluate import enforce_gate, run_evaluate

    spec = _job_or_bare(job, set_, model_uri, endpoint)
    # without --job the storage root is the package itself: its log goes elsewhere (terminal.log_path)
    logs = terminal.log_path(spec.storage.root if job else None, spec.name, "evaluate")
    with terminal.ray_to_log(logs, verbose):
        result = run_evaluate(spec, model_uri=model_uri, samples=samples, address=address, log=terminal.say)
    gate = spec.evaluate.gate if spec.evaluate else specs.GateSpec()
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=1))
    else:
        for line in result.lines(gate):
            typer.echo(line)
        typer.echo(f"result: {result.uri}" + ("  (reused: same package, N and settings)" if result.skipped else ""))
    enforce_gate(result, gate)
    _log_line()


@app.command()
@handles_errors
def report(
    uri: Annotated[str, typer.Argument(help="A generated output (with its gallery) or a model package.")],
    out: Annotated[Optional[str], typer.Option(help="Folder for index.html and its files (default: <URI>.report, "
                                                    "beside URI).")] = None,
    job: JobOpt = None,
    page_size: Annotated[int, typer.Option(help="Assets per gallery page.")] = 100,
    max_items: Annotated[int, typer.Option(help="Assets shown in the gallery at most (the first by item id).")] = 1000,
    endpoint: EndpointOpt = None,
) -> None:
    """Write a static HTML report: metrics beside the floor, training curves, sample grids per epoch,
    a paged gallery."""
    from pipeline.report.build import build_report

    spec = _job_or_bare(job, None, uri, endpoint)
    gate = spec.evaluate.gate if job and spec.evaluate else None
    res = build_report(uri, out, storage=spec.storage, page_size=page_size, max_items=max_items, gate=gate,
                       log=lambda line: None)
    typer.echo(f"report: {res.index}")
    typer.echo(f"  {res.evals} evaluation(s), {res.grids} epoch grid(s), {res.assets:,} of {res.assets_total:,} "
               f"assets on {res.pages} gallery page(s), {res.files} files")


def main() -> None:
    app(prog_name="aigc")


if __name__ == "__main__":
    main()
