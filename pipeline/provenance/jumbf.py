"""Fixed assertion salts for a C2PA-signed PNG or WAV, so that signing is byte-for-byte reproducible.

c2pa-rs gives every assertion a random 16-byte salt; :func:`resalt` replaces them in place and signs
the claim again. Layout of the manifest store (a PNG's ``caBX`` chunk, a WAV's ``C2PA`` chunk:
:mod:`pipeline.provenance.container`; measured with c2pa-python 0.38.1 / c2pa-rs 0.91.3)::

    jumb  manifest store          (jumd: type c2pa, label "c2pa")
      jumb  manifest ...          (label urn:c2pa:<uuid>; the active manifest is the last one)
        jumb  assertion store     (label c2pa.assertions)
          jumb  assertion         (jumd: toggle 0x13, label, then a private box c2sh: 16 salt bytes)
            cbor | json | ...     the assertion's content
        jumb  claim               (label c2pa.claim.v2 or c2pa.claim; a cbor box)
        jumb  signature           (label c2pa.signature; cbor box: COSE_Sign1, tag 18)

A box is a 4-byte big-endian size (header included; 1: a 64-bit size follows), a 4-byte type and its
payload. The claim lists each assertion as {url: self#jumbf=c2pa.assertions/<label>, hash}, the hash
(claim ``alg``, sha256 by default) being that of the assertion superbox's payload: its jumd box
(salt included) and content boxes, without the superbox's own 8-byte header. The COSE_Sign1 is
[protected bstr, unprotected map, nil (detached payload), signature bstr]; what is signed is the
RFC 9052 Sig_structure ["Signature1", protected, h'', claim], ``claim`` being the claim box's CBOR
payload. :func:`resalt` checks each of these rules against the input before it writes anything
(each old hash is the claim's, the old signature verifies with the certificate's key), so a layout
it does not know is a ValueError, never a file that fails to validate. Nothing changes length: the
``c2pa.hash.data`` exclusion (the manifest chunk) stays right; a PNG chunk's CRC is recomputed.
"""

from __future__ import annotations

import hashlib
from typing import Callable

from pipeline.provenance.container import manifest_store, replace_store

_COSE_ALGS = {-8: "Ed25519", -7: "ES256"}


def _boxes(buf: bytes, start: int, end: int) -> list[tuple[bytes, int, int, int]]:
    """(type, offset, header length, total length) of the boxes in buf[start:end]."""
    out, i = [], start
    while i < end:
        size, kind, head = int.from_bytes(buf[i:i + 4], "big"), bytes(buf[i + 4:i + 8]), 8
        if size == 1:
            size, head = int.from_bytes(buf[i + 8:i + 16], "big"), 16
        elif size == 0:
            size = end - i
        if i + head > end or size < head or i + size > end:
            raise ValueError(f"JUMBF: bad size {size} of box {kind!r} at {i}")
        out.append((kind, i, head, size))
        i += size
    return out


def _superbox(buf: bytes, off: int, head: int, size: int) -> tuple[str, int | None, list]:
    """(label, offset of the c2sh salt or None, content boxes) of the jumb box at off."""
    inner = _boxes(buf, off + head, off + size)
    if not inner or inner[0][0] != b"jumd" or inner[0][3] - inner[0][2] < 17:
        raise ValueError(f"JUMBF: superbox at {off} has no description box")
    _, d, dh, dn = inner[0]
    p, end = d + dh + 17, d + dn
    toggle = buf[d + dh + 16]
    label = ""
    if toggle & 2:
        nul = buf.find(b"\0", p, end)
        if nul < 0:
            raise ValueError(f"JUMBF: unterminated label at {p}")
        label, p = buf[p:nul].decode("utf-8"), nul + 1
    p += 4 * bool(toggle & 4) + 32 * bool(toggle & 8)
    salt = None
    if toggle & 16:
        private = _boxes(buf, p, end)
        if len(private) != 1 or private[0][0] != b"c2sh":
            raise ValueError(f"JUMBF: {label}: private box is not one c2sh salt box")
        if private[0][3] - private[0][2] != 16:
            raise ValueError(f"JUMBF: {label}: salt is not 16 bytes")
        salt = private[0][1] + private[0][2]
    return label, salt, inner[1:]


def _cbor(b: bytes, i: int):
    """(value, end) of the CBOR item at b[i]: definite lengths only, tags dropped, floats read as None."""
    if i >= len(b) or b[i] & 31 >= 28:
        raise ValueError(f"CBOR: truncated or unsupported item at {i}")
    mt, ai = b[i] >> 5, b[i] & 31
    n = 1 << (ai - 24) if ai >= 24 else 0
    v, i = int.from_bytes(b[i + 1:i + 1 + n], "big") if n else ai, i + 1 + n
    if mt < 2:
        return v if mt == 0 else -1 - v, i
    if mt < 4:
        if i + v > len(b):
            raise ValueError("CBOR: truncated string")
        return bytes(b[i:i + v]) if mt == 2 else bytes(b[i:i + v]).decode("utf-8"), i + v
    if mt < 6:
        out = []
        for _ in range(v * (mt - 3)):
            x, i = _cbor(b, i)
            out.append(x)
        if mt == 5 and not all(isinstance(k, (int, str)) for k in out[::2]):
            raise ValueError("CBOR: map key that is not an int or a string")
        return out if mt == 4 else dict(zip(out[::2], out[1::2])), i
    return _cbor(b, i) if mt == 6 else ({20: False, 21: True}.get(v) if n < 2 else None, i)


def _bstr(data: bytes) -> bytes:
    n = len(data)
    head = bytes([0x40 | n]) if n < 24 else b"\x58" + bytes([n]) if n < 256 else \
        b"\x59" + n.to_bytes(2, "big") if n < 65536 else b"\x5a" + n.to_bytes(4, "big")
    return head + data


def _verify(protected: dict, signature: bytes, tbs: bytes) -> None:
    """The original signature must verify with the signing certificate's key (x5chain, header 33)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, utils

    chain = protected.get(33)
    cert = chain[0] if isinstance(chain, list) else chain
    if not isinstance(cert, bytes):
        raise ValueError("COSE: no x5chain in the protected header")
    try:
        key = x509.load_der_x509_certificate(cert).public_key()
        if protected.get(1) == -8:
            key.verify(signature, tbs)
        else:
            r, s = (int.from_bytes(signature[k:k + 32], "big") for k in (0, 32))
            key.verify(utils.encode_dss_signature(r, s), tbs, ec.ECDSA(hashes.SHA256()))
    except Exception as exc:  # noqa: BLE001 - a bad certificate, another key type, InvalidSignature
        raise ValueError(f"COSE: the original signature does not verify as expected ({type(exc).__name__})") from None


def _sig_structure(protected: bytes, claim: bytes) -> bytes:
    return b"\x84\x6aSignature1" + _bstr(protected) + b"\x40" + _bstr(claim)


def resalt(signed: bytes, salt_of: Callable[[str], bytes], sign: Callable[[bytes], bytes]) -> bytes:
    """The signed PNG or WAV with every assertion salt of its active manifest replaced by salt_of(<assertion label>)
    (16 bytes), the claim's hashes of those assertions recomputed, and the claim signed again:
    sign(to_be_signed) -> signature bytes (Ed25519: 64). Same length as the input; the c2pa reader
    validates it exactly as it validated the input."""
    start, length = manifest_store(signed)
    buf = bytearray(signed[start:start + length])
    store = _boxes(buf, 0, len(buf))
    if len(store) != 1 or store[0][0] != b"jumb" or _superbox(buf, *store[0][1:])[0] != "c2pa":
        raise ValueError("manifest store: not one c2pa manifest store superbox")
    manifests = [b for b in _superbox(buf, *store[0][1:])[2] if b[0] == b"jumb"]
    if not manifests:
        raise ValueError("manifest store: no manifest")
    parts: dict = {}
    for box in _superbox(buf, *manifests[-1][1:])[2]:
        if box[0] == b"jumb":
            parts.setdefault(_superbox(buf, *box[1:])[0], box)
    claim_label = "c2pa.claim.v2" if "c2pa.claim.v2" in parts else "c2pa.claim"
    if not {"c2pa.assertions", claim_label, "c2pa.signature"} <= parts.keys():
        raise ValueError(f"active manifest: missing parts (has {sorted(parts)})")

    def cbor_box(label: str) -> tuple[int, int]:
        content = _superbox(buf, *parts[label][1:])[2]
        if len(content) != 1 or content[0][0] != b"cbor":
            raise ValueError(f"{label}: not one cbor box")
        return content[0][1] + content[0][2], content[0][1] + content[0][3]

    # the signature first: the original must verify over the claim as it is
    c0, c1 = cbor_box(claim_label)
    s0, s1 = cbor_box("c2pa.signature")
    if buf[s0:s0 + 2] != b"\xd2\x84":
        raise ValueError("signature: not a tagged (18) COSE_Sign1 array")
    items, i = [], s0 + 2
    for _ in range(4):
        value, i = _cbor(buf, i)
        items.append(value)
    protected, unprotected, payload, old_sig = items
    if i != s1 or payload is not None or not isinstance(unprotected, dict) or not isinstance(old_sig, bytes):
        raise ValueError("signature: not a COSE_Sign1 with a detached payload")
    if {"sigTst", "sigTst2"} & unprotected.keys():
        raise ValueError("signature: has a timestamp (sigTst); resalting would need a new one")
    header = _cbor(protected, 0)[0]
    if not isinstance(header, dict) or header.get(1) not in _COSE_ALGS:
        raise ValueError(f"signature: unsupported COSE algorithm {header.get(1) if isinstance(header, dict) else '?'}")
    old_claim = bytes(buf[c0:c1])
    _verify(header, old_sig, _sig_structure(protected, old_claim))
    if any(h(old_claim).digest() in buf for h in (hashlib.sha256, hashlib.sha384, hashlib.sha512)):
        raise ValueError("the claim's hash is held somewhere in the manifest store")

    claim, end = _cbor(buf, c0)
    if end != c1 or not isinstance(claim, dict):
        raise ValueError("claim: not one CBOR map")
    refs = {ref["url"].rpartition("/")[2]: ref for key in ("created_assertions", "gathered_assertions", "assertions")
            for ref in claim.get(key, []) if isinstance(ref, dict) and isinstance(ref.get("url"), str)}
    changes = []
    for kind, off, head, size in _superbox(buf, *parts["c2pa.assertions"][1:])[2]:
        if kind != b"jumb":
            raise ValueError(f"assertion store: a {kind!r} box that is not an assertion superbox")
        label, salt, _ = _superbox(buf, off, head, size)
        ref = refs.get(label)
        if ref is None:
            raise ValueError(f"assertion {label} is not in the claim")
        alg = ref.get("alg", claim.get("alg", "sha256"))
        if alg not in ("sha256", "sha384", "sha512"):
            raise ValueError(f"assertion {label}: unknown hash {alg}")
        if hashlib.new(alg, buf[off + head:off + size]).digest() != ref.get("hash"):
            raise ValueError(f"assertion {label}: the claim's hash is not that of the box payload")
        if salt is None:
            continue
        new = salt_of(label)
        if len(new) != 16:
            raise ValueError(f"salt_of({label!r}) gave {len(new)} bytes, not 16")
        buf[salt:salt + 16] = new
        changes.append((ref["hash"], hashlib.new(alg, buf[off + head:off + size]).digest()))
    for old, new in changes:
        at = buf.find(_bstr(old), c0, c1)
        if at < 0 or buf.count(old) != 1:
            raise ValueError("an assertion's hash is held somewhere other than the claim")
        at += len(_bstr(old)) - len(old)
        buf[at:at + len(old)] = new

    new_sig = sign(_sig_structure(protected, bytes(buf[c0:c1])))
    if len(new_sig) != len(old_sig):
        raise ValueError(f"sign returned {len(new_sig)} bytes, the signature has {len(old_sig)}")
    buf[s1 - len(old_sig):s1] = new_sig
    return replace_store(signed, start, bytes(buf))
