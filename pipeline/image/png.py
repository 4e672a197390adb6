"""PNG bytes with provenance text chunks, and the Parquet schema of a shard of images.

The PNG writer is a small, exact encoder (signature, IHDR, the XMP packet, iTXt provenance
chunks, one IDAT, IEND) because at 32x32 PIL's per-call overhead costs more than the compression
itself. The output is a standard PNG that every reader opens; the provenance chunks are UTF-8
``iTXt`` so prompts in any language survive. ``DigitalSourceType`` carries the IPTC code for
generated media; the XMP packet (:mod:`pipeline.provenance.xmp`) says the same in the IPTC's own
properties, as an ``iTXt`` chunk with keyword ``XML:com.adobe.xmp`` right after IHDR, where the
XMP specification (part 3) and exiftool expect it. A C2PA signature, when asked for, is added
afterwards (:mod:`pipeline.provenance.c2pa`) as a ``caBX`` chunk.

    >>> png = encode_png(np.zeros((32, 32), np.uint8), {"job": "demo"})
    >>> from PIL import Image; import io
    >>> Image.open(io.BytesIO(png)).text["job"]
    'demo'
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.encode import IPTC_TRAINED_ALGORITHMIC_MEDIA, MEDIA_FILE, SOFTWARE, asset_columns
from pipeline.provenance.xmp import KEYWORD as XMP_KEYWORD

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPE = {1: 0, 3: 2, 4: 6}  # gray, RGB, RGBA


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def _itxt(key: str, value: str) -> bytes:
    # keyword \0 compression-flag compression-method language-tag \0 translated-keyword \0 text
    return _chunk(b"iTXt", key.encode("latin-1") + b"\x00\x00\x00\x00\x00" + value.encode("utf-8"))


def encode_png(pixels: np.ndarray, text: dict[str, Any] | None = None, level: int = 6, xmp: str | None = None) -> bytes:
    """Encode an HxW (gray) or HxWxC uint8 array as PNG with ``text`` as iTXt chunks (sorted keys) and, when
    given, the XMP packet ``xmp`` first."""
    if pixels.dtype != np.uint8:
        raise TypeError("pixels must be uint8")
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    h, w, c = pixels.shape
    raw = np.empty((h, w * c + 1), np.uint8)
    raw[:, 0] = 0  # filter type None on every row
    raw[:, 1:] = pixels.reshape(h, w * c)
    out = [_PNG_SIG, _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, _COLOR_TYPE[c], 0, 0, 0))]
    if xmp is not None:
        out.append(_itxt(XMP_KEYWORD, xmp))
    for key in sorted(text or {}):
        value = (text or {})[key]
        if value is not None:
            out.append(_itxt(key, str(value)))
    out.append(_chunk(b"IDAT", zlib.compress(raw.tobytes(), level)))
    out.append(_chunk(b"IEND", b""))
    return b"".join(out)


def provenance(*, job: str, item_id: str, seed: int, model_sha256: str, prompt: str | None = None,
               label: int | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The provenance text chunks every generated PNG carries."""
    text = {
        "Software": SOFTWARE,
        "DigitalSourceType": IPTC_TRAINED_ALGORITHMIC_MEDIA,
        "aigc:job": job,
        "aigc:item_id": item_id,
        "aigc:seed": seed,
        "aigc:model_sha256": model_sha256,
        "aigc:prompt": prompt,
        "aigc:label": label,
    }
    text.update(extra or {})
    return text


IMAGE_TYPE = MEDIA_FILE  # the Hugging Face `datasets` Image feature layout
SCHEMA = pa.schema(asset_columns("image", [("png_sha256", pa.string()), ("width", pa.int32()),
                                           ("height", pa.int32())]))
