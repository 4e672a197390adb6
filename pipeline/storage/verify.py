"""``aigc verify``: recompute every checksum a manifest lists; name each missing, extra or corrupt file.

A WebDataset tar whose sha256 differs is opened, and each corrupt, missing or extra member named as
``<tar>#<member>`` against the sizes and sha256 its shard index records (bytes that are no tar: one
line saying so).

With ``c2pa=True`` (``aigc verify --c2pa [--trust-anchors PEM]``) it also validates the C2PA manifest
of every signed asset with the c2pa reader, against the given trust anchors (without them: the
signatures and hard bindings only), names each asset that fails (a changed pixel breaks the
binding), and, where a run's signer could not be reproducible (a shard index then records each
signed file's canonical sha256: the file without its manifest store, see
:mod:`pipeline.provenance.c2pa`), checks that too.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pipeline.errors import PipelineError, StorageError
from pipeline.layout import asset_path
from pipeline.provenance.container import MIMES
from pipeline.specs.schema import StorageSpec
from pipeline.storage.commit import MANIFEST, MANIFEST_FORMAT, SUCCESS, sha256
from pipeline.storage.store import LOCK, Store
from pipeline.webdataset import read_tar

_CONTROL = (MANIFEST, SUCCESS, LOCK)  # files that describe a commit rather than being part of it
SIGNED = tuple(f".{ext}" for ext in MIMES)  # the asset files that carry a C2PA manifest store
MEDIA_COLUMNS = ("image", "audio")  # a Parquet part's column of signed files ({bytes, path})


@dataclass
class VerifyReport:
    uri: str
    ok: bool = True
    files_checked: int = 0
    bytes_checked: int = 0
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)  # files, and "<tar>#<member>" that no shard index lists
    corrupt: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    c2pa_checked: int = 0  # signed assets validated (files, Parquet images and tar members that are no file's copy)
    c2pa_failed: list[str] = field(default_factory=list)  # "<file or part#item>: <state> (<codes>)"
    c2pa_trust: str = ""  # "trust anchors" or "signatures only" (no --trust-anchors given)

    def lines(self) -> list[str]:
        out = [f"{self.uri}: {p}" for p in self.problems]
        out += [f"missing: {self.uri}/{p}" for p in self.missing]
        out += [f"corrupt: {self.uri}/{p}" for p in self.corrupt]
        out += [f"extra: {self.uri}/{p}" for p in self.extra]
        out += [f"c2pa: {self.uri}/{p}" for p in self.c2pa_failed]
        return out


def _check_members(rel: str, data: bytes, want: dict[str, dict]) -> list[tuple[str, str]]:
    """A tar whose sha256 differs from its index: (finding, "<tar>#<member>" or a problem line) for each
    corrupt, missing or extra member, and for bytes that are no readable tar."""
    found, why = read_tar(data)
    out: list[tuple[str, str]] = []
    if why is not None:
        out.append(("problem", f"{rel}: {why}"))
    seen: set[str] = set()
    for name, body in found:
        rec = want.get(name)
        if rec is None or name in seen:
            out.append(("extra", f"{rel}#{name}"))
        elif len(body) != rec["size"] or sha256(body) != rec["sha256"]:
            out.append(("corrupt", f"{rel}#{name}"))
        seen.add(name)
    if found or why is None:  # bytes that are no tar at all: one problem line, not a line per member
        out += [("missing", f"{rel}#{name}") for name in sorted(set(want) - seen)]
    return out


def _check_files(store: Store, expected: dict[str, dict], report: VerifyReport, present: dict[str, dict],
                 inspect=None, members: dict[str, dict] | None = None) -> None:
    """``inspect(rel, data)``, when given, sees every file that could be read (in the pool's threads);
    ``members``: a tar's members by name (size, sha256), each named when its tar's sha256 differs."""
    members = members or {}

    def check(item: tuple[str, dict]) -> tuple[str, str | None, list[tuple[str, str]]]:
        rel, rec = item
        entry = present.get(rel)
        if entry is None:
            return rel, "missing", []
        if not entry["regular"]:  # a symlink (out of the root, to /dev/zero), a FIFO: never read through it
            return rel, "not a regular file", []
        if entry["size"] != rec["size"] and ((inspect is None and rel not in members) or entry["size"] > 1 << 30):
            return rel, "corrupt", []  # a wrong size is enough, unless inspect or the members must see the file
        try:
            data = store.read(rel)
        except StorageError:
            return rel, "missing", []
        if inspect is not None:
            inspect(rel, data)
        if len(data) != rec["size"] or sha256(data) != rec["sha256"]:
            return rel, "corrupt", _check_members(rel, data, members[rel]) if rel in members else []
        return rel, None, []

    with ThreadPoolExecutor(8 if not store.local else 4) as pool:
        for rel, status, inside in pool.map(check, sorted(expected.items())):
            report.files_checked += 1
            if status == "missing":
                report.missing.append(rel)
            elif status == "corrupt":
                report.corrupt.append(rel)
            elif status is not None:
                report.problems.append(f"{rel}: {status} (a symlink, FIFO or device); an output holds plain files")
            else:
                report.bytes_checked += expected[rel]["size"]
            for kind, what in inside:
                {"problem": report.problems, "extra": report.extra, "corrupt": report.corrupt,
                 "missing": report.missing}[kind].append(what)


def _read_index(store: Store, rel: str, entry: dict) -> bytes:
    if not entry["regular"]:
        raise StorageError(f"{rel}: not a regular file (a symlink, FIFO or device)")
    if entry["size"] > 1 << 30:
        raise StorageError(f"{rel}: {entry['size']:,} bytes, too large for a shard index")
    return store.read(rel)


def verify(uri: str, spec: StorageSpec | None = None, *, c2pa: bool = False,
           trust_anchors: str | None = None) -> VerifyReport:
    """Recompute every checksum the manifest lists; name each missing, extra or corrupt file.

    Only plain files count: a listed symlink, FIFO or device is a problem, never read through. The
    manifest's counts must agree with the shards it lists (a manifest claiming 2,000 items over no
    shards fails). ``c2pa``: validate every signed asset too, against ``trust_anchors`` (PEM text).
    """
    store = Store(uri, spec)
    report = VerifyReport(uri=store.uri)
    present = store.entries()
    if MANIFEST not in present:
        report.ok = False
        report.problems.append("no manifest.json: this output was never published (or is not an aigc output)")
        return report
    if SUCCESS not in present:
        report.problems.append("no _SUCCESS marker: the publish did not finish")
    try:
        manifest = store.read_json(MANIFEST)
    except StorageError as exc:
        report.ok = False
        report.problems.append(f"manifest.json: {str(exc).rsplit(': ', 1)[-1]}")
        return report
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        report.ok = False
        report.problems.append(f"manifest.json: not an {MANIFEST_FORMAT} manifest")
        return report
    expected: dict[str, dict] = {}
    index_files: set[str] = set()
    unchecked: set[str] = set()  # files of a corrupt shard index: not checkable, but not "extra" either
    items = 0
    canonical: dict[str, str] = {}
    members: dict[str, dict] = {}  # a WebDataset tar → its members' sizes and sha256
    signed = _SignedAssets(trust_anchors, canonical, expected, present) if c2pa else None
    try:  # a hand-edited or truncated manifest is a finding, not a traceback
        expected.update(manifest.get("files", {}))
        shards = manifest.get("shards", {})
        for sid, rec in shards.items():
            rel = rec["index"]
            index_files.add(rel)
            if rel not in present:
                report.missing.append(rel)
                continue
            data = _read_index(store, rel, present[rel])
            if sha256(data) != rec["index_sha256"]:
                report.corrupt.append(rel)
                with contextlib.suppress(ValueError, TypeError, AttributeError, KeyError, RecursionError):
                    unchecked.update(json.loads(data)["files"])
                continue
            index = json.loads(data)
            if index.get("items") != rec.get("items"):
                report.problems.append(f"{rel}: holds {index.get('items')} items, the manifest says {rec.get('items')}")
            items += int(index.get("items") or 0)
            expected.update(index["files"])
            canonical.update(index.get("canonical") or {})
            members.update(index.get("members") or {})
        _check_files(store, expected, report, present, inspect=signed.inspect if signed else None, members=members)
        if signed is not None:
            signed.finish(store, report)
        _check_counts(manifest, shards, items, expected, report)
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError, StorageError) as exc:
        report.ok = False
        report.problems.append(f"manifest.json: malformed ({type(exc).__name__}: {str(exc)[:100]})")
        return report
    report.extra = sorted(set(present) - set(expected) - index_files - unchecked - set(_CONTROL)) + report.extra
    report.ok = not (report.missing or report.corrupt or report.extra or report.problems or report.c2pa_failed)
    return report


def _check_counts(manifest: dict, shards: dict, items: int, expected: dict, report: VerifyReport) -> None:
    """The manifest's own counts against what its shards hold (only where nothing was missing or corrupt,
    which would already explain a difference)."""
    counts = manifest.get("counts")
    if not isinstance(counts, dict):
        report.problems.append("manifest.json: has no counts")
        return
    if "shards" in counts and counts["shards"] != len(shards):
        report.problems.append(f"manifest.json: counts.shards says {counts['shards']:,} but it lists {len(shards):,}")
    if report.missing or report.corrupt:
        return
    if "items" in counts and counts["items"] != items:
        report.problems.append(f"manifest.json: counts.items says {counts['items']:,} but its shards hold {items:,}")
    if shards and "files" in counts:
        listed = len(expected) - len(manifest.get("files", {}))
        if counts["files"] != listed:
            report.problems.append(f"manifest.json: counts.files says {counts['files']:,} but its shards list "
                                   f"{listed:,}")


class _SignedAssets:
    """``aigc verify --c2pa``: the c2pa reader's verdict on every PNG and WAV file, and every Parquet image or
    clip and tar member that is not a copy of one of them; the canonical sha256 of each signed file against
    its shard index."""

    def __init__(self, trust_anchors: str | None, canonical: dict[str, str], expected: dict[str, dict],
                 present: dict[str, dict]):
        try:
            from pipeline.provenance.c2pa import Validator

            Validator(trust_anchors)
        except ImportError:
            raise PipelineError("aigc verify --c2pa needs the c2pa-python package (pip install c2pa-python)") \
                from None
        except Exception as exc:  # noqa: BLE001 - the library refuses anchors it cannot parse
            raise PipelineError(f"--trust-anchors: not a PEM certificate bundle the c2pa reader accepts "
                                f"({' '.join(str(exc).split())[:160]})") from None
        self.anchors, self.canonical = trust_anchors, canonical
        self.expected, self.present = expected, present  # filled by verify() before any file is inspected
        self.local = threading.local()
        self.lock = threading.Lock()
        self.failed: dict[str, str] = {}
        self.unsigned: list[str] = []
        self.parts: list[str] = []  # Parquet parts, read again at the end (never all held in memory)
        self.checked = 0

    def _validator(self):
        if not hasattr(self.local, "v"):
            from pipeline.provenance.c2pa import Validator

            self.local.v = Validator(self.anchors)
        return self.local.v

    def _judge(self, name: str, data: bytes) -> None:
        from pipeline.provenance.c2pa import has_manifest

        if not has_manifest(data):
            with self.lock:
                self.unsigned.append(name)
            return
        found = self._validator().check(data)
        with self.lock:
            self.checked += 1
            if not found.ok:
                codes = f" ({', '.join(found.failures[:4])})" if found.failures else ""
                why = "" if found.failures or found.state != "Valid" else " (signer not in the trust anchors)"
                self.failed[name] = f"{found.state}{codes}{why}"

    def inspect(self, rel: str, data: bytes) -> None:
        if rel.endswith(".parquet"):
            with self.lock:
                self.parts.append(rel)
            return
        if rel.endswith(".tar"):
            self._tar(rel, data)
            return
        if not rel.endswith(SIGNED):
            return
        from pipeline.provenance.c2pa import strip_manifest

        self._judge(rel, data)
        want = self.canonical.get(rel)
        if want is not None and sha256(strip_manifest(data)) != want:
            with self.lock:
                self.failed.setdefault(rel, "canonical sha256 differs from its shard index (the file changed "
                                            "besides its signature)")

    def _tar(self, rel: str, data: bytes) -> None:
        """A WebDataset tar's PNG and WAV members: each one that is the very file the shard also wrote (same
        sha256) is judged as that file; any other here, as ``<tar>#<member>``."""
        shard = rel.rsplit("/", 1)[-1][: -len(".tar")]
        for name, body in read_tar(data)[0]:
            if not name.endswith(SIGNED):
                continue
            stem, _, ext = name.rpartition(".")
            if not self._copy_of(asset_path(shard, stem, ext), body):
                self._judge(f"{rel}#{name}", body)

    def _copy_of(self, rel: str | None, data: bytes) -> bool:
        """Whether ``data`` is the very file ``rel`` that the manifest lists and that is present (judged as it)."""
        return rel in self.present and sha256(data) == (self.expected.get(rel) or {}).get("sha256")

    def finish(self, store: Store, report: VerifyReport) -> None:
        """The Parquet images and clips: each one that is the very file the manifest lists beside it (same
        sha256, file present) was judged as that file; any other is judged here."""
        import pyarrow.parquet as pq

        for rel in sorted(self.parts):
            try:  # use_threads=False: docs/architecture.md, "pyarrow ... can abort at interpreter exit"
                part = pq.ParquetFile(io.BytesIO(store.read(rel)))
                column = next(c for c in MEDIA_COLUMNS if c in part.schema_arrow.names)
                table = part.read(columns=["item_id", column], use_threads=False)
            except Exception:  # noqa: BLE001 - a part without a media column (text) or already reported corrupt
                continue
            for row in table.to_pylist():
                media = row.get(column) or {}
                img, path = media.get("bytes"), media.get("path")
                if not img or self._copy_of(path, img):
                    continue
                self._judge(f"{rel}#{row.get('item_id')}", img)
        report.c2pa_trust = "trust anchors" if self.anchors is not None else "signatures only"
        report.c2pa_checked = self.checked
        report.c2pa_failed = [f"{name}: {why}" for name, why in sorted(self.failed.items())]
        if self.unsigned and not self.checked:
            report.problems.append(f"c2pa: none of the {len(self.unsigned):,} assets carries a C2PA manifest (the "
                                   "run did not sign them: generate.provenance.c2pa)")
        else:
            report.c2pa_failed += [f"{name}: no C2PA manifest" for name in sorted(self.unsigned)]
