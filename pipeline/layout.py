"""Every path the pipeline writes, in one place.

Under ``storage.root``::

    models/<job>/<version>/            a model package (model.json, generator.safetensors, manifest.json, _SUCCESS)
    models/<job>/<version>.eval/       its evaluations, beside it so the package verifies clean
    checkpoints/<job>[-<time>]/        the Ray Train run: epoch_NNNN/ checkpoints, samples/
    runs/<job>/<run id or date>.json   the record of every `aigc run`
    generated/<job>/<date>/            the default generate.output (a template)
    cache/data/<key>/                  decoded training data, streamed to the workers (pipeline.image.stream)

Inside a generated output::

    _job.json                          what fixes its bytes (spec fingerprint, model sha256, date)
    images/<shard>/<item id>.<ext>     one file per item (PNG, ...)
    images/<shard>.tar                 one WebDataset tar per shard (<item id>.png, <item id>.json, ...)
    data/part-<shard>.parquet          one table per shard
    _shards/<shard>.json               a shard's commit: its files' sizes and sha256
    rejected.jsonl                     prompts the filter or the parser refused
    manifest.json, _SUCCESS            written last: the publish

and ``<output>.report/`` beside it for `aigc report`. Nothing here imports torch or Ray.
"""

from __future__ import annotations

MODELS_DIR = "models"
CHECKPOINTS_DIR = "checkpoints"
DATA_CACHE_DIR = "cache/data"
RUNS_DIR = "runs"
EVAL_SUFFIX = ".eval"
REPORT_SUFFIX = ".report"

JOB_FILE = "_job.json"
REJECTED = "rejected.jsonl"
IMAGES_DIR = "images"
DATA_DIR = "data"
SHARDS_DIR = "_shards"
SAMPLES_DIR = "samples"


def package_uri(root: str, name: str, version: str) -> str:
    """``<root>/models/<name>/<version>``: where a job's train stage exports its model package."""
    return f"{root.rstrip('/')}/{MODELS_DIR}/{name}/{version}"


def eval_uri(package_uri: str) -> str:
    """``<package>.eval``: where a package's evaluations live, beside the package, not inside it."""
    return package_uri.rstrip("/") + EVAL_SUFFIX


def report_uri(uri: str) -> str:
    """``<uri>.report``: the default folder of a report, beside what it shows."""
    return uri.rstrip("/") + REPORT_SUFFIX


def data_cache_uri(root: str, key: str) -> str:
    return f"{root.rstrip('/')}/{DATA_CACHE_DIR}/{key}"


def checkpoints_uri(root: str) -> str:
    return f"{root.rstrip('/')}/{CHECKPOINTS_DIR}"


def run_record_uri(root: str, job: str, run_id: str) -> str:
    """``<root>/runs/<job>/<run id>.json``: the record of one `aigc run`."""
    return f"{root.rstrip('/')}/{RUNS_DIR}/{job}/{run_id}.json"


def asset_path(shard: str, item_id: str, ext: str) -> str:
    """Where an item's own file goes: ``images/<shard>/<item id>.<ext>``."""
    return f"{IMAGES_DIR}/{shard}/{item_id}.{ext}"


def tar_path(shard: str) -> str:
    """Where a shard's WebDataset tar goes: ``images/<shard>.tar`` (docs/webdataset.md)."""
    return f"{IMAGES_DIR}/{shard}.tar"


def part_path(shard: str) -> str:
    """Where a shard's table goes: ``data/part-<shard>.parquet``."""
    return f"{DATA_DIR}/part-{shard}.parquet"


def shard_index_path(shard: str) -> str:
    """A shard's commit point: ``_shards/<shard>.json``."""
    return f"{SHARDS_DIR}/{shard}.json"


def checkpoint_dir_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}"


def samples_path(epoch: int, ext: str) -> str:
    """An epoch's samples beside its run: ``samples/epoch_NNNN.<ext>``."""
    return f"{SAMPLES_DIR}/{checkpoint_dir_name(epoch)}.{ext}"
