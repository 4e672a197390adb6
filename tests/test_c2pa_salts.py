"""Reproducible C2PA signing: :func:`pipeline.provenance.jumbf.resalt` replaces c2pa-rs's random assertion
salts and signs the claim again, with the real c2pa-python library and a CA made at test time."""

from __future__ import annotations

import hashlib
import io
import zlib

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from PIL import Image

from pipeline.audio.wav import encode_wav
from pipeline.provenance import devcert
from pipeline.provenance.c2pa import AssetSigner, Validator, _probe_png, manifest_for, png_chunks, strip_manifest
from pipeline.provenance.jumbf import resalt
from pipeline.provenance.options import Secret, SigningOptions


def salt_of(label: str) -> bytes:
    return hashlib.sha256(b"salt:" + label.encode()).digest()[:16]


def other_salt_of(label: str) -> bytes:
    return hashlib.sha256(b"other:" + label.encode()).digest()[:16]


def rgb_png() -> bytes:
    img = Image.frombytes("RGB", (64, 64), bytes((x * 7 + y * 13 + c * 61) % 256 for y in range(64)
                                                 for x in range(64) for c in range(3)))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The chain as PEM files in a temp dir (as devcert writes them), an AssetSigner, the key and a validator."""
    where = tmp_path_factory.mktemp("chain")
    c = devcert.make_chain()
    for name, text in (("chain.pem", c.chain), ("ca.pem", c.ca), ("key.pem", c.key)):
        (where / name).write_text(text)
    key = serialization.load_pem_private_key((where / "key.pem").read_bytes(), None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    opts = SigningOptions(cert_chain=(where / "chain.pem").read_text(), cert_chain_env="CHAIN",
                          private_key=Secret((where / "key.pem").read_text(), "KEY"), private_key_env="KEY",
                          signer=None, algorithm="ed25519", timestamp_url=None)
    return AssetSigner(opts), key, Validator((where / "ca.pem").read_text())


MANIFEST = manifest_for(job="j", date="2026-11-28", item_id="s1", seed=3, model_sha256="ab" * 32, system="test",
                        watermark={"applied": False, "reason": "too small"})
PNGS = {"1px": _probe_png(), "64x64rgb": rgb_png()}
WAV = encode_wav((np.sin(np.arange(16000) / 9) * 9000).astype(np.int16), 16000, {"INAM": "s1"}, xmp="<x/>")


def manifest_span(png: bytes) -> range:
    (o, n), = [(o, n) for kind, o, n in png_chunks(png) if kind == b"caBX"]
    return range(o, o + n)


@pytest.mark.parametrize("name", sorted(PNGS))
def test_resalted_signing_is_reproducible_and_trusted(setup, name):
    signer, key, validator = setup
    png = PNGS[name]
    a, b = signer.builder_sign(png, MANIFEST), signer.builder_sign(png, MANIFEST)
    assert a != b and len(a) == len(b)
    span = manifest_span(a)
    assert all(i in span for i in range(len(a)) if a[i] != b[i])  # only the manifest store differs

    ra, rb = resalt(a, salt_of, key.sign), resalt(b, salt_of, key.sign)
    assert ra == rb and len(ra) == len(a)
    assert resalt(ra, salt_of, key.sign) == ra
    assert strip_manifest(ra) == strip_manifest(a) == png
    finding = validator.check(ra)
    assert (finding.ok, finding.state, finding.failures) == (True, "Trusted", [])
    assert validator.manifest(ra) == validator.manifest(a)
    # 3 salts (16 bytes), 3 hashes (32), the signature (64) and the chunk CRC (4) at most
    assert 0 < sum(x != y for x, y in zip(a, ra)) <= 3 * 16 + 3 * 32 + 64 + 4

    other = resalt(a, other_salt_of, key.sign)
    assert other != ra and len(other) == len(ra)
    assert validator.check(other).state == "Trusted"
    assert validator.manifest(other) == validator.manifest(a)


@pytest.mark.parametrize("name", sorted(PNGS))
def test_a_changed_pixel_fails_validation(setup, name):
    signer, key, validator = setup
    signed = resalt(signer.builder_sign(PNGS[name], MANIFEST), salt_of, key.sign)
    (o, n), = [(o, n) for kind, o, n in png_chunks(signed) if kind == b"IDAT"]
    at = o + 8 + (n - 12) // 2
    bad = bytearray(signed)
    bad[at] ^= 0x01
    data = bytes(bad[o + 8:o + n - 4])
    bad[o + n - 4:o + n] = zlib.crc32(data, zlib.crc32(b"IDAT")).to_bytes(4, "big")  # a valid chunk, other pixels
    finding = validator.check(bytes(bad))
    assert not finding.ok and finding.state == "Invalid"
    assert validator.check(signed).state == "Trusted"


def test_salts_are_applied_per_label(setup):
    signer, key, _ = setup
    seen: list[str] = []

    def record(label: str) -> bytes:
        seen.append(label)
        return salt_of(label)

    out = resalt(signer.builder_sign(PNGS["1px"], MANIFEST), record, key.sign)
    assert seen == ["c2pa.actions.v2", "org.aigc-pipeline.generation", "c2pa.hash.data"]
    for label in seen:
        assert out.count(salt_of(label)) == 1


def test_a_wav_is_signed_in_a_c2pa_chunk_as_reproducibly(setup):
    """c2pa-rs appends a RIFF ``C2PA`` chunk (and grows the RIFF size); resalt works on it as on caBX."""
    import wave

    from pipeline.provenance.container import riff_chunks

    signer, key, validator = setup
    wav_manifest = manifest_for(job="j", date="2026-11-28", item_id="s1", seed=3, model_sha256="ab" * 32,
                                system="test", ext="wav")
    a, b = signer.builder_sign(WAV, wav_manifest), signer.builder_sign(WAV, wav_manifest)
    assert a != b and a[:len(WAV) - 8][8:] == WAV[8:len(WAV) - 8] and a[4:8] != WAV[4:8]
    assert [kind for kind, _, _ in riff_chunks(a)] == [b"fmt ", b"LIST", b"_PMX", b"data", b"C2PA"]
    ra, rb = resalt(a, salt_of, key.sign), resalt(b, salt_of, key.sign)
    assert ra == rb and signer.sign(WAV, wav_manifest) == signer.sign(WAV, wav_manifest)
    assert strip_manifest(ra) == WAV
    assert validator.check(ra).state == "Trusted" and validator.manifest(ra)["title"] == "s1.wav"
    assert wave.open(io.BytesIO(ra)).getnframes() == 16000
    bad = bytearray(ra)
    bad[200] ^= 0x01  # a sample
    assert validator.check(bytes(bad)).failures == ["assertion.dataHash.mismatch"]


def test_a_wrong_key_does_not_validate(setup):
    signer, _, validator = setup
    out = resalt(signer.builder_sign(PNGS["1px"], MANIFEST), salt_of, ed25519.Ed25519PrivateKey.generate().sign)
    assert not validator.check(out).ok


def test_what_it_refuses(setup):
    signer, key, _ = setup
    signed = signer.builder_sign(PNGS["1px"], MANIFEST)
    with pytest.raises(ValueError, match="caBX"):
        resalt(PNGS["1px"], salt_of, key.sign)
    with pytest.raises(ValueError, match="neither a PNG nor a RIFF/WAVE file"):
        resalt(b"GIF89a", salt_of, key.sign)
    with pytest.raises(ValueError, match="expected one C2PA"):
        resalt(WAV, salt_of, key.sign)
    with pytest.raises(ValueError, match="16"):
        resalt(signed, lambda label: b"short", key.sign)
    with pytest.raises(ValueError, match="sign returned 3 bytes"):
        resalt(signed, salt_of, lambda data: b"abc")
    # a signed file whose signature no longer verifies (its last signature byte changed): refused, never re-signed
    bad = bytearray(signed)
    (o, n), = [(o, n) for kind, o, n in png_chunks(signed) if kind == b"caBX"]
    bad[o + n - 5] ^= 0x01
    with pytest.raises(ValueError, match="does not verify"):
        resalt(bytes(bad), salt_of, key.sign)


def test_es256_with_deterministic_ecdsa(setup):
    """ES256 works too when ``sign`` is deterministic ECDSA (RFC 6979), returning raw r || s as COSE wants."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, utils

    c = devcert.make_chain("es256")
    signer = AssetSigner(SigningOptions(cert_chain=c.chain, cert_chain_env="CHAIN", private_key=Secret(c.key, "KEY"),
                                        private_key_env="KEY", signer=None, algorithm="es256", timestamp_url=None))

    def sign(data: bytes) -> bytes:
        r, s = utils.decode_dss_signature(c.private_key.sign(data, ec.ECDSA(hashes.SHA256(),
                                                                            deterministic_signing=True)))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    a, b = signer.builder_sign(PNGS["64x64rgb"], MANIFEST), signer.builder_sign(PNGS["64x64rgb"], MANIFEST)
    ra, rb = resalt(a, salt_of, sign), resalt(b, salt_of, sign)
    assert a != b and ra == rb
    assert Validator(c.ca).check(ra).state == "Trusted"
    # what the pipeline does with a local ES256 key: the same
    assert signer.reproducible and signer.sign(PNGS["64x64rgb"], MANIFEST) == signer.sign(PNGS["64x64rgb"], MANIFEST)
    assert Validator(c.ca).check(signer.sign(PNGS["64x64rgb"], MANIFEST)).state == "Trusted"


def test_a_damaged_store_is_refused_or_judged_alike(setup):
    """Any one byte of the manifest store changed: resalt raises ValueError, or the reader's verdict on its output
    is its verdict on the input."""
    import random

    signer, key, validator = setup
    signed = signer.builder_sign(PNGS["1px"], MANIFEST)
    span = manifest_span(signed)
    rng, accepted = random.Random(7), 0
    for _ in range(300):
        bad = bytearray(signed)
        bad[rng.randrange(span.start + 8, span.stop - 4)] = rng.randrange(256)
        try:
            out = resalt(bytes(bad), salt_of, key.sign)
        except ValueError:
            continue
        accepted += 1
        assert len(out) == len(bad)
        assert validator.state(out) == validator.state(bytes(bad))
    assert accepted > 0
