"""What workers need to reach storage, and URIs as they are recorded.

* :class:`WorkerEnv` carries credentials to Ray workers inside task arguments, never in
  ``runtime_env["env_vars"]`` (which Ray's runtime-env agent logs in plain text);
* :func:`absolute_uri` is how a URI is recorded (local paths absolute), :func:`resolve_recorded`
  how a recorded one is read back (older relative paths resolved beside the file that holds them).
"""

from __future__ import annotations

import os

from pipeline.checks import uri_scheme

_FORWARD_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
                "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE",
                "GOOGLE_APPLICATION_CREDENTIALS")


class WorkerEnv:
    """Env vars that Ray workers need to reach storage, carried to them in task arguments.

    Never put these in ``runtime_env["env_vars"]``: Ray's runtime-env agent logs that dict in plain
    text (``logs/runtime_env_agent.log`` of the session, and the dashboard on a cluster). Task and
    actor arguments are pickled into the task itself and appear in no log. ``repr`` shows the
    names only. A worker calls :meth:`apply` before it touches storage; what the cluster set for
    it (KubeRay ``envFrom``) is overridden only by the values the driver itself holds.
    """

    def __init__(self, values: dict[str, str] | None = None):
        self._values = dict(values or {})

    @property
    def names(self) -> list[str]:
        return sorted(self._values)

    def apply(self) -> None:
        os.environ.update(self._values)

    def __repr__(self) -> str:
        return f"WorkerEnv({', '.join(self.names)})"

    __str__ = __repr__


def worker_env(job) -> WorkerEnv:
    """The env a job's workers need: the names a JobSpec lists, its credential names and the standard
    cloud ones, with the driver's values for those it has."""
    creds = job.storage.credentials
    names = {*_FORWARD_ENV, *job.env, *(n for n in (creds.access_key_env, creds.secret_key_env,
                                                    creds.session_token_env, creds.token_file_env) if n)}
    return WorkerEnv({n: os.environ[n] for n in sorted(names) if n in os.environ})


def absolute_uri(uri: str) -> str:
    """``uri`` as recorded in manifests and run records: a local path made absolute (so a reader in
    another directory finds it), any other URI unchanged."""
    if uri_scheme(uri) != "file":
        return uri
    if uri.lower().startswith("file://"):
        return "file://" + os.path.abspath(os.path.expanduser(uri[len("file://"):]))
    return os.path.abspath(os.path.expanduser(uri))


def resolve_recorded(uri: str, recorded_in: str) -> str:
    """A URI read from a manifest or model.json, made usable from any working directory.

    Absolute paths and remote URIs are returned as they are. A relative local path (what releases
    before 0.1.1 recorded, relative to the directory the run was started in) is tried against the
    working directory, then against each folder above the file that recorded it.
    """
    if uri_scheme(uri) != "file" or os.path.isabs(uri.removeprefix("file://")) or uri_scheme(recorded_in) != "file":
        return uri
    rel = uri.removeprefix("file://")
    if os.path.exists(rel):
        return os.path.abspath(rel)
    base = os.path.abspath(recorded_in.removeprefix("file://"))
    while True:
        candidate = os.path.join(base, rel)
        if os.path.exists(candidate):
            return candidate
        parent = os.path.dirname(base)
        if parent == base:
            return uri
        base = parent

