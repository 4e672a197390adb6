"""A throwaway certificate chain for trying C2PA signing locally, in tests and benchmarks: a test CA and
an end-entity certificate it signed, made with ``cryptography`` (a dependency of c2pa-python).

Never for production: a real deployment signs with a certificate from a CA that readers trust (see
docs/provenance.md). What c2pa-rs needs of the end-entity certificate, measured with c2pa-python
0.38.1: AuthorityKeyIdentifier, SubjectKeyIdentifier, ExtendedKeyUsage emailProtection and
KeyUsage digitalSignature; the reader calls the result ``Trusted`` only with the CA as trust anchor.

    python -m pipeline.provenance.devcert OUT_DIR    # writes chain.pem, key.pem, ca.pem
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class DevChain:
    chain: str  # PEM: end-entity certificate, then the CA
    ca: str  # PEM of the CA: the trust anchor
    key: str  # PEM (PKCS#8) private key of the end-entity certificate
    private_key: Any  # the same key as a cryptography object (a KMS stand-in can sign with it)

    def __repr__(self) -> str:
        return "DevChain(<test CA and signer>)"


def make_chain(algorithm: str = "ed25519", days: int = 30, name: str = "aigc test") -> DevChain:
    """A CA and an end-entity certificate for ``algorithm`` (``ed25519`` or ``es256``), valid for ``days``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def new_key():
        return ed25519.Ed25519PrivateKey.generate() if algorithm == "ed25519" else ec.generate_private_key(
            ec.SECP256R1())

    digest = None if algorithm == "ed25519" else hashes.SHA256()
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
    usage = dict(content_commitment=False, key_encipherment=False, data_encipherment=False, key_agreement=False,
                 encipher_only=False, decipher_only=False)
    ca_key, ee_key = new_key(), new_key()

    def subject(cn: str):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"{name} (not for production)")])

    def base(subj, pub):
        return (x509.CertificateBuilder().subject_name(subj).issuer_name(subject(f"{name} CA")).public_key(pub)
                .serial_number(x509.random_serial_number()).not_valid_before(start)
                .not_valid_after(start + dt.timedelta(days=days)))

    ca = (base(subject(f"{name} CA"), ca_key.public_key())
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, key_cert_sign=True, crl_sign=True, **usage),
                         critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, digest))
    ee = (base(subject(f"{name} signer"), ee_key.public_key())
          .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, **usage),
                         critical=True)
          .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ee_key.public_key()), critical=False)
          .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, digest))

    def pem(cert) -> str:
        return cert.public_bytes(serialization.Encoding.PEM).decode()

    key = ee_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption()).decode()
    return DevChain(chain=pem(ee) + pem(ca), ca=pem(ca), key=key, private_key=ee_key)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m pipeline.provenance.devcert OUT_DIR")
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    c = make_chain()
    (out / "chain.pem").write_text(c.chain)
    (out / "ca.pem").write_text(c.ca)
    fd = os.open(out / "key.pem", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(c.key)
    print(f"{out}/chain.pem, {out}/key.pem (mode 600), {out}/ca.pem: a test CA and signer, not for production")
