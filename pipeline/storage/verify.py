"""``aigc verify``: recompute every checksum a manifest lists; name each missing, extra or corrupt file."""

from __future__ import annotations

import contextlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pipeline.errors import StorageError
from pipeline.specs.schema import StorageSpec
from pipeline.storage.commit import MANIFEST, MANIFEST_FORMAT, SUCCESS, sha256
from pipeline.storage.store import LOCK, Store

_CONTROL = (MANIFEST, SUCCESS, LOCK)  # files that describe a commit rather than being part of it


@dataclass
class VerifyReport:
    uri: str
    ok: bool = True
    files_checked: int = 0
    bytes_checked: int = 0
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"{self.uri}: {p}" for p in self.problems]
        out += [f"missing: {self.uri}/{p}" for p in self.missing]
        out += [f"corrupt: {self.uri}/{p}" for p in self.corrupt]
        out += [f"extra: {self.uri}/{p}" for p in self.extra]
        return out


def _check_files(store: Store, expected: dict[str, dict], report: VerifyReport, present: dict[str, dict]) -> None:
    def check(item: tuple[str, dict]) -> tuple[str, str | None]:
        rel, rec = item
        entry = present.get(rel)
        if entry is None:
            return rel, "missing"
        if not entry["regular"]:  # a symlink (out of the root, to /dev/zero), a FIFO: never read through it
            return rel, "not a regular file"
        if entry["size"] != rec["size"]:
            return rel, "corrupt"
        try:
            data = store.read(rel)
        except StorageError:
            return rel, "missing"
        if len(data) != rec["size"] or sha256(data) != rec["sha256"]:
            return rel, "corrupt"
        return rel, None

    with ThreadPoolExecutor(8 if not store.local else 4) as pool:
        for rel, status in pool.map(check, sorted(expected.items())):
            report.files_checked += 1
            if status == "missing":
                report.missing.append(rel)
            elif status == "corrupt":
                report.corrupt.append(rel)
            elif status is not None:
                report.problems.append(f"{rel}: {status} (a symlink, FIFO or device); an output holds plain files")
            else:
                report.bytes_checked += expected[rel]["size"]


def _read_index(store: Store, rel: str, entry: dict) -> bytes:
    if not entry["regular"]:
        raise StorageError(f"{rel}: not a regular file (a symlink, FIFO or device)")
    if entry["size"] > 1 << 30:
        raise StorageError(f"{rel}: {entry['size']:,} bytes, too large for a shard index")
    return store.read(rel)


def verify(uri: str, spec: StorageSpec | None = None) -> VerifyReport:
    """Recompute every checksum the manifest lists; name each missing, extra or corrupt file.

    Only plain files count: a listed symlink, FIFO or device is a problem, never read through. The
    manifest's counts must agree with the shards it lists (a manifest claiming 2,000 items over no
    shards fails).
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
        _check_files(store, expected, report, present)
        _check_counts(manifest, shards, items, expected, report)
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError, StorageError) as exc:
        report.ok = False
        report.problems.append(f"manifest.json: malformed ({type(exc).__name__}: {str(exc)[:100]})")
        return report
    report.extra = sorted(set(present) - set(expected) - index_files - unchecked - set(_CONTROL))
    report.ok = not (report.missing or report.corrupt or report.extra or report.problems)
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

