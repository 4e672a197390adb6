"""What every spec model shares and every check that is not about one section: the strict base
model, URI and name rules, secret detection, and :class:`SpecError`.

Torch-free and Ray-free, like everything a spec needs: ``aigc validate`` loads only this, the
schema (:mod:`pipeline.specs`) and the families' configuration classes.
"""

from __future__ import annotations

import os
import re

from pydantic import BaseModel, ConfigDict

SCHEMES = ("file", "s3", "gs", "gcs", "memory")
_URI_RE = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
# Names and ids are checked with fullmatch: `$` would let a trailing newline through.
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
# Tokens that look nothing like an env-var name: cloud keys and the prefixes services put on theirs.
_TOKEN_RE = re.compile(
    r"(AKIA|ASIA|AIza|ghp_|gho_|ghu_|ghs_|ghr_|github_pat_|glpat-|xox[abprs]-|sk_live_|sk_test_|rk_live_|rk_test_"
    r"|pk_live_|sk-|hf_|npm_|pypi-|dop_v1_|AGE-SECRET-KEY-)[A-Za-z0-9_\-]{8,}")
# Limits on what a spec can ask to plan (the driver plans every shard before Ray starts).
MAX_SHARDS = 1_000_000
MAX_ITEMS = 10**10
TEMPLATE_RE = re.compile(r"\{([^{}]*)\}")
TEMPLATE_KEYS = ("date", "run_id", "name")


class SpecError(Exception):
    """A job spec could not be loaded; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]):
        # One problem is one line: escape newlines and other line breaks a user's value may carry.
        self.problems = [one_line(p) for p in problems] or ["invalid job spec"]
        super().__init__("\n".join(self.problems))


def one_line(text: str) -> str:
    """``text`` with every non-printable character (newline, \\u2028, NUL, ...) escaped."""
    text = str(text)
    if text.isprintable():
        return text or "invalid job spec"
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def uri_scheme(uri: str) -> str:
    """Return the scheme of a URI; plain paths are ``file``."""
    m = _URI_RE.match(uri)
    return m.group(1).lower() if m else "file"


def check_uri(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    if not value.isprintable():
        raise ValueError("must not contain control characters or line breaks")
    if "://" in value and not _URI_RE.match(value):
        raise ValueError(f"malformed URI scheme '{value.split('://')[0][:40]}://'")
    if has_userinfo(value):  # s3://KEY:SECRET@bucket: never echo it
        raise ValueError("must not carry credentials (user:password@ in the URI); name env vars in "
                         "storage.credentials instead")
    scheme = uri_scheme(value)
    if scheme not in SCHEMES:
        raise ValueError(f"unknown storage scheme '{scheme}://' "
                         f"(supported: local path, {', '.join(s + '://' for s in SCHEMES)})")
    return value


def norm_location(uri: str) -> str:
    """A URI in a comparable form ending in '/': local paths and file:// absolute and normalized."""
    if uri_scheme(uri) == "file":
        path = uri[len("file://"):] if uri.lower().startswith("file://") else uri
        return os.path.abspath(os.path.expanduser(path)).rstrip("/") + "/"
    scheme, _, rest = uri.partition("://")
    scheme = {"gcs": "gs"}.get(scheme.lower(), scheme.lower())
    return f"{scheme}://" + "/".join(p for p in rest.split("/") if p not in ("", ".")) + "/"


def has_userinfo(uri: str) -> bool:
    """``scheme://user:pass@host/...``: credentials in the authority part of a URI."""
    m = re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://([^/?#]*)", uri)
    return bool(m and "@" in m.group(1))


def segments(uri: str) -> list[str]:
    """A URI (or a rendered template, NUL for each value) as comparable path segments, scheme first."""
    return norm_location(uri).rstrip("/").split("/")


def prefix_could_match(template: list[str], path: list[str]) -> bool:
    """Whether the shorter of the two is a folder prefix of the longer for some value of the templates
    (NUL in a segment of ``template`` stands for any non-empty text without '/')."""
    return all(re.fullmatch("[^/]+".join(re.escape(part) for part in t.split("\x00")), p)
               for t, p in zip(template, path))


def output_overlap(output: str, root: str, name: str, data: list[tuple[str, str]]) -> str | None:
    """Why ``generate.output`` may not be where it is, or None.

    Generate publishes by removing files of its own that no shard lists, so a folder that also holds
    training data, models or checkpoints must never be one it writes into. ``{name}`` is filled in;
    ``{date}`` and ``{run_id}`` are checked for every value they could take. ``data``: (key path, URI)
    of the data the job reads.
    """
    rendered = output.replace("{root}", root.rstrip("/")).replace("{name}", name)
    out = segments(TEMPLATE_RE.sub("\x00", rendered))
    base = segments(root)
    if len(out) <= len(base) and prefix_could_match(out, base):
        return ("must not be storage.root or a folder above it (models/, checkpoints/ and runs/ live there); "
                "use e.g. {root}/generated/{name}/{date}")
    for folder in ("models", "checkpoints", "runs"):
        if prefix_could_match(out, base + [folder]):
            return f"must not overlap storage.root's {folder}/ folder; use e.g. {{root}}/generated/{{name}}/{{date}}"
    for where, uri in data:
        place = segments(uri)
        if prefix_could_match(out, place):
            inside = len(out) >= len(place)
            return (f"must not be {'inside' if inside else 'a folder above'} the training data ({where}); "
                    "a run owns its output folder")
    return None


def looks_like_key(value: str) -> bool:
    """A key or token where an env-var name belongs: a known token prefix, or a long mixed-case random string.

    Env-var names are words joined by ``_`` (``AWS_SECRET_ACCESS_KEY``, ``MyToken_2``); tokens are long runs
    of mixed case and digits (``ghp_…``, ``sk_live_…``, base64).
    """
    if _TOKEN_RE.match(value):
        return True
    if len(value) >= 32 and "_" not in value:
        return True
    runs = [r for r in value.split("_") if r]
    return any(len(r) >= 16 and re.search(r"[a-z]", r) and re.search(r"[A-Z]", r) and re.search(r"[0-9]", r)
               for r in runs)


def check_name(value: str, what: str = "") -> str:
    """A job name or model version: one safe path segment (no '/', no '..', no trailing newline)."""
    if not _NAME_RE.fullmatch(value) or ".." in value:
        raise ValueError(f"{what}must be letters, digits, '-', '_' or '.', starting with a letter or digit (no '..')")
    return value


def check_env_name(value: str, where: str = "") -> str:
    """An env-var NAME, or ValueError that never echoes the value (it may be a secret)."""
    if not isinstance(value, str) or looks_like_key(value) or not _ENV_NAME_RE.fullmatch(value):
        raise ValueError(f"{where}must be the NAME of an environment variable (letters, digits and _, not starting "
                         "with a digit); never put a secret itself in a spec")
    return value


_NAMED_COLOURS = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128), "grey": (128, 128, 128)}


def background_rgb(value: str) -> tuple[int, int, int]:
    """A colour of train.data.background as (r, g, b); ValueError when it is none."""
    v = value.strip().lower()
    if v in _NAMED_COLOURS:
        return _NAMED_COLOURS[v]
    m = re.fullmatch(r"#([0-9a-f]{3}|[0-9a-f]{6})", v)
    if not m:
        raise ValueError("must be white, black, gray or a #rrggbb colour")
    h = m.group(1) if len(m.group(1)) == 6 else "".join(c * 2 for c in m.group(1))
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


class Strict(BaseModel):
    """Base of every spec model: unknown keys are errors, values are validated on assignment."""

    # allow_inf_nan=False: `.inf`/`.nan` in any float field (num_cpus, lr, ...) is a spec error, not a Ray crash.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)

