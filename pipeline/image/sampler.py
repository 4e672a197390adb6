"""The image families' generation sampler: items → PNG bytes with provenance plus their Parquet row.

An image family's exported network is an *image generator*: ``net(z, labels=None, cond=None)``
returns images in [-1, 1], ``(N, C, S, S)``. A conditional one also has ``condition(labels)``
(label → condition vector) and, with a text encoder, ``text`` and ``prompt_posterior(prompts)``
plus the class embeddings ``embed``. Its configuration has ``z_dim`` and, when conditional,
``num_classes`` (and ``text_encoder``).

Each item's latent comes from its own ``torch.Generator(item seed)``; a text-conditioned item's
condition is its prompt's class posterior times the class embeddings, and what it resolved to is
recorded in its provenance.

Provenance, in the order it is written (``generate.provenance``, :mod:`pipeline.provenance`): the
watermark into the pixels (images of at least 256x256 px), then the PNG with its text chunks and
XMP packet, then the C2PA signature over all of it. The signed PNG is what lands in storage and in
the Parquet ``image`` column alike. Signing is reproducible (keyed salts, Ed25519 or deterministic
ECDSA) unless a KMS's ECDSA or a timestamp authority adds randomness; then ``canonical`` gives the
bytes as they were before signing.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import numpy as np

import pipeline
from pipeline.image.png import SCHEMA, encode_png, provenance
from pipeline.models.text_encoder import VERSION as TEXT_ENCODER_VERSION
from pipeline.provenance import watermark
from pipeline.provenance.c2pa import AssetSigner, manifest_for, strip_manifest
from pipeline.provenance.options import ProvenanceOptions
from pipeline.provenance.xmp import XmpFields, xmp_packet
from pipeline.storage import sha256

ENCODER = {"png": "aigc-png/2", "parquet_schema": SCHEMA.to_string()}


class ImageSampler:
    """One micro-batch of items → [(``{"png": bytes}``, Parquet row)] for an image generator."""

    schema = SCHEMA
    ext, column = "png", "image"  # each item's signed file, and the Parquet column holding it ({bytes, path})

    def __init__(self, package: Any, cfg: Any):
        self.cfg = cfg
        self.model = package.config
        self.g = package.build_model(cfg.device)
        self.conditional = bool(getattr(self.model, "conditional", False))
        self.seed_classes = self.model.num_classes if self.conditional else None
        te = getattr(self.model, "text_encoder", None)
        self.classes = list((te.classes or []) if te is not None else [])
        if self.conditional:
            self.classes += [str(i) for i in range(len(self.classes), self.model.num_classes)]
        self.created_at = cfg.created_at
        opts = cfg.options
        self.prov = opts if isinstance(opts, ProvenanceOptions) else ProvenanceOptions()
        self.system = f"aigc-pipeline {self.model.arch} generator"
        self.system_version = f"aigc-pipeline {pipeline.__version__}, model sha256:{cfg.model_sha256}"
        self.signer = AssetSigner(self.prov.c2pa) if self.prov.c2pa is not None else None
        # a signature no rerun reproduces (ES256 through a KMS, a timestamp authority): the shard index
        # records each file as it is without it (actor.py); reproducible signatures need no such record
        self.canonical = self._canonical if self.signer is not None and not self.signer.reproducible else None

    def condition(self, chunk: list[Any]) -> tuple[Any, list[dict | None]]:
        """Condition vectors of a micro-batch, and what each resolved to (provenance).

        A text generator turns each prompt into its class posterior (times the class embeddings);
        items without a prompt (seed items) are conditioned on their label.
        """
        import torch

        labels = torch.tensor([it.label if it.label is not None else 0 for it in chunk], device=self.cfg.device)
        cond = self.g.condition(labels)
        resolved: list[dict | None] = [None] * len(chunk)
        texts = [i for i, it in enumerate(chunk) if it.prompt is not None]
        if getattr(self.g, "text", None) is not None and texts:
            post = self.g.prompt_posterior([chunk[i].prompt for i in texts])
            cond[texts] = (post @ self.g.embed.weight).to(cond.dtype)
            p, k = post.max(dim=1)
            for j, i in enumerate(texts):
                resolved[i] = {"from": "prompt", "label": int(k[j]), "class": self.classes[int(k[j])],
                               "p": round(float(p[j]), 4), "encoder": TEXT_ENCODER_VERSION}
        return cond, resolved

    def pixels(self, chunk: list[Any]) -> tuple[np.ndarray, list[dict | None]]:
        """uint8 NHWC images for one micro-batch, and what each condition resolved to."""
        import torch

        with torch.inference_mode():
            # each item's latent comes from its own generator: independent of batching
            z = torch.stack([torch.randn(self.model.z_dim, generator=torch.Generator().manual_seed(it.seed))
                             for it in chunk])
            cond, resolved = self.condition(chunk) if self.conditional else (None, [None] * len(chunk))
            x = self.g(z.to(self.cfg.device), cond=cond)
            x = ((x.float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
            return x.permute(0, 2, 3, 1).cpu().numpy(), resolved

    def encode(self, it: Any, px: np.ndarray, res: dict | None) -> bytes:
        """One item's PNG: watermark, text chunks, XMP, then the C2PA signature (each as the job asks)."""
        cfg, prov = self.cfg, self.prov
        prompt = it.prompt if prov.include_prompt else None
        mark = None
        if prov.watermark is not None:
            px, mark = watermark.apply(px, watermark.payload_for(cfg.model_sha256), prov.watermark.method,
                                       prov.watermark.min_psnr)
        extra = {"aigc:condition": json.dumps(res, sort_keys=True)} if res is not None else {}
        if mark is not None:
            extra["aigc:watermark"] = json.dumps(mark, sort_keys=True)
        xmp = None
        if prov.xmp:
            said = {"watermark": ("applied: " + mark["method"]) if mark["applied"] else
                    ("not applied: " + mark["reason"])} if mark is not None else {}
            xmp = xmp_packet(XmpFields(job=cfg.job, item_id=it.item_id, seed=it.seed, model_sha256=cfg.model_sha256,
                                       system=self.system, system_version=self.system_version,
                                       created=self.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"), prompt=prompt,
                                       label=it.label, extra=said))
        png = encode_png(px if px.shape[2] != 1 else px[:, :, 0],
                         provenance(job=cfg.job, item_id=it.item_id, seed=it.seed, model_sha256=cfg.model_sha256,
                                    prompt=prompt, label=it.label, extra=extra), xmp=xmp)
        if self.signer is not None:
            png = self.signer.sign(png, manifest_for(job=cfg.job, date=cfg.date, item_id=it.item_id, seed=it.seed,
                                                     model_sha256=cfg.model_sha256, system=self.system,
                                                     watermark=mark))
        return png

    def _canonical(self, ext: str, data: bytes) -> bytes:
        return strip_manifest(data) if ext == self.ext else data

    def canonical_row(self, row: dict) -> dict:
        """A Parquet row as it would be unsigned: the file without its manifest store, and that file's sha256
        (``png_sha256``, ``wav_sha256``)."""
        data = strip_manifest(row[self.column]["bytes"])
        return {**row, self.column: {**row[self.column], "bytes": data}, f"{self.ext}_sha256": sha256(data)}

    def __call__(self, chunk: list[Any], path_of: Callable[[str, str], str]) -> list[tuple[dict, dict]]:
        cfg = self.cfg
        imgs, resolved = self.pixels(chunk)
        out = []
        for it, px, res in zip(chunk, imgs, resolved):
            png = self.encode(it, px, res)
            row = {"item_id": it.item_id, "seed": it.seed, "prompt": it.prompt, "label": it.label,
                   "resolved_label": res["label"] if res else None, "resolved_p": res["p"] if res else None,
                   "text_encoder": res["encoder"] if res else None,
                   "image": {"bytes": png, "path": path_of(it.item_id, "png")}, "png_sha256": sha256(png),
                   "width": px.shape[1], "height": px.shape[0], "model_sha256": cfg.model_sha256, "job": cfg.job,
                   "created_at": self.created_at}
            out.append(({"png": png}, row))
        return out
