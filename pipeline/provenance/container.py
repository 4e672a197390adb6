"""Where a C2PA manifest store lives in each file format the pipeline signs: PNG and WAV.

* **PNG**: a ``caBX`` chunk right after IHDR (big-endian length, type, data, CRC-32 of type and data).
* **WAV** (RIFF): a ``C2PA`` chunk, which c2pa-rs appends after the last chunk (little-endian length,
  data, a pad byte when the length is odd), with the RIFF header's size grown to hold it.

Both are measured with c2pa-python 0.38.1 (c2pa-rs 0.91.3). This module finds that store, replaces
its bytes in place (the same length, so every offset and the data hash's exclusion stay right) and
takes it out again (:func:`strip_manifest`: the file byte for byte as it was before signing).

    >>> mime_of(b"RIFF\\x04\\x00\\x00\\x00WAVE")
    'audio/wav'
"""

from __future__ import annotations

import struct
import zlib

PNG_SIG = b"\x89PNG\r\n\x1a\n"
PNG_CHUNK = b"caBX"
RIFF_CHUNK = b"C2PA"
MIMES = {"png": "image/png", "wav": "audio/wav"}


def mime_of(data: bytes) -> str:
    """The media type of a file the pipeline signs, by its first bytes; ValueError for any other."""
    if data.startswith(PNG_SIG):
        return MIMES["png"]
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return MIMES["wav"]
    raise ValueError("neither a PNG nor a RIFF/WAVE file")


def png_chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    """(type, offset, total length) of every chunk of a PNG; ValueError when it is not one."""
    if not data.startswith(PNG_SIG):
        raise ValueError("not a PNG")
    out, i = [], len(PNG_SIG)
    while i + 12 <= len(data):
        (n,) = struct.unpack(">I", data[i:i + 4])
        out.append((data[i + 4:i + 8], i, n + 12))
        i += n + 12
    if i != len(data):
        raise ValueError("truncated PNG")
    return out


def riff_chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    """(id, offset, total length with its pad byte) of every top-level chunk of a RIFF/WAVE file."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    end = 8 + struct.unpack("<I", data[4:8])[0]
    if end != len(data):
        raise ValueError(f"RIFF header says {end} bytes, the file has {len(data)}")
    out, i = [], 12
    while i + 8 <= end:
        (n,) = struct.unpack("<I", data[i + 4:i + 8])
        out.append((data[i:i + 4], i, 8 + n + (n % 2)))
        i += 8 + n + (n % 2)
    if i != end:
        raise ValueError("truncated RIFF chunk")
    return out


def _chunks(data: bytes) -> tuple[list[tuple[bytes, int, int]], bytes]:
    """(chunks, the manifest chunk's id) of a PNG or a WAV."""
    if mime_of(data) == MIMES["png"]:
        return png_chunks(data), PNG_CHUNK
    return riff_chunks(data), RIFF_CHUNK


def _length(data: bytes, offset: int) -> int:
    """The data length of the chunk at ``offset`` (PNG: big-endian, before the type; RIFF: little-endian,
    after the id)."""
    if data.startswith(PNG_SIG):
        return struct.unpack(">I", data[offset:offset + 4])[0]
    return struct.unpack("<I", data[offset + 4:offset + 8])[0]


def manifest_store(data: bytes) -> tuple[int, int]:
    """(offset, length) of the manifest store's bytes; ValueError unless the file has exactly one."""
    chunks, kind = _chunks(data)
    found = [(o + 8, _length(data, o)) for k, o, _ in chunks if k == kind]
    if len(found) != 1:
        raise ValueError(f"expected one {kind.decode()} (C2PA manifest store) chunk, found {len(found)}")
    return found[0]


def replace_store(data: bytes, start: int, store: bytes) -> bytes:
    """``data`` with the manifest store at ``start`` replaced by ``store`` of the same length (a PNG's CRC
    recomputed)."""
    end = start + len(store)
    if data.startswith(PNG_SIG):
        crc = struct.pack(">I", zlib.crc32(store, zlib.crc32(PNG_CHUNK)))
        return data[:start] + store + crc + data[end + 4:]
    return data[:start] + store + data[end:]


def has_manifest(data: bytes) -> bool:
    try:
        chunks, kind = _chunks(data)
    except ValueError:
        return False
    return any(k == kind for k, _, _ in chunks)


def strip_manifest(data: bytes) -> bytes:
    """The file without its C2PA manifest store: byte for byte the file as it was before signing."""
    chunks, kind = _chunks(data)
    if kind == PNG_CHUNK:
        return PNG_SIG + b"".join(data[o:o + n] for k, o, n in chunks if k != kind)
    body = b"WAVE" + b"".join(data[o:o + n] for k, o, n in chunks if k != kind)
    return b"RIFF" + struct.pack("<I", len(body)) + body
