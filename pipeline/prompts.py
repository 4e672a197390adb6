"""Prompt files → checked prompt records, from any URI.

Formats: ``.txt`` (one prompt per line), ``.jsonl`` (``prompt``, optional ``n``, ``label``),
``.csv`` (header with ``prompt``, optional ``n``, ``label``) and ``.parquet`` (same columns).
Every record keeps its 1-based line (or row) number, which is also the stable prompt index that
item ids derive from: a rejected line never shifts the ids of the others.

A malformed record (not UTF-8, empty, too long, bad JSON, bad ``n``/``label``) is an error that
names the file and line, unless ``on_error: skip``, which records it in ``rejected`` instead.
Blocked prompts (see :mod:`pipeline.safety`) are always recorded, never silently dropped.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass

from pipeline.errors import PipelineError
from pipeline.safety import PromptFilter
from pipeline.specs import MAX_ITEMS, MAX_SHARDS, PromptsSpec, StorageSpec
from pipeline.storage import StorageError, Store

MAX_FILE_BYTES = 2 * 1024**3
BOM = "\ufeff"
BOM_BYTES = BOM.encode("utf-8")


@dataclass(frozen=True)
class Prompt:
    line: int  # 1-based line/row number in the file: the prompt's stable index
    text: str
    n: int
    label: int | None


@dataclass
class PromptSet:
    prompts: list[Prompt]
    rejected: list[dict]  # {"line", "prompt", "reason"}


def _read(uri: str, storage: StorageSpec | None) -> bytes:
    """The file's bytes, its size checked before a byte is read."""
    parent, _, name = uri.rstrip("/").rpartition("/")
    try:
        store = Store(parent or ".", storage)
        size = store.size(name)
        if size > MAX_FILE_BYTES:
            raise PipelineError(f"{uri}: {size:,} bytes is over the {MAX_FILE_BYTES:,}-byte limit for a prompts file")
        return store.read(name)
    except StorageError as exc:
        raise PipelineError(f"prompts file {exc}") from None


def _records(uri: str, data: bytes) -> list[tuple[int, dict | bytes | str]]:
    """(line, raw record) pairs; raw is bytes for text formats, dict for table formats."""
    if uri.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            # use_threads=False: in-memory reads with threads were seen aborting pyarrow 26 at exit
            # (docs/architecture.md, "Ray on a small machine")
            table = pq.read_table(pa.BufferReader(data), use_threads=False)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types
            raise PipelineError(f"{uri}: not a readable Parquet file ({type(exc).__name__})") from None
        if "prompt" not in table.column_names:
            raise PipelineError(f"{uri}: no 'prompt' column (columns: {', '.join(table.column_names)})")
        return [(i + 1, row) for i, row in enumerate(table.to_pylist())]
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if uri.endswith(".csv"):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise PipelineError(f"{uri}:{line}: not valid UTF-8") from None
        text = text.removeprefix(BOM)
        # csv's default field limit (131,072 characters) would fail the whole file on one long prompt;
        # prompts.max_length decides per line instead (the file itself is at most MAX_FILE_BYTES).
        csv.field_size_limit(max(csv.field_size_limit(), MAX_FILE_BYTES))
        try:
            reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
            if not reader.fieldnames or "prompt" not in reader.fieldnames:
                raise PipelineError(f"{uri}:1: CSV header must have a 'prompt' column")
            rows = []
            for row in reader:
                rows.append((reader.line_num, row))
            return rows
        except csv.Error as exc:
            raise PipelineError(f"{uri}:{reader.line_num}: CSV error: {exc}") from None
    if lines and lines[0].startswith(BOM_BYTES):  # a UTF-8 byte-order mark, as Windows editors write
        lines[0] = lines[0][len(BOM_BYTES):]
    return [(i + 1, raw.rstrip(b"\r")) for i, raw in enumerate(lines)]


def _whole_number(raw: dict, key: str, lo: int | None = None, hi: int | None = None) -> int:
    """``raw[key]`` as an int (from a number or a CSV string), or ValueError naming the key."""
    value = raw[key]
    if isinstance(value, str) and len(value.strip()) > 30:  # int() of 5,000 digits is slow, then refused
        raise ValueError(f"'{key}' must be a whole number" + (f" from {lo} to {hi}" if lo is not None else ""))
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: 1e400 and Infinity parse as float inf
        raise ValueError(f"'{key}' must be a whole number"
                         + (f" from {lo} to {hi}" if lo is not None else "")) from None
    out_of_range = lo is not None and hi is not None and not lo <= number <= hi
    if isinstance(value, bool) or (isinstance(value, float) and value != number) or out_of_range:
        raise ValueError(f"'{key}' must be a whole number" + (f" from {lo} to {hi}" if lo is not None else ""))
    return number


def _json_int(text: str) -> int:
    """JSON integers: refuse one of thousands of digits (int() would raise inside json with no line)."""
    if len(text) > 30:
        raise ValueError(f"number with {len(text):,} digits")
    return int(text)


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number a prompt field can take")


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parse(uri: str, line: int, raw, spec: PromptsSpec) -> Prompt:
    """One record → Prompt, or ValueError with the reason."""
    label = None
    n = spec.samples_per_prompt
    if isinstance(raw, bytes):
        if b"\x00" in raw:
            raise ValueError("contains a NUL byte")
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("not valid UTF-8") from None
        if uri.endswith(".jsonl"):
            if not raw.strip():
                raise ValueError("empty line")
            try:
                raw = json.loads(raw, parse_int=_json_int, parse_constant=_no_constant)
            except json.JSONDecodeError as exc:
                raise ValueError(f"invalid JSON ({exc.msg})") from None
            except RecursionError:
                raise ValueError("invalid JSON (nested too deeply)") from None
            except ValueError as exc:  # from the hooks: a number no prompt field can hold
                raise ValueError(f"invalid JSON ({exc})") from None
            if not isinstance(raw, dict):
                raise ValueError("each line must be a JSON object with a 'prompt'")
    if isinstance(raw, dict):
        unknown = set(raw) - {"prompt", "n", "label"}
        if unknown and not uri.endswith((".csv", ".parquet")):
            shown = ", ".join(sorted(k.encode("utf-8", "backslashreplace").decode("utf-8") for k in unknown))
            raise ValueError(f"unknown key(s) {shown[:200]}")
        text = raw.get("prompt")
        if not isinstance(text, str):
            raise ValueError("'prompt' must be a string")
        if raw.get("n") not in (None, ""):
            n = _whole_number(raw, "n", 1, 100_000)
        if raw.get("label") not in (None, ""):
            label = _whole_number(raw, "label")
    else:
        text = raw
    if "\x00" in text:
        raise ValueError("contains a NUL character")
    if not _is_unicode(text):  # JSON "\ud800": a lone surrogate no PNG, Parquet or UTF-8 writer can store
        raise ValueError("contains a lone surrogate (\\ud800-\\udfff), which is not valid Unicode text")
    text = text.strip()
    if not text:
        raise ValueError("empty prompt")
    if len(text) > spec.max_length:
        raise ValueError(f"prompt is {len(text)} characters, over the limit of {spec.max_length}")
    return Prompt(line=line, text=text, n=n, label=label)


def load_prompts(spec: PromptsSpec, storage: StorageSpec | None, *, num_classes: int | None,
                 prompt_filter: PromptFilter, labels_required: bool = True, shard_size: int = 1) -> PromptSet:
    """Read, parse, check and filter a prompts file.

    ``num_classes``: labels must lie in [0, num_classes) for a conditional model; None means the
    model takes no labels. ``labels_required``: every prompt needs a label (a label-conditioned
    model); a text-conditioned model reads the prompt, and a label is only the intended class.
    ``shard_size``: the file is refused at the line where its items would need more than
    :data:`~pipeline.specs.MAX_SHARDS` shards of this size (or more than MAX_ITEMS items).
    """
    uri = spec.uri
    data = _read(uri, storage)
    prompts: list[Prompt] = []
    rejected: list[dict] = []
    items = 0
    for line, raw in _records(uri, data):
        try:
            p = _parse(uri, line, raw, spec)
            if num_classes is not None:
                if p.label is None and labels_required:
                    raise ValueError("needs a 'label': this model is conditioned on class labels "
                                     "(use .jsonl/.csv/.parquet with a label column)")
                if p.label is not None and not 0 <= p.label < num_classes:
                    raise ValueError(f"label {p.label} is outside 0..{num_classes - 1}")
        except ValueError as exc:
            shown = raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else raw
            if spec.on_error == "fail":
                raise PipelineError(f"{uri}:{line}: {exc}") from None
            rejected.append({"line": line, "prompt": str(shown)[:1000], "reason": str(exc)})
            continue
        reason = prompt_filter.check(p.text)
        if reason:
            rejected.append({"line": line, "prompt": p.text, "reason": reason})
            continue
        items += p.n
        if items > MAX_ITEMS or -(-items // shard_size) > MAX_SHARDS:
            raise PipelineError(f"{uri}:{line}: the prompts so far ask for {items:,} items, more than "
                                f"{min(MAX_ITEMS, MAX_SHARDS * shard_size):,} ({MAX_SHARDS:,} shards of "
                                f"generate.shard_size {shard_size:,}); raise generate.shard_size or split the file")
        prompts.append(p)
    if not prompts and not rejected:
        raise PipelineError(f"{uri}: no prompts in the file")
    return PromptSet(prompts=prompts, rejected=rejected)
