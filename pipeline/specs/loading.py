"""Loading a job spec: YAML (duplicate keys refused), ``include:`` (each file read once, bounded),
``--set key=value`` overrides, validation into :class:`~pipeline.specs.schema.JobSpec` with one line
per problem, and the ``{root}/{name}/{date}/{run_id}`` templating of outputs.

    job = load_job("jobs/demo.yaml", overrides=["generate.seeds.count=100"])

Every problem becomes a :class:`~pipeline.checks.SpecError` whose lines read
``jobs/x.yaml: generate.seeds.count: must be greater than 0``.
"""

from __future__ import annotations

import copy
import datetime as _dt
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pipeline.checks import RUN_ID_RE, TEMPLATE_RE, SpecError
from pipeline.specs.schema import MODEL_ARCHS, JobSpec

_MSG_REWRITES = [
    (re.compile(r"^Input should be (greater|less) than or equal to"), r"must be \1 than or equal to"),
    (re.compile(r"^Input should be"), "must be"),
    (re.compile(r"^Extra inputs are not permitted$"), "unknown key (not part of the spec)"),
    (re.compile(r"^Field required$"), "missing required key"),
    (re.compile(r"^Value error, "), ""),
    (re.compile(r"^Assertion failed, "), ""),
    (re.compile(r"^Input tag (.*) found using arch_of\(\) does not match any of the expected tags: (.*)$"),
     r"unknown architecture \1 (registered: \2)"),
]


def _friendly(msg: str) -> str:
    for pat, rep in _MSG_REWRITES:
        msg = pat.sub(rep, msg)
    return msg


def _format_errors(source: str, err: ValidationError) -> list[str]:
    lines = []
    for e in err.errors():
        parts = e["loc"]
        # train.model is a union chosen by `arch`: pydantic puts the chosen tag into the path; leave it out.
        parts = [p for i, p in enumerate(parts) if not (p in MODEL_ARCHS and i and parts[i - 1] == "model")]
        loc = ".".join(str(p) for p in parts if not (isinstance(p, str) and p.startswith("function-")))
        msg = _friendly(e["msg"])
        # Model-level checks put the field in the message ("generate.prompts: ..."); don't repeat the loc.
        if re.match(r"^[a-z_]+(\.[a-z_0-9]+)+: ", msg):
            lines.append(f"{source}: {msg}")
        else:
            lines.append(f"{source}: {loc or '<root>'}: {msg}")
    return lines


def _duplicate_key(node: Any, path: tuple[str, ...] = ()) -> tuple[str, int] | None:
    """The first key that a YAML mapping repeats, as (key path, line), anywhere under ``node``.

    PyYAML keeps the last of two equal keys without a word; a second ``safety: {}`` would silently
    drop the blocklist above it. Walks iteratively: the nesting depth is the user's to choose.
    """
    stack = [(node, path)]
    while stack:
        n, p = stack.pop()
        if isinstance(n, yaml.MappingNode):
            seen: set[str] = set()
            for k, v in n.value:
                key = str(k.value) if isinstance(k, yaml.ScalarNode) else f"<{k.tag.rsplit(':', 1)[-1]} key>"
                if isinstance(k, yaml.ScalarNode) and key in seen and key != "<<":
                    return ".".join(p + (key,)), k.start_mark.line + 1
                seen.add(key)
                stack.append((v, p + (key,)))
        elif isinstance(n, yaml.SequenceNode):
            stack.extend((v, p + (str(i),)) for i, v in enumerate(n.value))
    return None


def _yaml_load(text: str, source: str) -> Any:
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            dup = _duplicate_key(node)
            if dup is not None:
                raise SpecError([f"{source}: line {dup[1]}: {dup[0]}: duplicate key (each key may appear once)"])
            return loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except SpecError:
        raise
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError([f"{source}: {where}invalid YAML: {problem}"]) from None
    except RecursionError:
        raise SpecError([f"{source}: invalid YAML: nested too deeply"]) from None
    except Exception as exc:  # noqa: BLE001 - PyYAML constructors raise ValueError etc. (`2020-02-30`, `!!int x`)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise SpecError([f"{source}: invalid YAML value: {first}"]) from None


def deep_merge(base: dict, over: dict) -> dict:
    """Recursively merge ``over`` into a copy of ``base`` (dicts merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _resolve_include(name: str, job_path: Path, source: str) -> Path:
    candidates = [job_path.parent / name, Path.cwd() / name, Path.cwd() / "configs" / name]
    for base in (job_path.parent, *job_path.parents):
        candidates.append(base / "configs" / name)
    for c in candidates:
        try:  # names like '/' (no stem) or 5,000 characters (ENAMETOOLONG) are just "not found"
            for cand in (c, c.with_suffix(".yaml")) if not c.suffix else (c,):
                if cand.is_file():
                    return cand
        except (OSError, ValueError):
            continue
    raise SpecError([f"{source}: include: '{name}' not found (looked beside the job and in configs/)"])


MAX_INCLUDE_FILES = 64  # distinct files one job may pull in
MAX_INCLUDES = 256  # include references in all, counting a file named twice twice


class _Includes:
    """What one load_job has read: each file parsed and merged once, however often it is included."""

    def __init__(self) -> None:
        self.loaded: dict[Path, dict] = {}
        self.files = 0
        self.references = 0

    def load(self, path: Path, source: str, seen: tuple[Path, ...]) -> dict:
        key = path.resolve()
        if key in seen:
            raise SpecError([f"{source}: include: '{path}' includes itself"])
        if key not in self.loaded:
            self.files += 1  # counted on the way down: a chain of 1,000 includes stops at the 65th
            if self.files > MAX_INCLUDE_FILES:
                raise SpecError([f"{source}: include: more than {MAX_INCLUDE_FILES} files in one job"])
            self.loaded[key] = _load_raw(path, source, seen, self)
        return self.loaded[key]


def _load_raw(path: Path, source: str, seen: tuple[Path, ...] = (), includes: _Includes | None = None) -> dict:
    includes = includes or _Includes()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([f"{source}: file not found"]) from None
    except UnicodeDecodeError as exc:
        raise SpecError([f"{source}: not UTF-8 text (byte {exc.start})"]) from None
    except OSError as exc:
        raise SpecError([f"{source}: cannot read: {exc.strerror or exc}"]) from None
    data = _yaml_load(text, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError([f"{source}: a job spec must be a YAML mapping, not {type(data).__name__}"])
    names = data.pop("include", None)
    if names is None:
        return data
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not all(isinstance(i, str) for i in names):
        raise SpecError([f"{source}: include: must be a file name or a list of file names"])
    merged: dict = {}
    for inc in names:
        includes.references += 1
        if includes.references > MAX_INCLUDES:
            raise SpecError([f"{source}: include: more than {MAX_INCLUDES} includes in one job"])
        inc_path = _resolve_include(inc, path, source)
        merged = deep_merge(merged, includes.load(inc_path, str(inc_path), seen + (path.resolve(),)))
    return deep_merge(merged, data)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=c"`` → (["a", "b"], parsed YAML scalar of c)."""
    if "=" not in item:
        raise SpecError([f"--set {item}: expected KEY=VALUE, e.g. generate.seeds.count=100"])
    key, _, raw = item.partition("=")
    key = key.strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
        raise SpecError([f"--set {item}: '{key}' is not a dotted key path"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except Exception:  # noqa: BLE001 - YAMLError, or ValueError from `!!int x` / `2020-02-30`: keep the text
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    out = copy.deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for part in path[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise SpecError([f"--set {item}: '{part}' is not a section"])
            node = nxt
        node[path[-1]] = value
    return out


def load_job(path: str | os.PathLike, overrides: list[str] | None = None) -> JobSpec:
    """Load, merge includes, apply ``--set`` overrides and validate a job spec file."""
    p = Path(path)
    source = str(path)
    data = _load_raw(p, source)
    data = apply_overrides(data, overrides or [])
    return validate_job(data, source)


def validate_job(data: Any, source: str = "<spec>") -> JobSpec:
    if not isinstance(data, dict):
        raise SpecError([f"{source}: a job spec must be a mapping, not {type(data).__name__}"])
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_format_errors(source, exc)) from None
    except (RecursionError, OverflowError) as exc:  # pathological inputs (huge ints, deep nesting)
        raise SpecError([f"{source}: cannot validate: {type(exc).__name__}"]) from None


# --------------------------------------------------------------------------------------------- templating
def today() -> str:
    return _dt.date.today().isoformat()


def check_date(value: str) -> str:
    try:
        return _dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise SpecError([f"--date {value}: expected YYYY-MM-DD"]) from None


def check_run_id(value: str) -> str:
    if not isinstance(value, str) or not RUN_ID_RE.fullmatch(value) or ".." in value:
        raise SpecError([f"--run-id {value}: use letters, digits, '-', '_' or '.' (no '/', no '..')"])
    return value


def render_output(job: JobSpec, date: str | None = None, run_id: str | None = None) -> str:
    """The generate output URI with {root}, {name}, {date}, {run_id} filled in."""
    assert job.generate is not None
    date = check_date(date) if date else today()
    run_id = check_run_id(run_id) if run_id else date
    values = {"root": job.storage.root.rstrip("/"), "name": job.name, "date": date, "run_id": run_id}
    return TEMPLATE_RE.sub(lambda m: values[m.group(1)], job.generate.output).rstrip("/")


