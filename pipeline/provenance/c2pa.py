"""C2PA content credentials for generated PNGs and WAVs, with the ``c2pa-python`` library.

Each file is signed last, after its XMP packet and text chunks (a WAV's ``LIST/INFO``) are written: the
manifest store goes into a PNG's ``caBX`` chunk after IHDR, or a WAV's ``C2PA`` chunk at the end
(:mod:`pipeline.provenance.container`), and its hard binding (``c2pa.hash.data``) covers every other
byte of the file, so a changed pixel or sample (or any changed byte) makes the manifest ``Invalid``.

The manifest of an asset holds

* a ``c2pa.actions`` assertion with one ``c2pa.created`` action: ``digitalSourceType``
  trainedAlgorithmicMedia, the ``softwareAgent`` (aigc-pipeline and its version) and, under the
  one parameter ``aigc``, the item id and the model sha256;
* an ``org.aigc-pipeline.generation`` assertion: job, date, item id, seed, model sha256, the AI
  system and, when a watermark was asked for, whether one was applied and why not;
* a label ``urn:c2pa:<uuid>`` and an instance id ``xmp:iid:<uuid>`` derived from the job, the date,
  the item id and the model sha256 (the XMP ``xmpMM:InstanceID`` is the same), and no thumbnail.

**Reproducible signatures.** c2pa-rs gives every assertion box a random 16-byte ``c2sh`` salt
(``DefaultSalt``; c2pa-python 0.38.1 has no setting to fix it), which the claim's assertion hashes
and so the signature cover. :func:`pipeline.provenance.jumbf.resalt` replaces each salt with a keyed
one, ``HMAC-SHA256(salt key, manifest label, assertion label)[:16]`` (the salt key derives from the
signing key, so the salts stay as unguessable to a reader as random ones: C2PA's reason for them),
recomputes those hashes and signs the claim again. With Ed25519 (deterministic by definition), or
ES256 with a local key (RFC 6979 deterministic ECDSA), and no timestamp authority, the same asset
then gets the same bytes in every run. Not reproducible, and said so by :attr:`AssetSigner.reproducible`:
ES256 through a KMS function (its ECDSA nonce is the KMS's) and any signature with a timestamp
authority (the token holds its own time and nonce). For those, :func:`strip_manifest` gives the PNG
as it was before signing, whose sha256 the shard index records under ``canonical``. (A custom
parameter map with more than one key would come out in a random key order, which is why the
action carries one.)

The library is imported inside the functions that use it, never when this module is imported.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import io
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Callable

import pipeline
from pipeline.encode import IPTC_TRAINED_ALGORITHMIC_MEDIA
from pipeline.errors import PipelineError
from pipeline.provenance.container import MIMES, PNG_SIG, has_manifest, mime_of, png_chunks, strip_manifest
from pipeline.provenance.jumbf import resalt
from pipeline.provenance.xmp import instance_uuid

__all__ = ["AssetSigner", "Validator", "check_signing", "has_manifest", "manifest_for", "png_chunks", "strip_manifest"]
ASSERTION = "org.aigc-pipeline.generation"


# ------------------------------------------------------------------------------------------ signing
def manifest_for(*, job: str, date: str, item_id: str, seed: int, model_sha256: str, system: str,
                 watermark: dict | None = None, ext: str = "png") -> dict:
    """The manifest definition of one asset (deterministic: see the module docstring)."""
    uid = instance_uuid(job, date, item_id, model_sha256)
    generation: dict[str, Any] = {"job": job, "date": date, "item_id": item_id, "seed": seed,
                                  "model_sha256": model_sha256, "ai_system": system}
    if watermark is not None:
        generation["watermark"] = watermark
    return {
        "claim_generator_info": [{"name": "aigc-pipeline", "version": pipeline.__version__}],
        "title": f"{item_id}.{ext}",
        "format": MIMES[ext],
        "label": f"urn:c2pa:{uid}",
        "instance_id": f"xmp:iid:{uid}",
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": [{
                "action": "c2pa.created",
                "digitalSourceType": IPTC_TRAINED_ALGORITHMIC_MEDIA,
                "softwareAgent": {"name": "aigc-pipeline", "version": pipeline.__version__},
                "parameters": {"aigc": {"item_id": item_id, "model_sha256": model_sha256}},
            }]}},
            {"label": ASSERTION, "data": generation},
        ],
    }


def load_callback(name: str) -> Callable[[bytes], bytes]:
    """The KMS signing function named ``module:function``; PipelineError naming it when it cannot be loaded."""
    module, _, attr = name.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise PipelineError(f"generate.provenance.c2pa.signer: cannot load {name} ({type(exc).__name__}: "
                            f"{str(exc)[:120]})") from None
    if not callable(fn):
        raise PipelineError(f"generate.provenance.c2pa.signer: {name} is not a function")
    return fn


_SALT_INFO = b"aigc-pipeline c2pa salt key/1"


class AssetSigner:
    """Signs PNGs and WAVs with one key for the life of an actor (the library objects are built once).

    ``opts`` is a :class:`pipeline.provenance.options.SigningOptions`; no key material is kept on
    this object beyond what the library and the re-signing function hold. ``reproducible``: whether
    the same PNG and manifest always give the same signed bytes (see the module docstring).
    """

    def __init__(self, opts: Any):
        import c2pa as lib

        self.lib, self.opts = lib, opts
        alg = {"ed25519": lib.C2paSigningAlg.ED25519, "es256": lib.C2paSigningAlg.ES256}[opts.algorithm]
        if opts.signer is not None:
            kms = load_callback(opts.signer)
            self.signer = lib.Signer.from_callback(kms, alg, opts.cert_chain, opts.timestamp_url)
            self.reproducible = opts.timestamp_url is None and opts.algorithm == "ed25519"
            self._sign = kms
            salt_key = kms(_SALT_INFO) if self.reproducible else b""  # Ed25519: the same signature every time
        else:
            info = lib.C2paSignerInfo(opts.algorithm.encode(), opts.cert_chain.encode(),
                                      opts.private_key.value.encode(), opts.timestamp_url)
            self.signer = lib.Signer.from_info(info)
            self.reproducible = opts.timestamp_url is None
            self._sign, salt_key = _local_signer(opts.private_key.value, opts.algorithm)
        self._salt_key = hashlib.sha256(_SALT_INFO + b"\0" + salt_key).digest()
        # resalt() checks the library's signature against the certificate's key before it signs again, so
        # the library's own read-back after signing (a quarter of the signing time) is left to the others
        self.context = lib.Context.from_dict({"builder": {"thumbnail": {"enabled": False}},
                                              "verify": {"verify_after_sign": not self.reproducible}})

    def _salt(self, manifest_label: str, assertion: str) -> bytes:
        msg = manifest_label.encode() + b"\0" + assertion.encode()
        return hmac.new(self._salt_key, msg, hashlib.sha256).digest()[:16]

    def builder_sign(self, data: bytes, manifest: dict) -> bytes:
        """The library's own signing: random salts (and, for ES256, a random nonce)."""
        out = io.BytesIO()
        self.lib.Builder(manifest, self.context).sign(self.signer, mime_of(data), io.BytesIO(data), out)
        return out.getvalue()

    def sign(self, data: bytes, manifest: dict) -> bytes:
        """A PNG or WAV signed: the same bytes for the same input whenever ``reproducible``."""
        signed = self.builder_sign(data, manifest)
        if not self.reproducible:
            return signed
        label = manifest["label"]
        return resalt(signed, lambda assertion: self._salt(label, assertion), self._sign)


def _local_signer(pem: str, algorithm: str) -> tuple[Callable[[bytes], bytes], bytes]:
    """(a deterministic signing function for the claim, the key's private bytes for the salt key)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, utils

    key = serialization.load_pem_private_key(pem.encode(), None)
    raw = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    if algorithm == "ed25519":
        return key.sign, raw

    def es256(data: bytes) -> bytes:  # RFC 6979: the nonce derives from the key and the message
        r, s = utils.decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256(), deterministic_signing=True)))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    return es256, raw


def _probe_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))

    return PNG_SIG + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\x00\x00")) + chunk(b"IEND", b"")


def _reason(exc: BaseException, secrets: list[str]) -> str:
    """The library's message in one line, with nothing of a secret in it."""
    text = " ".join(str(exc).split())[:200]
    for secret in secrets:
        for line in secret.splitlines():
            if len(line.strip()) >= 8 and line.strip() in text:
                text = text.replace(line.strip(), "…")
    return text or type(exc).__name__


def check_signing(opts: Any) -> None:
    """Sign and read back a 1-pixel PNG before any actor starts: a key that does not fit its certificate,
    an unusable chain or a failing KMS function is one line naming the env vars, never their values."""
    where = f"the certificate chain in ${opts.cert_chain_env} and " + (
        f"the key in ${opts.private_key_env}" if opts.signer is None else f"the signer {opts.signer}")
    secrets = [opts.private_key.value] if opts.private_key is not None else []
    try:
        signer = AssetSigner(opts)
        signed = signer.sign(_probe_png(), manifest_for(job="probe", date="1970-01-01", item_id="probe", seed=0,
                                                        model_sha256="0" * 64, system="probe"))
        state, failures = Validator(None).state(signed)
    except PipelineError:
        raise
    except Exception as exc:  # noqa: BLE001 - the library's errors are many; each becomes one line
        raise PipelineError(f"generate.provenance.c2pa: cannot sign with {where}: {_reason(exc, secrets)}") from None
    if state not in ("Valid", "Trusted"):
        raise PipelineError(f"generate.provenance.c2pa: a test signature with {where} does not validate "
                            f"({state}: {', '.join(failures[:3])})")


# ------------------------------------------------------------------------------------------ reading
@dataclass
class Finding:
    """The reader's verdict on one asset."""

    ok: bool
    state: str  # Trusted, Valid, Invalid, or "no manifest"
    failures: list[str]


class Validator:
    """Validates assets against ``trust_anchors`` (PEM text of the CA certificates to trust), or, without
    them, checks signatures and bindings only (the reader's ``Valid``: the signer is not checked)."""

    def __init__(self, trust_anchors: str | None):
        import c2pa as lib

        self.lib, self.anchors = lib, trust_anchors
        settings: dict = {"verify": {"verify_trust": trust_anchors is not None}}
        if trust_anchors is not None:
            settings["trust"] = {"trust_anchors": trust_anchors}
        self.context = lib.Context.from_dict(settings)

    def state(self, data: bytes) -> tuple[str, list[str]]:
        """(validation state, failure codes with their explanation) of a PNG or WAV."""
        try:
            reader = self.lib.Reader(mime_of(data), io.BytesIO(data), None, self.context)
        except self.lib.C2paError as exc:
            if "ManifestNotFound" in type(exc).__name__ or "no JUMBF" in str(exc):
                return "no manifest", []
            return "unreadable", [" ".join(str(exc).split())[:200]]
        try:
            state = reader.get_validation_state() or "unknown"
            results = reader.get_validation_results() or {}
        finally:
            reader.close()
        fails = [f"{f.get('code')}" for f in (results.get("activeManifest") or {}).get("failure", [])]
        return state, fails

    def check(self, data: bytes) -> Finding:
        state, failures = self.state(data)
        wanted = ("Trusted",) if self.anchors is not None else ("Valid", "Trusted")
        return Finding(state in wanted, state, failures)

    def manifest(self, data: bytes) -> dict:
        """The active manifest as the reader reports it (what tests compare between runs)."""
        import json

        with self.lib.Reader(mime_of(data), io.BytesIO(data), None, self.context) as reader:
            data = json.loads(reader.json())
        return data["manifests"][data["active_manifest"]]
