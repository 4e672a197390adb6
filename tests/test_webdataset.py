"""generate.formats: [webdataset] on a real local Ray: one deterministic tar per shard, read by the
webdataset library, Ray Data and Hugging Face datasets, and checked member by member by `aigc verify`."""

from __future__ import annotations

import io
import json
import shutil
import struct
import tarfile
import zlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.errors import PipelineError
from pipeline.generate import run_generate
from pipeline.generate.plan import ours, plan_shards
from pipeline.layout import tar_path
from pipeline.package import export_package, load_package
from pipeline.provenance import devcert
from pipeline.provenance.c2pa import png_chunks, strip_manifest
from pipeline.provenance.options import ProvenanceOptions, SigningOptions
from pipeline.specs import TextModelSpec, validate_job
from pipeline.storage import Store, verify
from pipeline.webdataset import read_tar, tar_bytes

from helpers import files_of, make_package

DATE = "2026-11-28"
MTIME = 1795824000  # 2026-11-28T00:00:00Z, the run's logical time
PROMPTS = ('{"prompt": "eine handgeschriebene Null, über alles", "label": 0, "n": 2}\n'
           '{"prompt": "the digit seven", "label": 7}\n')
COUNT, SHARD = 25, 10  # seed shards of 10, 10 and 5 items, and one prompt shard of 3


def job(root, model, prompts, *, formats=("webdataset", "parquet"), actors=2, batch=4):
    return validate_job({
        "name": "w",
        "storage": {"root": str(root)},
        "generate": {
            "model": model, "seed": 11, "seeds": {"start": 0, "count": COUNT}, "shard_size": SHARD,
            "prompts": {"uri": prompts, "samples_per_prompt": 1}, "formats": list(formats),
            "output": "{root}/{name}/{date}",
            "scaling": {"num_actors": actors, "num_cpus": 0.5, "batch_size": batch},
        },
    }, "test")


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> str:
    return make_package(tmp_path_factory.mktemp("pkg") / "model")


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("prompts") / "p.jsonl"
    path.write_text(PROMPTS, encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def out(ray_session, package, prompts, tmp_path_factory) -> Path:
    """One run with formats [webdataset, parquet] (2 actors, micro-batches of 4), shared by the readers."""
    res = run_generate(job(tmp_path_factory.mktemp("wds"), package, prompts), date=DATE, progress=False)
    return Path(res.output)


def tars_of(out: Path) -> list[Path]:
    return sorted((out / "images").glob("*.tar"))


def expected_items(out: Path) -> dict[str, dict]:
    """item id → its Parquet row, the reference every reader is held to."""
    return {r["item_id"]: r for r in pq.read_table(out / "data", use_threads=False).to_pylist()}


def check_item(key: str, png: bytes, meta: dict, rows: dict[str, dict]) -> None:
    row = rows[key]
    assert png == row["image"]["bytes"]
    im = Image.open(io.BytesIO(png))
    im.load()
    assert im.size == (32, 32) and im.text["aigc:item_id"] == key
    assert meta["item_id"] == key and meta["seed"] == row["seed"] and meta["prompt"] == row["prompt"]
    assert meta["png_sha256"] == row["png_sha256"] and meta["label"] == row["label"]
    assert "image" not in meta  # the image is the .png member


def test_tars_verify_and_do_not_depend_on_actors_batch_size_or_the_other_formats(ray_session, out, package,
                                                                                  prompts, tmp_path):
    report = verify(str(out))
    assert report.ok, report.lines()
    assert [t.name for t in tars_of(out)] == ["p000000.tar", "s000000.tar", "s000001.tar", "s000002.tar"]
    assert not [p for p in (out / "images").iterdir() if p.is_dir()]  # no per-item files without png

    rows = expected_items(out)
    assert len(rows) == COUNT + 3
    store = Store(str(out))
    for t in tars_of(out):
        shard = t.stem
        index = store.read_json(f"_shards/{shard}.json")
        data = t.read_bytes()
        members, why = read_tar(data)
        assert why is None
        keys = [k for k in sorted(rows) if rows[k]["image"]["path"].split("/")[1] == shard]
        assert [n for n, _ in members] == [f"{k}.{ext}" for k in keys for ext in ("png", "json")]  # item order
        recs = index["members"][tar_path(shard)]
        assert set(recs) == {n for n, _ in members}
        for name, body in members:
            assert recs[name]["size"] == len(body)
            if name.endswith(".json"):
                meta = json.loads(body.decode("utf-8"))
                assert body == json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")
                png = dict(members)[name[:-5] + ".png"]
                check_item(name[:-5], png, meta, rows)
        with tarfile.open(t) as tar:  # every header fixed: the bytes depend on the spec alone
            for info in tar.getmembers():
                assert (info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode) == \
                       (MTIME, 0, 0, "", "", 0o644) and info.isreg()
        assert data[257:265] == b"ustar\x0000"  # USTAR, no PAX headers
        assert tar_bytes(members, MTIME) == data
    assert "über alles" in json.loads(dict(read_tar((out / "images" / "p000000.tar").read_bytes())[0])
                                      ["p000000001-00001.json"])["prompt"]

    one = run_generate(job(tmp_path / "one", package, prompts, actors=1, batch=16), date=DATE, progress=False)
    assert files_of(one.output) == files_of(str(out))  # every tar and Parquet part byte-identical
    # png beside it: the same tars, plus the files they hold
    both = run_generate(job(tmp_path / "both", package, prompts, formats=("png", "webdataset"), actors=2, batch=3),
                        date=DATE, progress=False)
    fb = files_of(both.output)
    assert {k: v for k, v in fb.items() if k.endswith(".tar")} == \
           {k: v for k, v in files_of(str(out)).items() if k.endswith(".tar")}
    assert verify(both.output).ok
    pngs = sorted(Path(both.output).glob("images/*/*.png"))
    assert len(pngs) == COUNT + 3
    tar = dict(read_tar((Path(both.output) / "images" / "s000001.tar").read_bytes())[0])
    assert tar["s000000000013.png"] == (Path(both.output) / "images" / "s000001" / "s000000000013.png").read_bytes()


def test_the_webdataset_library_reads_every_item(out):
    import webdataset as wds

    rows = expected_items(out)
    seen = set()
    for sample in wds.WebDataset([str(t) for t in tars_of(out)], shardshuffle=False):
        check_item(sample["__key__"], sample["png"], json.loads(sample["json"]), rows)
        seen.add(sample["__key__"])
    assert seen == set(rows)


def test_ray_data_reads_every_item(out):
    import ray

    rows = expected_items(out)
    ds = ray.data.read_webdataset(str(out / "images"), file_extensions=["tar"], decoder=None)
    got = ds.take_all()
    assert len(got) == len(rows)
    for sample in got:
        check_item(sample["__key__"], sample["png"], json.loads(sample["json"]), rows)
    assert {s["__key__"] for s in got} == set(rows)


def test_hugging_face_datasets_reads_every_item(out, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    import datasets

    rows = expected_items(out)
    ds = datasets.load_dataset("webdataset", data_files={"train": str(out / "images" / "*.tar")}, split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert isinstance(ds.features["png"], datasets.Image)
    ds = ds.cast_column("png", datasets.Image(decode=False))
    assert len(ds) == len(rows)
    for sample in ds:
        check_item(sample["__key__"], sample["png"]["bytes"], sample["json"], rows)
    assert set(ds["__key__"]) == set(rows)


def _rewrite(path: Path, change) -> None:
    """Rewrite a tar through tarfile with its members changed by ``change(members) -> members``."""
    members, why = read_tar(path.read_bytes())
    assert why is None
    path.write_bytes(tar_bytes(change(members), MTIME))


def test_a_member_changed_by_one_byte_is_named_by_aigc_verify(out, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)

    def flip(members):
        return [(n, (b[:100] + bytes([b[100] ^ 1]) + b[101:]) if n == "s000000000003.png" else b) for n, b in members]

    _rewrite(bad / "images" / "s000000.tar", flip)
    r = CliRunner().invoke(app, ["verify", str(bad)])
    assert r.exit_code == 1, r.output
    assert isinstance(r.exception, SystemExit) and "Traceback" not in r.output
    lines = r.output.splitlines()
    assert f"corrupt: {bad}/images/s000000.tar#s000000000003.png" in lines, r.output
    assert f"corrupt: {bad}/images/s000000.tar" in lines  # the whole file's sha256 too
    assert not [ln for ln in lines if "#" in ln and "s000000000003.png" not in ln], r.output
    assert lines[-1].startswith("FAILED")


def test_a_tar_that_is_no_tar_or_lost_or_gained_members_is_named(out, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    _rewrite(bad / "images" / "s000001.tar", lambda m: [x for x in m if x[0] != "s000000000012.json"])
    _rewrite(bad / "images" / "s000002.tar", lambda m: m + [("s000000000099.png", b"\x89PNG")])
    (bad / "images" / "p000000.tar").write_bytes(b"not a tar at all" * 100)
    report = verify(str(bad))
    assert not report.ok
    assert "images/s000001.tar#s000000000012.json" in report.missing
    assert "images/s000002.tar#s000000000099.png" in report.extra
    assert {"images/p000000.tar", "images/s000001.tar", "images/s000002.tar"} <= set(report.corrupt)
    assert [p for p in report.problems if p.startswith("images/p000000.tar: not a readable tar archive")]
    assert not [p for p in report.missing if p.startswith("images/p000000.tar#")]  # one line, not one per member
    assert "images/s000000.tar" not in report.corrupt


def test_leftover_tars_of_the_plan_are_its_own_and_no_other_name_is(package, tmp_path):
    """A crashed write leaves ``images/<shard>.tar.tmp-<12 hex>``: publishing may delete it, nothing else."""
    shards = {s.shard_id: s for s in plan_shards(validate_job({
        "name": "w", "storage": {"root": str(tmp_path)},
        "generate": {"model": package, "seeds": {"count": COUNT}, "shard_size": SHARD}}, "test"), None)}
    assert ours("images/s000002.tar", shards, {}) and ours("images/s000000.tar.tmp-0123456789ab", shards, {})
    assert not ours("images/s000003.tar", shards, {}) and not ours("images/s000000.tar.gz", shards, {})
    assert not ours("images/mine.tar", shards, {})


def test_a_text_model_asking_for_webdataset_fails_in_one_line(tmp_path):
    cfg = TextModelSpec(arch="bytegpt", n_layer=1, n_head=1, n_embd=16, block_size=16)
    from pipeline.families.bytegpt.model import ByteGPT

    torch.manual_seed(0)
    export_package(str(tmp_path / "gpt"), ByteGPT(cfg), cfg, {"tokenizer": "bytes"})
    (tmp_path / "p.txt").write_text("hello\n")
    spec = validate_job({"name": "t", "storage": {"root": str(tmp_path)},
                         "generate": {"model": str(tmp_path / "gpt"), "prompts": {"uri": str(tmp_path / "p.txt")},
                                      "formats": ["webdataset"]}}, "test")
    with pytest.raises(PipelineError) as err:
        run_generate(spec, date=DATE, progress=False)
    line = str(err.value)
    assert line.startswith("generate.formats: ") and "bytegpt" in line and "parquet only" in line
    assert "\n" not in line


# ------------------------------------------------------------------------------------------ C2PA
CHAIN_ENV, KEY_ENV = "AIGC_TEST_WDS_CHAIN", "AIGC_TEST_WDS_KEY"
_KMS: dict = {}


def kms_sign_es256(data: bytes) -> bytes:
    """An ES256 KMS stand-in (a random nonce per signature, as KMSs sign)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    return _KMS["es256"].sign(data, ec.ECDSA(hashes.SHA256()))


def changed_pixel(png: bytes) -> bytes:
    """One pixel byte flipped inside the image data (re-deflated, CRC fixed: still a valid PNG)."""
    for kind, off, n in png_chunks(png):
        if kind == b"IDAT":
            raw = bytearray(zlib.decompress(png[off + 8: off + n - 4]))
            raw[40] ^= 0x01
            body = zlib.compress(bytes(raw), 6)
            crc = struct.pack(">I", zlib.crc32(body, zlib.crc32(b"IDAT")))
            chunk = struct.pack(">I", len(body)) + b"IDAT" + body + crc
            return png[:off] + chunk + png[off + n:]
    raise AssertionError("no IDAT")


def test_signed_tar_members_are_validated_and_a_changed_pixel_is_named(ray_session, package, tmp_path, monkeypatch):
    chain = devcert.make_chain("ed25519")
    monkeypatch.setenv(CHAIN_ENV, chain.chain)
    monkeypatch.setenv(KEY_ENV, chain.key)
    spec = validate_job({"name": "w", "storage": {"root": str(tmp_path)},
                         "generate": {"model": package, "seeds": {"count": 6}, "shard_size": 6,
                                      "formats": ["webdataset"], "output": "{root}/{name}/{date}",
                                      "scaling": {"num_actors": 1, "num_cpus": 0.5, "batch_size": 4},
                                      "provenance": {"c2pa": {"cert_chain_env": CHAIN_ENV,
                                                              "private_key_env": KEY_ENV}}}}, "test")
    out = Path(run_generate(spec, date=DATE, progress=False).output)
    report = verify(str(out), c2pa=True, trust_anchors=chain.ca)
    assert report.ok and report.c2pa_checked == 6, report.lines()

    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    _rewrite(bad / "images" / "s000000.tar",
             lambda m: [(n, changed_pixel(b) if n == "s000000000002.png" else b) for n, b in m])
    report = verify(str(bad), c2pa=True, trust_anchors=chain.ca)
    member = "images/s000000.tar#s000000000002.png"
    assert not report.ok and report.corrupt == ["images/s000000.tar", member]
    assert [line.split(": ")[0] for line in report.c2pa_failed] == [member]
    assert "Invalid" in report.c2pa_failed[0]


def test_an_unreproducible_signer_records_the_tar_canonical_sha256(package, tmp_path):
    """ES256 through a KMS signs differently each time: the shard index records the tar as it is with every
    member unsigned, which both signings share."""
    from pipeline.generate.actor import ShardConfig, ShardWorker
    from pipeline.generate.plan import ShardPlan
    from pipeline.specs import StorageSpec

    es = devcert.make_chain("es256")
    _KMS["es256"] = es.private_key
    opts = SigningOptions(cert_chain=es.chain, cert_chain_env=CHAIN_ENV, private_key=None, private_key_env=None,
                          signer="test_webdataset:kms_sign_es256", algorithm="es256", timestamp_url=None)
    indexes = []
    for run in ("x", "y"):
        cfg = ShardConfig(model_uri=package, model_sha256=load_package(package).model_sha256,
                          output=str(tmp_path / run), storage=StorageSpec(), job="w", job_seed=0, date=DATE,
                          formats=["webdataset"], batch_size=4, threads=1, options=ProvenanceOptions(c2pa=opts))
        ShardWorker(cfg).run_shard(ShardPlan("s000000", start=0, count=3).row())
        indexes.append(json.loads((tmp_path / run / "_shards" / "s000000.json").read_text()))
    x, y = indexes
    rel = "images/s000000.tar"
    assert x["files"][rel]["sha256"] != y["files"][rel]["sha256"]
    assert list(x["canonical"]) == [rel] and x["canonical"] == y["canonical"]
    members, _ = read_tar((tmp_path / "x" / rel).read_bytes())
    assert [n for n, _ in members] == [f"s00000000000{i}.{e}" for i in range(3) for e in ("png", "json")]
    assert all(strip_manifest(b) != b for n, b in members if n.endswith(".png"))  # every PNG member signed
