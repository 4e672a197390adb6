"""What a run's generation actors are told about provenance: plain data built in the driver from
``generate.provenance`` and shipped to every actor once, inside the actor's constructor arguments.

The signing key (when it comes from an env var) travels the way storage credentials do
(:class:`pipeline.storage.WorkerEnv`): in task arguments, which Ray logs nowhere, never in
``runtime_env``. Its ``repr`` shows the env var's name only, so no log line, record or error can
carry it. A key held in a KMS never reaches the pipeline at all: ``signer`` names a function that
signs bytes.

    >>> provenance_options(None)
    ProvenanceOptions(xmp=True, include_prompt=True, c2pa=None, watermark=None)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

from pipeline.errors import PipelineError


class Secret:
    """A secret value that never prints (``repr``/``str`` name only where it came from)."""

    __slots__ = ("value", "source")

    def __init__(self, value: str, source: str):
        self.value, self.source = value, source

    def __repr__(self) -> str:
        return f"Secret(${self.source})"

    __str__ = __repr__

    def __getstate__(self) -> tuple[str, str]:
        return self.value, self.source

    def __setstate__(self, state: tuple[str, str]) -> None:
        self.value, self.source = state


@dataclass(frozen=True)
class SigningOptions:
    """C2PA signing, resolved: the chain and key read from their env vars in the driver."""

    cert_chain: str
    cert_chain_env: str
    private_key: Secret | None
    private_key_env: str | None
    signer: str | None  # module:function of a KMS signer
    algorithm: str
    timestamp_url: str | None

    def __repr__(self) -> str:
        key = f"${self.private_key_env}" if self.private_key_env else self.signer
        return f"SigningOptions(cert_chain=${self.cert_chain_env}, key={key}, algorithm={self.algorithm})"


@dataclass(frozen=True)
class WatermarkOptions:
    method: str = "dwtDctSvd"
    min_psnr: float = 30.0


@dataclass(frozen=True)
class ProvenanceOptions:
    """What the image sampler writes besides the PNG text chunks (defaults: the spec section left out)."""

    xmp: bool = True
    include_prompt: bool = True
    c2pa: SigningOptions | None = None
    watermark: WatermarkOptions | None = None


def _env(environ: Mapping[str, str], name: str, where: str, what: str, marker: str) -> str:
    value = environ.get(name)
    if value is None or not value.strip():
        raise PipelineError(f"{where}: ${name} is not set (it must hold {what})")
    if marker not in value:  # never echo the value: it may be a key, or a file name that says too much
        raise PipelineError(f"{where}: ${name} does not hold {what} (expected the PEM text itself, with "
                            f"'-----BEGIN ...{marker}' lines)")
    return value


def signing_options(spec: Any, environ: Mapping[str, str] | None = None) -> SigningOptions:
    """``generate.provenance.c2pa`` resolved against the environment; one line naming the env var when it fails."""
    environ = os.environ if environ is None else environ
    where = "generate.provenance.c2pa"
    chain = _env(environ, spec.cert_chain_env, f"{where}.cert_chain_env", "a PEM certificate chain",
                 "CERTIFICATE-----")
    key = None
    if spec.private_key_env is not None:
        key = Secret(_env(environ, spec.private_key_env, f"{where}.private_key_env", "a PEM private key",
                          "PRIVATE KEY-----"), spec.private_key_env)
    return SigningOptions(cert_chain=chain, cert_chain_env=spec.cert_chain_env, private_key=key,
                          private_key_env=spec.private_key_env, signer=spec.signer, algorithm=spec.algorithm,
                          timestamp_url=spec.timestamp_url)


def provenance_options(spec: Any, environ: Mapping[str, str] | None = None, check: bool = True) -> ProvenanceOptions:
    """The actors' options from ``generate.provenance`` (None: the defaults). With ``check``, a C2PA key is
    tried on a 1-pixel PNG first, so a bad key fails the run before any actor starts."""
    if spec is None:
        return ProvenanceOptions()
    signing = None
    if spec.c2pa is not None:
        signing = signing_options(spec.c2pa, environ)
        if check:
            from pipeline.provenance.c2pa import check_signing

            check_signing(signing)
    mark = None
    if spec.watermark is not None:
        try:  # OpenCV under invisible-watermark needs libGL.so.1: say so before any actor starts
            import imwatermark  # noqa: F401
        except ImportError as exc:
            raise PipelineError(f"generate.provenance.watermark: the invisible-watermark package cannot load "
                                f"({' '.join(str(exc).split())[:120]}); on Debian/Ubuntu: apt-get install libgl1, "
                                "or pip install opencv-python-headless") from None
        mark = WatermarkOptions(spec.watermark.method, spec.watermark.min_psnr)
    return ProvenanceOptions(xmp=spec.xmp, include_prompt=spec.include_prompt, c2pa=signing, watermark=mark)
