"""What every image family shares: :class:`ImageFamily`, an implementation whose data, sampler,
evaluation and report cards are the image modality's. A family subclasses it and adds its
network (``build``), its loop and checkpoint parts, its export, and how it describes a training.

A subclass's configuration has ``image_size``, ``channels`` and ``z_dim``; a conditional one
``conditional``, ``num_classes`` and optionally ``text_encoder`` (see :mod:`pipeline.image.sampler`
for what its network must answer).
"""

from __future__ import annotations

import io
from typing import Any, Callable

from pipeline.catalog.base import Implementation
from pipeline.errors import PipelineError
from pipeline.image.data import Reader
from pipeline.image.evaluation import evaluate_images, read_results
from pipeline.image.realdata import RealData, Split
from pipeline.image.sampler import ENCODER, ImageSampler
from pipeline.image.trainset import load_data
from pipeline.provenance.options import ProvenanceOptions, provenance_options
from pipeline.report.assets import Asset, parquet_assets, parquet_parts
from pipeline.report.html import esc, provenance_rows, src
from pipeline.storage import Store

PROVENANCE_KEYS = ["item_id", "seed", "label", "prompt", "png_sha256", "model_sha256", "job", "created_at",
                   "width", "height", "DigitalSourceType"]


def conditional(config: Any) -> bool:
    return bool(getattr(config, "conditional", False))


class ImageFamily(Implementation):
    """The image modality's hooks; a family adds ``build``, ``loop``, ``parts``, ``export``, ``describe``."""

    samples_ext = "png"
    #: ``extra_metrics(pkg, real, split) -> {name: {"value", "label", "note", "gate"}}``: a family's own figures
    extra_metrics: Callable[[Any, RealData, Split], dict] | None = None
    #: ``published(uint8 images, config) -> uint8 images``: the picture of what is published, when it is not G's
    published: Callable[[Any, Any], Any] | None = None
    #: ``reader(train.data, model, storage) -> (dataset, classes)``: a modality's own data source
    #: (see :func:`pipeline.image.data.load_data`); None: digits, image folders and Parquet images
    reader: Reader | None = None

    # -- training
    def load_data(self, job: Any) -> Any:
        return load_data(job.train.data, job.train.model, job.storage, self.reader)

    def check_data(self, job: Any, data: Any) -> None:
        t = job.train
        if conditional(t.model) and not data.labelled:
            raise PipelineError(f"train.model.conditional: needs class labels, but {data.uri or data.source} has none "
                                "(put images in class subfolders, or give a Parquet label column)")
        if conditional(t.model) and data.num_labels > t.model.num_classes:
            raise PipelineError(f"train.model.num_classes: {t.model.num_classes}, but {data.uri or data.source} has "
                                f"labels up to {data.num_labels - 1}")
        per_worker = -(-data.count // t.scaling.num_workers)
        if per_worker < t.batch_size:
            raise PipelineError(f"train.batch_size: {t.batch_size} per worker, but {data.count} examples over "
                                f"{t.scaling.num_workers} worker(s) give only {per_worker} each; lower it")

    # -- generation
    def prompt_labels(self, config: Any) -> tuple[int | None, bool]:
        # a text-conditioned generator reads the prompt itself; a label-conditioned one needs each prompt's label
        return (config.num_classes, getattr(config, "text_encoder", None) is None) if conditional(config) \
            else (None, False)

    def check_generate(self, job: Any, config: Any, model_uri: str) -> None:
        if job.generate.prompts is not None and not conditional(config):
            raise PipelineError(f"generate.prompts: the model at {model_uri} takes no conditioning; prompts need a "
                                "conditional model")

    def sampler_options(self, job: Any) -> ProvenanceOptions:
        # generate.provenance, resolved in the driver: env vars read, a C2PA key tried once (one line if it fails)
        return provenance_options(job.generate.provenance)

    def sampler(self, package: Any, cfg: Any) -> ImageSampler:
        return ImageSampler(package, cfg)

    def manifest_encoder(self, config: Any) -> dict:
        return dict(ENCODER)

    # -- evaluation
    def evaluate(self, package: Any, spec: Any, *, data: Any, storage: Any, address: str | None, log: Any,
                 generator: Any = None) -> Any:
        return evaluate_images(package, spec, data=data, storage=storage, address=address, generator=generator,
                               extra_metrics=self.extra_metrics, log=log, reader=self.reader,
                               published=(lambda x: self.published(x, package.config)) if self.published else None)

    def read_results(self, package_uri: str, storage: Any) -> list:
        return read_results(package_uri, storage)

    # -- report
    def read_assets(self, store: Store, manifest: dict, limit: int) -> list[Asset]:
        parts = parquet_parts(store)
        if parts:
            return parquet_assets(store, parts, limit, file_column="image")
        pngs = sorted((f for f in store.list("images") if f.endswith(".png")), key=lambda f: f.rsplit("/", 1)[-1])
        return _assets_from_pngs(store, pngs, limit)

    def card(self, asset: Asset, file_rel: str | None) -> str:
        return (f"<div class='card'><img class='px' src='{src(file_rel or '')}' alt='{esc(asset.item_id)}' width='96' "
                f"height='96'><table>{provenance_rows(asset.meta, PROVENANCE_KEYS)}</table></div>")


def _assets_from_pngs(store: Store, files: list[str], limit: int) -> list[Asset]:
    """An output written without Parquet: provenance from each PNG's own text chunks."""
    from PIL import Image

    out = []
    for rel in files[:limit]:
        data = store.read(rel)
        with Image.open(io.BytesIO(data)) as im:
            text = dict(getattr(im, "text", {}) or {})
            size = im.size
        meta = {k.removeprefix("aigc:"): v for k, v in text.items()}
        meta.update(width=size[0], height=size[1])
        meta["DigitalSourceType"] = meta.get("DigitalSourceType", "").rsplit("/", 1)[-1]
        out.append(Asset(meta.get("item_id") or rel.rsplit("/", 1)[-1][:-4], data, meta))
    return out
