"""WAV bytes with provenance (a RIFF ``LIST/INFO`` chunk and an XMP packet in a ``_PMX`` chunk), and the
Parquet schema of a shard of audio clips.

The writer is a small, exact RIFF encoder: ``fmt `` (PCM, 16-bit), ``LIST``/``INFO`` with
``INAM`` (the item id), ``ISFT`` (the software), ``ICRD`` (the run's logical date), ``ICMT`` (one
line naming the IPTC digital source type, model and seed) and ``IKEY`` (``trainedAlgorithmicMedia``),
then the XMP packet (:mod:`pipeline.provenance.xmp`) in ``_PMX``, where the XMP specification
(part 3, "WAV") and exiftool put it, and the ``data`` chunk last. Every chunk is padded to an even
size. Python's :mod:`wave`, libsndfile (``soundfile``) and sox read it; they skip the chunks they
do not know.

    >>> wav = encode_wav(np.zeros(16, np.int16), 16000, {"INAM": "s1"}, xmp="<x/>")
    >>> import io, wave; wave.open(io.BytesIO(wav)).getnframes()
    16
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pyarrow as pa

from pipeline.encode import IPTC_TRAINED_ALGORITHMIC_MEDIA, MEDIA_FILE, SOFTWARE, asset_columns

XMP_CHUNK = b"_PMX"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return kind + struct.pack("<I", len(data)) + data + (b"\x00" if len(data) % 2 else b"")


def info_chunk(fields: dict[str, str]) -> bytes:
    """``LIST`` of type ``INFO``: four-letter ids → NUL-terminated UTF-8 text, in the order given."""
    body = b"".join(_chunk(k.encode("ascii"), str(v).encode("utf-8") + b"\x00") for k, v in fields.items())
    return _chunk(b"LIST", b"INFO" + body)


def encode_wav(pcm: np.ndarray, rate: int, info: dict[str, str] | None = None, xmp: str | None = None) -> bytes:
    """Mono 16-bit PCM samples → a WAV file, with an INFO list and an XMP packet when given."""
    samples = np.asarray(pcm, "<i2")
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)  # PCM, mono, rate, bytes/s, block align, bits
    body = [b"WAVE", _chunk(b"fmt ", fmt)]
    if info:
        body.append(info_chunk(info))
    if xmp is not None:
        body.append(_chunk(XMP_CHUNK, xmp.encode("utf-8")))
    body.append(_chunk(b"data", samples.tobytes()))
    riff = b"".join(body)
    return b"RIFF" + struct.pack("<I", len(riff)) + riff


def chunks(data: bytes) -> dict[str, bytes]:
    """A RIFF file's top-level chunks by id (the last one wins), and the INFO list's fields as ``INFO/<id>``."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    out: dict[str, bytes] = {}
    pos = 12
    while pos + 8 <= len(data):
        kind, size = data[pos:pos + 4].decode("latin-1"), struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = data[pos + 8:pos + 8 + size]
        out[kind] = body
        if kind == "LIST" and body[:4] == b"INFO":
            sub = 4
            while sub + 8 <= len(body):
                k, n = body[sub:sub + 4].decode("latin-1"), struct.unpack("<I", body[sub + 4:sub + 8])[0]
                out[f"INFO/{k}"] = body[sub + 8:sub + 8 + n].rstrip(b"\x00")
                sub += 8 + n + (n % 2)
        pos += 8 + size + (size % 2)
    return out


def info_fields(*, job: str, item_id: str, seed: int, model_sha256: str, created: str,
                prompt: str | None = None) -> dict[str, str]:
    """The INFO list every generated WAV carries (plain-text provenance any RIFF reader shows)."""
    said = f"AI-generated audio (IPTC digital source type {IPTC_TRAINED_ALGORITHMIC_MEDIA}); job {job}, item " \
           f"{item_id}, seed {seed}, model sha256 {model_sha256}"
    fields = {"INAM": item_id, "ISFT": SOFTWARE, "ICRD": created, "ICMT": said, "IKEY": "trainedAlgorithmicMedia"}
    if prompt is not None:
        fields["ISBJ"] = prompt
    return fields


AUDIO_TYPE = MEDIA_FILE  # Hugging Face `datasets` Audio layout
_COLUMNS = asset_columns("audio", [("wav_sha256", pa.string()), ("sampling_rate", pa.int32()),
                                   ("duration", pa.float32())])  # duration: seconds
_DTYPE = {pa.float32(): "float32"}  # datasets' Value names where pyarrow's own differ


def hf_features(rate: int = 16_000) -> dict:
    """The Hugging Face ``datasets`` features of the table, which it reads from the schema's ``huggingface``
    metadata: ``audio`` is an ``Audio`` feature at ``rate``, every other column a ``Value``."""
    return {name: {"_type": "Audio", "sampling_rate": rate} if name == "audio" else
            {"dtype": _DTYPE.get(t, str(t)), "_type": "Value"} for name, t in _COLUMNS}


SCHEMA = pa.schema(_COLUMNS, metadata={"huggingface": json.dumps({"info": {"features": hf_features()}})})
