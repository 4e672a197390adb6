"""An imperceptible watermark in the pixels, with the ``invisible-watermark`` package.

The package's encoder refuses images under 256x256 pixels (it needs the area: ``r*c < 256*256``
raises), so smaller images, among them every demo model's 32 px output, are left unmarked and
their metadata says so (:func:`apply`). A mark is applied only when it reads back and the marked
image stays within ``min_psnr`` of the original; otherwise the image is left as it was and the
record says why. The payload is 8 bytes: ``aigc`` and the first 4 bytes of the model sha256.

The mark goes into the luma (Y) of a gray image and the chroma (U) of a colour one (of an RGBA
image, its RGB: the alpha is kept as it is, and decoding reads the RGB alone), through
float arithmetic (the package's uint8 path wraps values near 0 and 255 around), then rounded. It
is deterministic: the same pixels and payload give the same bytes.

A watermark survives what metadata does not (a screenshot, a re-encode), but it is weak evidence
on its own: it carries 64 bits, can be removed by an attacker who knows the method, and a
decoder reads noise as some payload from any image; check the ``aigc`` prefix.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MIN_SIDE = 256
MARK = b"aigc"


def payload_for(model_sha256: str) -> bytes:
    return MARK + bytes.fromhex(model_sha256[:8].ljust(8, "0"))


def _bgr(pixels: np.ndarray) -> np.ndarray:
    """The package's BGR picture of gray, RGB or RGBA pixels (alpha is not marked)."""
    px = pixels if pixels.ndim == 3 else pixels[:, :, None]
    return np.repeat(px, 3, axis=2) if px.shape[2] == 1 else px[:, :, 2::-1]  # RGB(A) -> BGR


def _scales(pixels: np.ndarray) -> list[int]:
    gray = pixels.ndim == 2 or pixels.shape[2] == 1
    return [36, 0, 0] if gray else [0, 36, 36]


def too_small(pixels: np.ndarray) -> bool:
    h, w = pixels.shape[:2]
    return h * w < MIN_SIDE * MIN_SIDE


def read(pixels: np.ndarray, method: str = "dwtDctSvd", length: int = 8) -> bytes:
    """The ``length`` bytes a decoder reads from ``pixels`` (any image reads as some bytes)."""
    from imwatermark import WatermarkDecoder

    if too_small(pixels):
        raise ValueError(f"{pixels.shape[1]}x{pixels.shape[0]} px: invisible-watermark reads images of at least "
                         f"{MIN_SIDE}x{MIN_SIDE} px only")
    return WatermarkDecoder("bytes", length * 8).decode(_bgr(pixels).astype(np.float32), method,
                                                        scales=_scales(pixels))


def apply(pixels: np.ndarray, payload: bytes, method: str = "dwtDctSvd",
          min_psnr: float = 30.0) -> tuple[np.ndarray, dict[str, Any]]:
    """(pixels, record): the marked image and ``{"applied": True, ...}``, or the image unchanged and
    ``{"applied": False, "reason": ...}``. ``pixels`` is HxW or HxWxC uint8 (C = 1, 3, or 4: RGBA, whose
    alpha is kept and whose PSNR is the RGB's)."""
    h, w = pixels.shape[:2]
    base = {"method": f"invisible-watermark {method}", "payload": payload.hex()}
    if too_small(pixels):
        return pixels, {"applied": False, "reason": f"{w}x{h} px is below the {MIN_SIDE}x{MIN_SIDE} px that "
                                                    "invisible-watermark needs"}
    from imwatermark import WatermarkEncoder

    enc = WatermarkEncoder()
    enc.set_watermark("bytes", payload)
    marked = enc.encode(_bgr(pixels).astype(np.float32), method, scales=_scales(pixels))
    marked = np.clip(np.rint(marked), 0, 255).astype(np.uint8)
    out = marked[:, :, 0] if (pixels.ndim == 2 or pixels.shape[2] == 1) else marked[:, :, 2::-1]
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        out = np.concatenate([out, pixels[:, :, 3:]], axis=2)
    out = np.ascontiguousarray(out.reshape(pixels.shape))
    colour = slice(0, 3) if pixels.ndim == 3 and pixels.shape[2] == 4 else slice(None)
    err = float(np.mean((out[..., colour].astype(np.float64) - pixels[..., colour].astype(np.float64)) ** 2))
    psnr = 99.0 if err == 0 else float(10 * np.log10(255.0 ** 2 / err))
    if read(out, method, len(payload)) != payload:
        return pixels, {"applied": False, "reason": "the mark does not read back from this image", **base}
    if psnr < min_psnr:
        return pixels, {"applied": False, "reason": f"the mark would be visible (PSNR {psnr:.1f} dB < {min_psnr:g})",
                        **base}
    return out, {"applied": True, "psnr_db": round(psnr, 1), **base}
