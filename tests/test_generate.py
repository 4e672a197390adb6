"""Bulk generation on a real local Ray: outputs, provenance, determinism, exactly-once, resume, S3."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.encode import IPTC_TRAINED_ALGORITHMIC_MEDIA
from pipeline.errors import PipelineError
from pipeline.generate import item_seed, run_generate
from pipeline.specs import validate_job
from pipeline.storage import Store, verify

from helpers import files_of, make_package

DATE = "2026-11-28"
PROMPTS = """{"prompt": "a handwritten zero", "label": 0, "n": 3}
{"prompt": "the digit seven", "label": 7}
{"prompt": "an assassin's seven", "label": 7}
{"prompt": "a gory four", "label": 4}
{"prompt": "nine", "label": 9, "n": 2}
"""


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> str:
    return make_package(tmp_path_factory.mktemp("pkg") / "model")


@pytest.fixture(scope="module")
def slow_package(tmp_path_factory) -> str:
    """A wider G so that a run lasts long enough to kill things in the middle of it."""
    return make_package(tmp_path_factory.mktemp("pkg") / "wide", width=64)


@pytest.fixture()
def prompts_file(tmp_path) -> str:
    p = tmp_path / "prompts.jsonl"
    p.write_text(PROMPTS)
    return str(p)


def job(root, model, *, count=300, prompts=None, shard_size=100, actors=2, batch=32, formats=("png", "parquet"),
        storage=None, **gen):
    spec = {
        "name": "t",
        "storage": {"root": str(root), **(storage or {})},
        "generate": {
            "model": model, "seed": 7, "seeds": {"start": 0, "count": count}, "shard_size": shard_size,
            "formats": list(formats), "output": "{root}/{name}/{date}",
            "scaling": {"num_actors": actors, "num_cpus": 0.5, "batch_size": batch},
            "safety": {"blocklist": ["gory", "ass"], "allowlist": []}, **gen,
        },
    }
    if prompts:
        spec["generate"]["prompts"] = {"uri": prompts, "samples_per_prompt": 1}
    return validate_job(spec, "test")


def test_generate_local_end_to_end(ray_session, package, prompts_file, tmp_path):
    res = run_generate(job(tmp_path, package, prompts=prompts_file), date=DATE, progress=False)
    out = Path(res.output)
    assert out == tmp_path / "t" / DATE
    # 300 seed items + prompts: zero x3, seven x1, assassin's seven x1 (allowed: word boundary), nine x2
    assert res.items == 300 + 3 + 1 + 1 + 2 and res.rejected == 1
    report = verify(str(out))
    assert report.ok, report.lines()
    assert (out / "_SUCCESS").exists()

    # exactly count items, deterministic names, no duplicates
    pngs = sorted(out.glob("images/*/*.png"))
    assert len(pngs) == res.items == len({p.name for p in pngs})
    assert (out / "images" / "s000000" / "s000000000000.png").exists()
    assert (out / "images" / "p000000" / "p000000001-00002.png").exists()

    # provenance in every PNG
    im = Image.open(out / "images" / "p000000" / "p000000005-00001.png")
    im.load()
    assert im.size == (32, 32) and im.mode == "L"
    assert im.text["DigitalSourceType"] == IPTC_TRAINED_ALGORITHMIC_MEDIA
    assert im.text["aigc:prompt"] == "nine" and im.text["aigc:label"] == "9"
    assert im.text["aigc:job"] == "t" and im.text["aigc:item_id"] == "p000000005-00001"
    assert im.text["aigc:seed"] == str(item_seed(7, 1, 5, 1))
    manifest = json.loads((out / "manifest.json").read_text())
    assert im.text["aigc:model_sha256"] == manifest["model_sha256"]
    assert im.text["Software"].startswith("aigc-pipeline")
    assert np.asarray(im).std() > 0  # not a flat image

    # Parquet: schema, counts, image struct readable as PNG, sha256 matches the file
    table = pq.read_table(out / "data")
    assert table.num_rows == res.items
    assert set(table.column_names) >= {"item_id", "seed", "prompt", "label", "image", "png_sha256", "width",
                                       "height", "model_sha256", "job", "created_at"}
    assert str(table.schema.field("image").type) == "struct<bytes: binary, path: string>"
    rows = {r["item_id"]: r for r in table.to_pylist()}
    assert len(rows) == res.items
    row = rows["s000000000123"]
    assert row["label"] == 123 % 10 and row["prompt"] is None and (row["width"], row["height"]) == (32, 32)
    png = (out / row["image"]["path"]).read_bytes()
    assert row["image"]["bytes"] == png
    import hashlib

    assert row["png_sha256"] == hashlib.sha256(png).hexdigest()
    Image.open(io.BytesIO(row["image"]["bytes"])).load()

    # rejected prompts recorded with a reason, counted in the manifest, never silently dropped
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert rejected == [{"line": 4, "prompt": "a gory four", "reason": "blocked term 'gory'"}]
    assert manifest["counts"]["rejected"] == 1 and manifest["counts"]["items"] == res.items

    # rerun of a complete job is a no-op that says so
    said = []
    again = run_generate(job(tmp_path, package, prompts=prompts_file), date=DATE, progress=False, log=said.append)
    assert again.skipped and "already complete" in said[0]
    assert files_of(str(out)) == files_of(str(out))


def test_bytes_do_not_depend_on_actors_batch_size_or_cpus(ray_session, package, prompts_file, tmp_path):
    a = run_generate(job(tmp_path / "a", package, prompts=prompts_file, actors=1, batch=16), date=DATE, progress=False)
    b = run_generate(job(tmp_path / "b", package, prompts=prompts_file, actors=2, batch=64), date=DATE, progress=False)
    fa, fb = files_of(a.output), files_of(b.output)
    assert len(fa) > 300
    assert fa == fb  # every PNG, Parquet part and rejected.jsonl byte-identical
    # one actor holding both CPUs computes as the half-CPU actors do (one torch thread each)
    two_cpus = job(tmp_path / "c", package, prompts=prompts_file, actors=1, batch=64)
    two_cpus.generate.scaling.num_cpus = 2
    c = run_generate(two_cpus, date=DATE, progress=False)
    assert files_of(c.output) == fa


def test_parquet_only_and_different_job_refused(ray_session, package, tmp_path):
    res = run_generate(job(tmp_path, package, count=50, formats=["parquet"]), date=DATE, progress=False)
    out = Path(res.output)
    assert not (out / "images").exists()
    assert pq.read_table(out / "data").num_rows == 50
    assert verify(res.output).ok
    with pytest.raises(PipelineError, match="different job spec"):
        run_generate(job(tmp_path, package, count=60, formats=["parquet"]), date=DATE, progress=False)


def test_resume_after_partial_run_removes_orphans(ray_session, package, tmp_path):
    clean = run_generate(job(tmp_path / "clean", package), date=DATE, progress=False)
    # simulate a crash: a finished run loses its publish and one shard commit, plus a torn leftover
    res = run_generate(job(tmp_path / "crash", package), date=DATE, progress=False)
    out = Path(res.output)
    for name in ("_SUCCESS", "manifest.json", "_shards/s000001.json"):
        (out / name).unlink()
    (out / "images" / "s000001" / "s000000000150.png").write_bytes(b"torn")
    # what Store.write leaves when killed mid-write: the item's name plus .tmp-<12 hex>
    (out / "images" / "s000001" / "s000000000151.png.tmp-0123456789ab").write_bytes(b"leftover")
    said = []
    again = run_generate(job(tmp_path / "crash", package), date=DATE, progress=False, log=said.append)
    assert not again.skipped and again.shards_skipped == 2 and again.items == 300
    assert "2/3 shards already committed" in said[0]
    assert verify(again.output).ok
    assert files_of(again.output) == files_of(clean.output)


def test_bad_prompt_line_names_the_line(ray_session, package, tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_bytes(b'{"prompt": "one", "label": 1}\n{"prompt": "two", "label": 2\n')
    with pytest.raises(PipelineError, match=r"p\.jsonl:2: invalid JSON"):
        run_generate(job(tmp_path, package, prompts=str(p)), date=DATE, progress=False)
    assert not (tmp_path / "t").exists()  # nothing written
    p.write_bytes(b'{"prompt": "one", "label": 1}\n\xff\xfe\n{"prompt": "three", "label": 12}\n')
    spec = job(tmp_path, package, count=10, prompts=str(p))
    spec.generate.prompts.on_error = "skip"
    res = run_generate(spec, date=DATE, progress=False)
    rejected = [json.loads(line) for line in (Path(res.output) / "rejected.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in rejected] == [(2, "not valid UTF-8"), (3, "label 12 is outside 0..9")]
    assert res.items == 11 and verify(res.output).ok


def test_cli_generate_and_errors(ray_session, package, prompts_file, tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text(f"""
name: cli
storage: {{root: {tmp_path}}}
generate:
  model: {package}
  seeds: {{count: 40}}
  prompts: {{uri: {prompts_file}}}
  shard_size: 20
""")
    runner = CliRunner()
    r = runner.invoke(app, ["generate", str(spec), "--date", DATE])
    assert r.exit_code == 0, r.output
    assert "48 items" in r.output and f"output: {tmp_path}/generated/cli/{DATE}" in r.output
    r = runner.invoke(app, ["verify", f"{tmp_path}/generated/cli/{DATE}"])
    assert r.exit_code == 0 and "OK:" in r.output
    r = runner.invoke(app, ["generate", str(spec), "--date", DATE])
    assert r.exit_code == 0 and "already complete" in r.output
    # a missing model package: one line, exit 1, no traceback
    r = runner.invoke(app, ["generate", str(spec), "--date", DATE, "--set", f"generate.model={tmp_path}/nope"])
    assert r.exit_code == 1 and "no published model package" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["generate", str(spec), "--date", "28-11-2026"])
    assert r.exit_code == 2 and "expected YYYY-MM-DD" in r.output


def test_unconditional_model_refuses_prompts(ray_session, tmp_path, prompts_file):
    pkg = make_package(tmp_path / "uncond", conditional=False)
    with pytest.raises(PipelineError, match="takes no conditioning"):
        run_generate(job(tmp_path, pkg, prompts=prompts_file), date=DATE, progress=False)


def test_s3_output_verifies(ray_session, package, prompts_file, s3_storage):
    storage = s3_storage.model_dump(mode="json", exclude={"root"})
    root = s3_storage.root
    res = run_generate(job(root, package, count=120, shard_size=50, prompts=prompts_file, storage=storage),
                       date=DATE, progress=False)
    assert res.output == f"{root}/t/{DATE}"
    report = verify(res.output, s3_storage)
    assert report.ok, report.lines()
    # 127 PNGs, 4 Parquet parts (3 seed shards + 1 prompt shard), _job.json, rejected.jsonl
    assert report.files_checked == 127 + 4 + 2
    store = Store(res.output, s3_storage)
    names = store.list("images")
    assert len(names) == 127 and "images/p000000/p000000001-00000.png" in names


def test_sigkill_generation_actor_mid_run(ray_session, slow_package, tmp_path):
    import ray
    from ray.util.state import list_actors

    gcs = ray.get_runtime_context().gcs_address  # other Ray clusters may run on this machine
    killed: list[int] = []
    shards = tmp_path / "t" / DATE / "_shards"

    def watch():
        pid, deadline = None, time.time() + 120
        while time.time() < deadline and not killed:
            if pid is None:  # find the actor first (the state API can be slow on a busy machine)
                alive = [a for a in list_actors(address=gcs, filters=[("state", "=", "ALIVE")], limit=1000)
                         if "ShardWorker" in (a.class_name or "")]
                pid = alive[0].pid if alive else None
            elif len(list(shards.glob("*.json"))) >= 2:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    res = run_generate(job(tmp_path, slow_package, count=8000, shard_size=250, batch=250), date=DATE, progress=False)
    watcher.join(1)
    assert killed, "the run finished before an actor could be killed"
    assert res.items == 8000
    assert verify(res.output).ok
    clean = run_generate(job(tmp_path / "clean", slow_package, count=8000, shard_size=250, batch=250), date=DATE,
                         progress=False)
    assert files_of(res.output) == files_of(clean.output)


def job_file(tmp_path: Path, pkg: str, *, count: int, actors: int) -> Path:
    """The same job as ``job(tmp_path, pkg, count=count, shard_size=250, batch=250)``, as a YAML file."""
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(job(tmp_path, pkg, count=count, shard_size=250, batch=250, actors=actors)
                                   .model_dump(mode="json", exclude_none=True)))
    return spec


def test_kill_driver_then_rerun_resumes(ray_session, slow_package, tmp_path):
    import ray

    spec = job_file(tmp_path, slow_package, count=6000, actors=2)
    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address)  # drivers join this cluster
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "generate", str(spec), "--date", DATE],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    shards = tmp_path / "t" / DATE / "_shards"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(shards.glob("*.json"))) < 3 and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    out = tmp_path / "t" / DATE
    assert not (out / "_SUCCESS").exists()
    committed_before = len(list(shards.glob("*.json")))
    assert 3 <= committed_before < 24

    said = []
    from pipeline.specs import load_job

    res = run_generate(load_job(spec), date=DATE, progress=False, log=said.append)
    assert res.items == 6000 and res.shards_skipped >= committed_before
    assert "already committed" in said[0]
    assert verify(res.output).ok
    pngs = list(out.glob("images/*/*.png"))
    assert len(pngs) == 6000 and not list(out.rglob("*.tmp-*"))
    clean = run_generate(job(tmp_path / "clean", slow_package, count=6000, shard_size=250, batch=250), date=DATE,
                         progress=False)
    assert files_of(res.output) == files_of(clean.output)


def test_two_runs_for_the_same_date_at_once(ray_session, slow_package, tmp_path):
    """Both finish cleanly; the second waits for the first's lock; the result equals a clean run."""
    import ray

    spec = job_file(tmp_path, slow_package, count=3000, actors=1)
    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address)  # drivers join this cluster
    cmd = [sys.executable, "-m", "pipeline", "generate", str(spec), "--date", DATE]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outs = [p.communicate(timeout=240)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert any("already complete" in o for o in outs), outs
    out = tmp_path / "t" / DATE
    assert verify(str(out)).ok
    clean = run_generate(job(tmp_path / "clean", slow_package, count=3000, shard_size=250, batch=250), date=DATE,
                         progress=False)
    assert files_of(str(out)) == files_of(clean.output)
