"""`aigc submit`: the same `aigc run` on a Ray cluster, through Ray's Job Submission API.

    aigc submit jobs/nightly.yaml --address http://HEAD:8265 --date 2026-11-28 --wait
    aigc status aigc-nightly-2026-11-28-3f2a9c1b0d4e
    aigc logs aigc-nightly-2026-11-28-3f2a9c1b0d4e

* **Entry point.** ``python -m pipeline run <job> --date D [--run-id R] [--set k=v ...] --verify``,
  run in the uploaded ``working_dir`` (the project, without ``.git``, ``.venv``, outputs, caches
  or credential files; Ray's working_dir limit is 100 MiB, ray #45602).
* **Submission ids** are ``aigc-<job>-<run id>-<spec fingerprint[:12]>``: one id per job, date and
  exact spec, so two different jobs never collide (kuberay #1902) and re-submitting the same night
  finds the job already there. If it is running or succeeded, nothing new is submitted; if it
  failed or was stopped, the next attempt gets ``-r2``, ``-r3``, ... and the run resumes its
  committed shards and checkpoints.
* **Token auth.** Ray 2.60 enables token auth by default. The token comes from ``$RAY_AUTH_TOKEN``,
  ``$RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token`` (what ``ray get-auth-token`` prints), exactly as
  Ray's own clients look for it; when one exists and ``RAY_AUTH_MODE`` is unset, this module sets
  ``RAY_AUTH_MODE=token`` so the SDK sends ``Authorization: Bearer ...``. The token is never printed.
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.specs import JobSpec, check_date, check_run_id, today, uri_scheme

# What never goes to the cluster: VCS, environments, outputs and caches ...
_BULKY = [
    ".git", ".venv", "venv", "outputs", "__pycache__", "*.pyc", ".pytest_cache", ".hypothesis", "*.egg-info",
    "build", "dist", ".mypy_cache", ".ruff_cache", ".ipynb_checkpoints",
]
# ... and anything credential-like, at any depth (gitignore patterns, as Ray matches excludes). Files
# and folders matching these are named on stderr at submit time.
CREDENTIAL_PATTERNS = [
    ".env", ".env.*", ".envrc", "*.pem", "*.key", "*.p12", "*.pfx", "*.jks", "*.keystore", "*.token", "auth_token",
    "token.txt", "credentials", "credentials.*", ".aws", ".ssh", "id_rsa", "id_rsa.*", "id_dsa", "id_ecdsa",
    "id_ecdsa.*", "id_ed25519", "id_ed25519.*", ".netrc", "_netrc", ".git-credentials", ".pgpass",
    "secrets.yaml", "secrets.yml", "secrets.json", "secrets.toml", "*.tfvars", "*.tfvars.json", "*.tfstate",
    "*.tfstate.backup", ".kube", "kubeconfig", ".docker", ".pypirc", ".npmrc", ".yarnrc", ".s3cfg", ".boto",
    "rclone.conf", "**/.config/gcloud", "application_default_credentials.json", "service-account*.json",
    "*-sa-key.json", "*_sa_key.json", "*.gpg", ".gnupg", ".vault-token",
]
EXCLUDES = _BULKY + CREDENTIAL_PATTERNS
WORKING_DIR_LIMIT = 100 * 1024 * 1024
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


@dataclass
class Submission:
    submission_id: str
    status: str
    created: bool  # False: the same run was already submitted and is running or done


def _enable_token_auth() -> None:
    """Mirror Ray's own rule: a token that exists turns token auth on unless RAY_AUTH_MODE says otherwise."""
    if os.environ.get("RAY_AUTH_MODE"):
        return
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(path):
        os.environ["RAY_AUTH_MODE"] = "token"


def client(address: str | None):
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not address:
        raise PipelineError("--address: give the Ray dashboard URL, e.g. http://HEAD:8265 (or set $RAY_ADDRESS)")
    if not re.match(r"^https?://", address):
        raise PipelineError(f"--address {address}: the Job Submission API needs the dashboard URL, e.g. "
                            "http://HEAD:8265")
    _enable_token_auth()
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # noqa: BLE001 - ConnectionError, auth errors, ...
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "401" in text or "403" in text or "auth" in text.lower():
            raise PipelineError(f"{address}: the cluster refused the request: token authentication failed "
                                "(set RAY_AUTH_TOKEN, or put the cluster's token in ~/.ray/auth_token)") from None
        raise PipelineError(f"{address}: cannot reach the Ray Job API ({text[:200]})") from None


def submission_id(job: JobSpec, run_id: str, attempt: int = 1) -> str:
    fp = job.fingerprint()[:12]
    base = f"aigc-{job.name}-{run_id}-{fp}"
    return base if attempt == 1 else f"{base}-r{attempt}"


def _matcher(patterns: list[str]):
    """A gitignore matcher over paths relative to the working dir: Ray's own (its vendored pathspec,
    matched on the relative path as Ray's packaging does), so what we name is what Ray leaves out."""
    from ray._private.thirdparty.pathspec import PathSpec

    spec = PathSpec.from_lines("gitwildmatch", patterns)
    return lambda rel, is_dir: spec.match_file(rel)


def upload_plan(root: Path) -> tuple[int, list[str]]:
    """(bytes Ray will upload, credential-like paths left out), walking ``root`` as Ray does."""
    excluded, credential = _matcher(EXCLUDES), _matcher(CREDENTIAL_PATTERNS)
    total, left_out = 0, []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath).relative_to(root).as_posix()
        keep = []
        for d in sorted(dirnames):
            rel = d if base == "." else f"{base}/{d}"
            if credential(rel, True):
                left_out.append(rel + "/")
            elif not excluded(rel, True):
                keep.append(d)
        dirnames[:] = keep
        for f in sorted(filenames):
            rel = f if base == "." else f"{base}/{f}"
            if credential(rel, False):
                left_out.append(rel)
            elif not excluded(rel, False):
                try:
                    total += os.path.getsize(os.path.join(dirpath, f))
                except OSError:
                    pass
    return total, left_out


def runtime_env(job: JobSpec, working_dir: Path, log=None) -> dict:
    """The job's runtime_env: the project as working_dir, credential-like files left out, and no
    environment values at all (Ray's runtime-env agent logs ``env_vars`` in plain text)."""
    log = log or (lambda line: print(line, file=sys.stderr))
    size, left_out = upload_plan(working_dir)
    if size > WORKING_DIR_LIMIT:
        raise PipelineError(f"{working_dir}: {size / 2**20:.0f} MiB to upload is over Ray's 100 MiB working_dir limit; "
                            "move data out of the project folder")
    if left_out:
        shown = ", ".join(left_out[:50]) + (f" and {len(left_out) - 50} more" if len(left_out) > 50 else "")
        log(f"note: not uploaded, credential-like: {shown}")
    if job.env:
        log(f"note: env {', '.join(job.env)}: values are never uploaded (Ray logs runtime_env in plain text); "
            "the cluster must set them (KubeRay envFrom, or the environment of `ray start`)")
    return {"working_dir": str(working_dir), "excludes": list(EXCLUDES)}


def entrypoint(job_path: str, date: str | None = None, run_id: str | None = None, overrides: list[str] = ()) -> str:
    """The command a cluster runs; without ``date`` the run date is the day it starts (RayCronJob)."""
    import shlex

    parts = ["python", "-m", "pipeline", "run", job_path, "--verify"] + (["--date", date] if date else [])
    if run_id:
        parts += ["--run-id", run_id]
    for o in overrides:
        parts += ["--set", o]
    return " ".join(shlex.quote(p) for p in parts)


def submit(job: JobSpec, job_path: str, *, address: str | None, date: str | None = None, run_id: str | None = None,
           overrides: list[str] | None = None, working_dir: str | None = None) -> Submission:
    """Submit (or find) the run of ``job`` for ``date``; returns its submission id and status."""
    date = check_date(date) if date else today()
    rid = check_run_id(run_id) if run_id else date
    wd = Path(working_dir or os.getcwd()).resolve()
    jp = Path(job_path).resolve()
    try:
        rel_job = str(jp.relative_to(wd))
    except ValueError:
        raise PipelineError(f"{job_path}: the job file must be inside the working directory {wd} "
                            "that is uploaded") from None
    overrides = list(overrides or [])
    root = job.storage.root
    if uri_scheme(root) == "file" and not os.path.isabs(root.removeprefix("file://")):
        # A relative local root would land in the cluster's temporary copy of working_dir.
        overrides.append(f"storage.root={(wd / root.removeprefix('file://')).as_posix()}")
        print(f"note: storage.root '{root}' is local; the cluster writes to {wd / root} "
              "(only meaningful when the cluster shares this filesystem; use s3:// or gs:// otherwise)",
              file=sys.stderr)
    c = client(address)
    attempt = 1
    while True:
        sid = submission_id(job, rid, attempt)
        status = _status_or_none(c, sid)
        if status is None:
            break
        if status in ("PENDING", "RUNNING", "SUCCEEDED"):
            return Submission(sid, status, created=False)
        attempt += 1  # FAILED or STOPPED: a new attempt, which resumes what the last one committed
    try:
        c.submit_job(entrypoint=entrypoint(rel_job, date, run_id, overrides), submission_id=sid,
                     runtime_env=runtime_env(job, wd),
                     metadata={"aigc_job": job.name, "aigc_date": date, "aigc_run_id": rid,
                               "aigc_spec_sha256": job.fingerprint()})
    except PipelineError:
        raise
    except Exception as exc:  # noqa: BLE001
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "already exists" in text:  # a concurrent submit of the same run won the race
            return Submission(sid, _status_or_none(c, sid) or "PENDING", created=False)
        raise PipelineError(f"submit: {text[:300]}") from None
    return Submission(sid, "PENDING", created=True)


def _status_or_none(c, sid: str) -> str | None:
    try:
        st = c.get_job_status(sid)
        return str(getattr(st, "value", st))
    except Exception as exc:  # noqa: BLE001
        if "does not exist" in str(exc) or "404" in str(exc) or "not found" in str(exc).lower():
            return None
        raise PipelineError(f"status {sid}: {str(exc).strip().splitlines()[0][:200]}") from None


def status(sid: str, address: str | None) -> str:
    s = _status_or_none(client(address), sid)
    if s is None:
        raise PipelineError(f"{sid}: no such submission on this cluster")
    return s


def logs(sid: str, address: str | None) -> str:
    c = client(address)
    if _status_or_none(c, sid) is None:
        raise PipelineError(f"{sid}: no such submission on this cluster")
    return c.get_job_logs(sid)


def wait(sid: str, address: str | None, out=sys.stdout, poll_s: float = 1.0) -> str:
    """Stream the job's logs until it ends; returns its final status."""
    c = client(address)
    seen = 0
    while True:
        st = _status_or_none(c, sid)
        text = c.get_job_logs(sid)
        if len(text) > seen:
            out.write(text[seen:])
            out.flush()
            seen = len(text)
        if st in TERMINAL:
            return st
        time.sleep(poll_s)


def exit_code(final_status: str) -> int:
    return 0 if final_status == "SUCCEEDED" else 1
