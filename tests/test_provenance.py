"""Provenance on a real local Ray with a real certificate chain: XMP read back by exiftool, C2PA content
credentials validated by the c2pa reader against a CA made at test time, determinism with signatures,
a changed pixel found by name, key env vars that fail in one line and never leak, the watermark, and the
Parquet key-value metadata."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.encode import IPTC_TRAINED_ALGORITHMIC_MEDIA
from pipeline.errors import PipelineError
from pipeline.generate import run_generate
from pipeline.generate.driver import run_key
from pipeline.provenance import devcert, watermark
from pipeline.provenance.c2pa import AssetSigner, Validator, has_manifest, png_chunks, strip_manifest
from pipeline.provenance.options import SigningOptions, provenance_options
from pipeline.provenance.xmp import KEYWORD
from pipeline.specs import SpecError, load_job, validate_job
from pipeline.storage import sha256, verify

from helpers import files_of, make_package, require_system, require_watermark

DATE = "2026-11-28"
CHAIN_ENV, KEY_ENV = "AIGC_TEST_C2PA_CHAIN", "AIGC_TEST_C2PA_KEY"
ODD_PROMPT = 'a <b>bold</b> "seven" & more'
PROMPTS = json.dumps({"prompt": "a handwritten zero", "label": 0, "n": 2}) + "\n" + \
    json.dumps({"prompt": ODD_PROMPT, "label": 7}) + "\n"


# ------------------------------------------------------------------------------------------ a real chain
def make_chain(algorithm: str = "ed25519") -> dict:
    """A test CA and an end-entity certificate signed by it, made now (pipeline.provenance.devcert)."""
    from cryptography.hazmat.primitives import serialization

    c = devcert.make_chain(algorithm)
    raw = c.private_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
    return {"chain": c.chain, "ca": c.ca, "key": c.key, "key_der": raw.hex(), "_obj": c.private_key}


def key_marks(chain: dict) -> list[bytes]:
    """What of the private key could show up anywhere: its PEM body lines (the unique tail: every Ed25519
    PKCS#8 key starts alike) and its raw DER bytes, also as hex."""
    body = [ln for ln in chain["key"].splitlines() if ln and not ln.startswith("-----")]
    raw = bytes.fromhex(chain["key_der"])
    return [ln[-24:].encode() for ln in body] + [raw[-32:], raw[-32:].hex().encode()]


def text_marks(chain: dict) -> list[str]:
    """The marks of :func:`key_marks` that text output could hold."""
    return [m.decode() for m in key_marks(chain) if m.isascii() and m.decode().isprintable()]


_KMS: dict = {}


def kms_sign(data: bytes) -> bytes:
    """A KMS stand-in for the `signer` hook: the key lives here, not in the pipeline."""
    return _KMS["key"].sign(data)


def kms_sign_es256(data: bytes) -> bytes:
    """An ES256 KMS stand-in: ECDSA with a random nonce, as KMSs sign (DER, which the library accepts)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    return _KMS["es256"].sign(data, ec.ECDSA(hashes.SHA256()))


@pytest.fixture(scope="module")
def chain() -> dict:
    return make_chain()


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> str:
    return make_package(tmp_path_factory.mktemp("pkg") / "model")


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> str:
    p = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    p.write_text(PROMPTS)
    return str(p)


def job(root, model, prompts=None, *, count=50, shard_size=25, actors=1, batch=16, provenance=None, **gen):
    spec = {"name": "prov", "storage": {"root": str(root)},
            "generate": {"model": model, "seed": 3, "seeds": {"count": count}, "shard_size": shard_size,
                         "output": "{root}/{name}/{date}",
                         "scaling": {"num_actors": actors, "num_cpus": 0.5, "batch_size": batch}, **gen}}
    if prompts:
        spec["generate"]["prompts"] = {"uri": prompts}
    if provenance is not None:
        spec["generate"]["provenance"] = provenance
    return validate_job(spec, "test")


SIGNED = {"c2pa": {"cert_chain_env": CHAIN_ENV, "private_key_env": KEY_ENV}, "watermark": {}}


@pytest.fixture(scope="module")
def signed(ray_session, package, prompts_file, chain, tmp_path_factory):
    """Two signed runs of the same spec: 1 actor with batches of 16, 2 actors with batches of 64."""
    require_watermark()  # SIGNED asks for the watermark too
    mp = pytest.MonkeyPatch()
    mp.setenv(CHAIN_ENV, chain["chain"])
    mp.setenv(KEY_ENV, chain["key"])
    root = tmp_path_factory.mktemp("signed")
    try:
        a = run_generate(job(root / "a", package, prompts_file, provenance=SIGNED), date=DATE, progress=False)
        b = run_generate(job(root / "b", package, prompts_file, provenance=SIGNED, actors=2, batch=64), date=DATE,
                         progress=False)
    finally:
        mp.undo()
    anchors = root / "ca.pem"
    anchors.write_text(chain["ca"])
    return {"a": a.output, "b": b.output, "anchors": str(anchors), "items": a.items, "root": root}


def change_a_pixel(path: Path) -> None:
    """Flip one pixel byte inside the PNG's image data (re-deflated, CRC fixed: still a valid PNG)."""
    data = path.read_bytes()
    for kind, off, n in png_chunks(data):
        if kind == b"IDAT":
            raw = bytearray(zlib.decompress(data[off + 8: off + n - 4]))
            raw[40] ^= 0x01  # row 1, a pixel (byte 0 of each row is its filter type)
            body = zlib.compress(bytes(raw), 6)
            crc = struct.pack(">I", zlib.crc32(body, zlib.crc32(b"IDAT")))
            chunk = struct.pack(">I", len(body)) + b"IDAT" + body + crc
            path.write_bytes(data[:off] + chunk + data[off + n:])
            return
    raise AssertionError("no IDAT")


# ------------------------------------------------------------------------------------------ C2PA
def test_every_signed_asset_validates_against_the_test_ca(signed):
    out = Path(signed["a"])
    report = verify(str(out), c2pa=True, trust_anchors=Path(signed["anchors"]).read_text())
    assert report.ok, report.lines()
    pngs = sorted(out.glob("images/*/*.png"))
    assert len(pngs) == signed["items"] == 53 and report.c2pa_checked == len(pngs)
    r = CliRunner().invoke(app, ["verify", str(out), "--c2pa", "--trust-anchors", signed["anchors"]])
    assert r.exit_code == 0 and "53 C2PA manifests checked (trust anchors)" in r.output, r.output
    # the signed PNG is what lands in storage and in the Parquet image column alike
    rows = {row["item_id"]: row for row in pq.read_table(out / "data").to_pylist()}
    for p in pngs[:5] + pngs[-3:]:
        data = p.read_bytes()
        row = rows[p.stem]
        assert row["image"]["bytes"] == data and row["png_sha256"] == sha256(data) and has_manifest(data)
    # what the manifest says
    m = Validator(Path(signed["anchors"]).read_text()).manifest(pngs[0].read_bytes())
    action = next(a for a in m["assertions"] if a["label"].startswith("c2pa.actions"))["data"]["actions"][0]
    assert action["action"] == "c2pa.created" and action["digitalSourceType"] == IPTC_TRAINED_ALGORITHMIC_MEDIA
    assert action["softwareAgent"]["name"] == "aigc-pipeline"
    model_sha = json.loads((out / "manifest.json").read_text())["model_sha256"]
    assert action["parameters"]["aigc"] == {"item_id": pngs[0].stem, "model_sha256": model_sha}
    ours = next(a for a in m["assertions"] if a["label"] == "org.aigc-pipeline.generation")["data"]
    assert ours["item_id"] == pngs[0].stem and ours["job"] == "prov" and ours["date"] == DATE
    assert m["label"].startswith("urn:c2pa:") and m["instance_id"].startswith("xmp:iid:")
    assert "thumbnail" not in json.dumps(m).lower()  # no JPEG thumbnail in a 32 px asset's manifest
    # without the CA as trust anchor the reader still checks signatures and bindings
    assert verify(str(out), c2pa=True).ok


def test_signed_bytes_are_identical_whatever_the_actors_or_batch_size(signed):
    """Same spec, same bytes, with C2PA on: the salts are keyed, Ed25519 is deterministic."""
    fa, fb = files_of(signed["a"]), files_of(signed["b"])
    pngs = [k for k in fa if k.endswith(".png")]
    assert len(pngs) == 53 and fa == fb  # every signed PNG, Parquet part, shard index and the manifest
    assert all(has_manifest((Path(signed["a"]) / k).read_bytes()) for k in pngs)
    index = json.loads((Path(signed["a"]) / "_shards" / "s000000.json").read_text())
    assert "canonical" not in index  # nothing to take out: every byte reproduces


def test_an_unreproducible_signer_records_canonical_hashes(package, chain, tmp_path):
    """ES256 through a KMS (its own random nonce) is the case resalting cannot fix: the signed bytes differ
    from one signing to the next, and the shard index records each file's canonical sha256 (without its
    manifest store), which is the same in both and what `aigc verify --c2pa` checks."""
    from pipeline.generate.actor import ShardConfig, ShardWorker
    from pipeline.generate.plan import ShardPlan
    from pipeline.package import load_package
    from pipeline.provenance.options import ProvenanceOptions
    from pipeline.specs import StorageSpec

    es = make_chain("es256")
    _KMS["es256"] = es["_obj"]
    opts = SigningOptions(cert_chain=es["chain"], cert_chain_env=CHAIN_ENV, private_key=None, private_key_env=None,
                          signer="test_provenance:kms_sign_es256", algorithm="es256", timestamp_url=None)
    assert not AssetSigner(opts).reproducible
    indexes, pngs = [], []
    for run in ("x", "y"):
        out = tmp_path / run
        cfg = ShardConfig(model_uri=package, model_sha256=load_package(package).model_sha256, output=str(out),
                          storage=StorageSpec(), job="prov", job_seed=0, date=DATE, formats=["png", "parquet"],
                          batch_size=4, threads=1, options=ProvenanceOptions(c2pa=opts))
        ShardWorker(cfg).run_shard(ShardPlan("s000000", start=0, count=5).row())
        indexes.append(json.loads((out / "_shards" / "s000000.json").read_text()))
        pngs.append(sorted(out.glob("images/*/*.png")))
    x, y = indexes
    assert sorted(x["canonical"]) == sorted(y["canonical"]) and len(x["canonical"]) == 6  # 5 PNGs and the part
    assert x["canonical"] == y["canonical"]
    assert all(x["files"][k]["sha256"] != y["files"][k]["sha256"] for k in x["canonical"])
    for a in pngs[0]:
        assert sha256(strip_manifest(a.read_bytes())) == x["canonical"][a.relative_to(tmp_path / "x").as_posix()]
        assert Validator(es["ca"]).check(a.read_bytes()).state == "Trusted"


def test_a_changed_pixel_fails_validation_by_name(signed, tmp_path):
    out = tmp_path / "tampered"
    shutil.copytree(signed["a"], out)
    victim = sorted(out.glob("images/s000001/*.png"))[3]
    change_a_pixel(victim)
    Image.open(victim).load()  # still a valid PNG
    report = verify(str(out), c2pa=True, trust_anchors=Path(signed["anchors"]).read_text())
    rel = victim.relative_to(out).as_posix()
    assert not report.ok and report.corrupt == [rel]
    assert [line.split(": ")[0] for line in report.c2pa_failed] == [rel]
    assert "Invalid" in report.c2pa_failed[0] and "dataHash.mismatch" in report.c2pa_failed[0]
    r = CliRunner().invoke(app, ["verify", str(out), "--c2pa", "--trust-anchors", signed["anchors"]])
    assert r.exit_code == 1 and f"c2pa: {out}/{rel}: Invalid" in r.output and "Traceback" not in r.output


def test_a_signer_outside_the_trust_anchors_fails(signed, tmp_path):
    other = tmp_path / "other-ca.pem"
    other.write_text(make_chain()["ca"])
    report = verify(signed["a"], c2pa=True, trust_anchors=other.read_text())
    assert not report.ok and len(report.c2pa_failed) == signed["items"]
    assert "signingCredential.untrusted" in report.c2pa_failed[0]


def test_resume_with_c2pa_on_gives_the_same_bytes(signed, package, prompts_file, chain, monkeypatch):
    crash = Path(signed["root"]) / "crash"
    shutil.copytree(Path(signed["a"]).parent.parent, crash)  # <root>/prov/<date> of run a
    out = crash / "prov" / DATE
    for name in ("_SUCCESS", "manifest.json", "_shards/s000001.json"):
        (out / name).unlink()
    (out / "images" / "s000001" / "s000000000030.png").write_bytes(b"torn")
    monkeypatch.setenv(CHAIN_ENV, chain["chain"])
    monkeypatch.setenv(KEY_ENV, chain["key"])
    said: list[str] = []
    res = run_generate(job(crash, package, prompts_file, provenance=SIGNED), date=DATE, progress=False,
                       log=said.append)
    assert res.shards_skipped == 2 and "2/3 shards already committed" in said[0]
    assert verify(res.output, c2pa=True, trust_anchors=chain["ca"]).ok
    assert files_of(res.output) == files_of(signed["a"])


def test_parquet_only_signed_images_are_checked_in_the_table(ray_session, package, chain, tmp_path, monkeypatch):
    require_watermark()
    monkeypatch.setenv(CHAIN_ENV, chain["chain"])
    monkeypatch.setenv(KEY_ENV, chain["key"])
    res = run_generate(job(tmp_path, package, count=6, shard_size=3, provenance=SIGNED, formats=["parquet"]),
                       date=DATE, progress=False)
    assert not (Path(res.output) / "images").exists()
    report = verify(res.output, c2pa=True, trust_anchors=chain["ca"])
    assert report.ok and report.c2pa_checked == 6, report.lines()
    rows = pq.read_table(Path(res.output) / "data").to_pylist()
    assert len(rows) == 6 and all(has_manifest(r["image"]["bytes"]) for r in rows)


def test_missing_unreadable_or_wrong_key_is_one_line_naming_the_env_var(package, chain, tmp_path, monkeypatch):
    spec = tmp_path / "job.yaml"
    spec.write_text(json.dumps(job(tmp_path, package, provenance=SIGNED).model_dump(mode="json", exclude_none=True)))
    runner = CliRunner()
    monkeypatch.setenv(CHAIN_ENV, chain["chain"])
    monkeypatch.delenv(KEY_ENV, raising=False)
    wrong = make_chain()
    cases = [(None, f"generate.provenance.c2pa.private_key_env: ${KEY_ENV} is not set"),
             ("/etc/keys/signer.pem", f"generate.provenance.c2pa.private_key_env: ${KEY_ENV} does not hold a PEM "
                                      "private key"),
             (wrong["key"], f"generate.provenance.c2pa: cannot sign with the certificate chain in ${CHAIN_ENV} and "
                            f"the key in ${KEY_ENV}")]
    for value, line in cases:
        if value is not None:
            monkeypatch.setenv(KEY_ENV, value)
        r = runner.invoke(app, ["generate", str(spec), "--date", DATE])
        lines = r.output.strip().splitlines()
        assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith(f"error: {line}"), r.output
        assert "Traceback" not in r.output and not any(m in r.output for m in text_marks(wrong))
        assert not (tmp_path / "prov" / DATE / "_job.json").exists()  # refused before anything was written
    monkeypatch.setenv(KEY_ENV, chain["key"])
    monkeypatch.delenv(CHAIN_ENV)
    r = runner.invoke(app, ["generate", str(spec), "--date", DATE])
    assert r.exit_code == 1 and f"${CHAIN_ENV} is not set" in r.output


def test_signing_specs_hold_env_names_only():
    def gen(c2pa):
        return {"name": "x", "generate": {"model": "m", "seeds": {"count": 1}, "provenance": {"c2pa": c2pa}}}

    token = "ghp_" + "a1B2c3D4e5F6g7H8i9J0" * 2
    with pytest.raises(SpecError) as err:
        validate_job(gen({"cert_chain_env": "C", "private_key_env": token}), "t.yaml")
    assert "private_key_env: must be the NAME" in str(err.value) and token not in str(err.value)
    with pytest.raises(SpecError, match="exactly one of private_key_env"):
        validate_job(gen({"cert_chain_env": "C"}), "t.yaml")
    with pytest.raises(SpecError, match="timestamp_url: must be an http"):
        validate_job(gen({"cert_chain_env": "C", "private_key_env": "K", "timestamp_url": "file:///x"}), "t.yaml")
    with pytest.raises(SpecError, match="signer: must be an importable"):
        validate_job(gen({"cert_chain_env": "C", "signer": "not a name"}), "t.yaml")
    # the section left out keeps today's fingerprints: it is absent from the run key
    plain = validate_job({"name": "x", "generate": {"model": "m", "seeds": {"count": 1}}})
    assert "provenance" not in run_key(plain, "0" * 64, DATE)["generate"]
    assert load_job("jobs/demo.yaml").generate.provenance is None


def test_a_kms_signer_hook_signs_without_the_key_in_the_pipeline(chain):
    _KMS["key"] = chain["_obj"]
    opts = SigningOptions(cert_chain=chain["chain"], cert_chain_env=CHAIN_ENV, private_key=None,
                          private_key_env=None, signer="test_provenance:kms_sign", algorithm="ed25519",
                          timestamp_url=None)
    spec = validate_job({"name": "x", "generate": {"model": "m", "seeds": {"count": 1}, "provenance": {
        "c2pa": {"cert_chain_env": CHAIN_ENV, "signer": "test_provenance:kms_sign"}}}}).generate.provenance
    assert provenance_options(spec, {CHAIN_ENV: chain["chain"]}).c2pa == opts  # the driver's dry run passes
    from pipeline.image.png import encode_png
    from pipeline.provenance.c2pa import manifest_for

    png = encode_png(np.zeros((32, 32), np.uint8), {"job": "x"})
    signed = AssetSigner(opts).sign(png, manifest_for(job="x", date=DATE, item_id="s1", seed=1, model_sha256="ab" * 32,
                                                      system="test"))
    assert Validator(chain["ca"]).check(signed).state == "Trusted" and strip_manifest(signed) == png
    again = AssetSigner(opts).sign(png, manifest_for(job="x", date=DATE, item_id="s1", seed=1, model_sha256="ab" * 32,
                                                     system="test"))
    assert again == signed  # an Ed25519 KMS signs reproducibly too
    bad = validate_job({"name": "x", "generate": {"model": "m", "seeds": {"count": 1}, "provenance": {
        "c2pa": {"cert_chain_env": CHAIN_ENV, "signer": "no_such_module:sign"}}}}).generate.provenance
    with pytest.raises(PipelineError, match="signer: cannot load no_such_module:sign"):
        provenance_options(bad, {CHAIN_ENV: chain["chain"]})


def test_the_key_appears_in_no_output_record_or_log(signed, package, chain, tmp_path):
    """A signed run through the CLI (joining the test cluster), then grep its output, every output file and
    every log file of the Ray session for the key."""
    import os
    import sys

    import ray

    spec = tmp_path / "job.yaml"
    spec.write_text(json.dumps(job(tmp_path, package, count=8, shard_size=4, provenance=SIGNED)
                               .model_dump(mode="json", exclude_none=True)))
    env = {**os.environ, CHAIN_ENV: chain["chain"], KEY_ENV: chain["key"],
           "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    r = subprocess.run([sys.executable, "-m", "pipeline", "generate", str(spec), "--date", DATE], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "8 items" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    marks = key_marks(chain)
    assert not any(m in r.stdout + r.stderr for m in text_marks(chain))
    out_files = [p for root in (Path(signed["root"]), tmp_path) for p in root.rglob("*") if p.is_file()]
    assert len(out_files) > 100
    leaks = [str(p) for p in out_files for m in marks if m in p.read_bytes()]
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    logs = [p for p in session.rglob("*") if p.is_file() and not p.is_symlink() and "/logs/" in p.as_posix()]
    assert len(logs) > 5
    for p in logs:
        try:
            data = p.read_bytes()
        except OSError:  # a socket
            continue
        leaks += [str(p) for m in marks if m in data]
    assert leaks == []
    opts = provenance_options(validate_job({"name": "x", "generate": {"model": "m", "seeds": {"count": 1},
                                                                      "provenance": SIGNED}}).generate.provenance,
                              {CHAIN_ENV: chain["chain"], KEY_ENV: chain["key"]}, check=False)
    assert not any(m in repr(opts) + str(opts.c2pa.private_key) for m in text_marks(chain))


# ------------------------------------------------------------------------------------------ XMP, text chunks
def exif(paths: list[Path]) -> list[dict]:
    r = subprocess.run(["exiftool", "-j", "-a", "-G1", "-XMP:all", *map(str, paths)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_exiftool_finds_the_iptc_ai_fields_in_every_png(signed):
    require_system("/usr/bin/exiftool", "libimage-exiftool-perl")
    out = Path(signed["a"])
    pngs = sorted(out.glob("images/*/*.png"))
    model_sha = json.loads((out / "manifest.json").read_text())["model_sha256"]
    prompts = {"p000000001-00000": "a handwritten zero", "p000000001-00001": "a handwritten zero",
               "p000000002-00000": ODD_PROMPT}  # prompt items are named by line (from 1) and sample
    tags = exif(pngs)
    assert len(tags) == len(pngs) == 53
    for p, t in zip(pngs, tags):
        assert t["XMP-iptcExt:DigitalSourceType"] == IPTC_TRAINED_ALGORITHMIC_MEDIA, p
        assert "trainedAlgorithmicMedia" in t["XMP-iptcExt:DigitalSourceType"]
        assert t["XMP-iptcExt:AISystemUsed"].startswith("aigc-pipeline ")
        assert t["XMP-iptcExt:AISystemVersionUsed"] == f"aigc-pipeline 0.1.0, model sha256:{model_sha}"
        assert t["XMP-xmp:CreatorTool"].startswith("aigc-pipeline")
        assert t["XMP-xmp:CreateDate"] == "2026:11:28 00:00:00Z"
        assert t["XMP-aigc:Item_id"] == p.stem and t["XMP-aigc:Model_sha256"] == model_sha
        assert "AI-generated image" in t["XMP-dc:Description"]
        assert t["XMP-aigc:Watermark"].startswith("not applied: 32x32 px is below the 256x256 px")
        assert t.get("XMP-iptcExt:AIPromptInformation") == prompts.get(p.stem), p
    # today's iTXt chunks are kept beside the XMP
    with Image.open(out / "images" / "p000000" / "p000000002-00000.png") as im:
        assert im.text["aigc:prompt"] == ODD_PROMPT and im.text["DigitalSourceType"] == IPTC_TRAINED_ALGORITHMIC_MEDIA
        assert "trainedAlgorithmicMedia" in im.text[KEYWORD] and json.loads(im.text["aigc:watermark"]) == {
            "applied": False, "reason": "32x32 px is below the 256x256 px that invisible-watermark needs"}


def test_include_prompt_false_keeps_prompts_out_of_every_asset(ray_session, package, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "zebra canary prompt", "label": 3, "n": 2}) + "\n")
    res = run_generate(job(tmp_path, package, str(prompts), count=4, provenance={"include_prompt": False}),
                       date=DATE, progress=False)
    out = Path(res.output)
    pngs = sorted(out.glob("images/*/*.png"))
    assert len(pngs) == 6 and not any(b"zebra canary" in p.read_bytes() for p in pngs)
    with Image.open(out / "images" / "p000000" / "p000000001-00000.png") as im:
        assert "aigc:prompt" not in im.text and "AIPromptInformation" not in im.text[KEYWORD]
    rows = pq.read_table(out / "data").to_pylist()  # the job's own table keeps it
    assert sorted(r["prompt"] for r in rows if r["prompt"]) == ["zebra canary prompt"] * 2
    assert not any(has_manifest(p.read_bytes()) for p in pngs)


def test_every_parquet_part_says_it_is_ai_generated(signed):
    out = Path(signed["a"])
    model_sha = json.loads((out / "manifest.json").read_text())["model_sha256"]
    parts = sorted(out.glob("data/*.parquet"))
    assert len(parts) == 3
    for part in parts:
        meta = {k.decode(): v.decode() for k, v in pq.read_schema(part).metadata.items() if k.startswith(b"aigc.")}
        assert meta["aigc.ai_generated"] == "true"
        assert meta["aigc.digital_source_type"] == IPTC_TRAINED_ALGORITHMIC_MEDIA
        assert meta["aigc.model_sha256"] == model_sha and meta["aigc.job"] == "prov" and meta["aigc.job_seed"] == "3"
        assert meta["aigc.software"].startswith("aigc-pipeline") and meta["aigc.shard"] == part.stem.split("-")[1]
        rows = pq.read_table(part).to_pylist()
        assert meta["aigc.items"] == str(len(rows))
        assert meta["aigc.item_range"] == f"{rows[0]['item_id']}..{rows[-1]['item_id']}"


# ------------------------------------------------------------------------------------------ watermark
def synthetic(channels: int) -> np.ndarray:
    y, x = np.mgrid[0:256, 0:256]
    rng = np.random.default_rng(0)
    base = 128 + 40 * np.sin(x / 17.0) + 30 * np.cos(y / 23.0) + rng.normal(0, 4, (256, 256))
    img = np.clip(base, 0, 255).astype(np.uint8)
    return img if channels == 1 else np.stack([img, img[::-1], img[:, ::-1]], axis=-1)


@pytest.mark.parametrize("channels", [1, 3])
def test_the_watermark_reads_back_from_a_256_px_image(channels):
    require_watermark()
    img = synthetic(channels)
    payload = watermark.payload_for("deadbeef" + "0" * 56)
    marked, record = watermark.apply(img, payload)
    assert record["applied"] and record["psnr_db"] >= 30 and marked.shape == img.shape and marked.dtype == np.uint8
    assert not np.array_equal(marked, img)
    assert watermark.read(marked) == payload == b"aigc\xde\xad\xbe\xef"
    assert watermark.read(img) != payload  # an unmarked image reads as noise
    again, _ = watermark.apply(img, payload)
    assert np.array_equal(again, marked)  # deterministic
    # through a PNG and back
    from pipeline.image.png import encode_png

    with Image.open(io.BytesIO(encode_png(marked))) as im:
        assert watermark.read(np.asarray(im)) == payload


def test_a_watermark_without_opencv_is_one_line_before_any_actor(monkeypatch):
    """Where OpenCV cannot load (no libGL.so.1), asking for a watermark stops the run in the driver, saying how
    to fix it, instead of failing in every actor."""
    import sys

    monkeypatch.setitem(sys.modules, "imwatermark", None)  # what an import that cannot load raises: ImportError
    spec = validate_job({"name": "x", "generate": {"model": "m", "seeds": {"count": 1},
                                                   "provenance": {"watermark": {}}}}).generate.provenance
    with pytest.raises(PipelineError, match="generate.provenance.watermark: the invisible-watermark package cannot "
                                            "load .*apt-get install libgl1"):
        provenance_options(spec, {})


def test_the_watermark_refuses_small_images_and_says_why():
    img = synthetic(1)[:32, :32]
    same, record = watermark.apply(img, b"aigc0000")
    assert same is img and record == {"applied": False,
                                      "reason": "32x32 px is below the 256x256 px that invisible-watermark needs"}
    with pytest.raises(ValueError, match="at least 256x256"):
        watermark.read(img)
