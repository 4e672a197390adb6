"""Secrets never leak into outputs; no output path escapes the output root."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.generate import run_generate
from pipeline.specs import SpecError, render_output, validate_job
from pipeline.storage import StorageError, Store, safe_relpath

from helpers import S3_SECRET, make_package

DATE = "2026-11-28"


def test_secrets_never_reach_any_output(ray_session, s3_storage, tmp_path, capfd):
    """Generate to S3 with real credentials; grep every byte written (and printed) for the secret."""
    pkg = make_package(tmp_path / "model")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a zero", "label": 0}\n{"prompt": "a one", "label": 1}\n')
    spec = validate_job({
        "name": "sec", "env": ["AWS_SECRET_ACCESS_KEY"],
        "storage": s3_storage.model_dump(mode="json"),
        "generate": {"model": pkg, "seeds": {"count": 20}, "prompts": {"uri": str(prompts)}, "shard_size": 10,
                     "output": "{root}/{name}/{date}"},
    })
    res = run_generate(spec, date=DATE, progress=True)
    store = Store(res.output, s3_storage)
    blobs = {rel: store.read(rel) for rel in store.list()}
    assert any(rel.endswith(".png") for rel in blobs) and any(rel.endswith(".parquet") for rel in blobs)
    secret = S3_SECRET.encode()
    leaks = [rel for rel, data in blobs.items() if secret in data]
    assert leaks == []
    manifest = json.loads(blobs["manifest.json"])
    assert manifest["spec"]["storage"]["credentials"]["secret_key_env"] == "AWS_SECRET_ACCESS_KEY"
    out, err = capfd.readouterr()
    assert S3_SECRET not in out + err
    # and the CLI's resolved-spec printout shows names, never values
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps(spec.model_dump(mode="json", exclude_none=True)))
    r = CliRunner().invoke(app, ["validate", str(job)])
    assert r.exit_code == 0 and S3_SECRET not in r.output


@pytest.mark.parametrize("template", ["{root}/../escape/{date}", "/abs/{name}/../../etc", "{root}/{date}/.."])
def test_output_template_cannot_climb(template):
    with pytest.raises(SpecError, match="generate.output"):
        validate_job({"name": "x", "generate": {"model": "m", "seeds": {"count": 1}, "output": template}})


@pytest.mark.parametrize("run_id", ["../x", "a/b", "..", "/etc", "x\\..\\y", "s3://b/k"])
def test_run_id_cannot_become_a_path(run_id):
    job = validate_job({"name": "x", "generate": {"model": "m", "seeds": {"count": 1}}})
    with pytest.raises(SpecError, match="--run-id"):
        render_output(job, DATE, run_id)


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".hidden", "x y"])
def test_job_name_cannot_become_a_path(name):
    with pytest.raises(SpecError, match="name"):
        validate_job({"name": name, "generate": {"model": "m", "seeds": {"count": 1}}})


@pytest.mark.parametrize("rel", ["../a", "a/../../b", "/etc/passwd", "s3://other/x", "a//b", ""])
def test_store_refuses_escaping_relative_paths(rel, tmp_path):
    with pytest.raises(StorageError):
        safe_relpath(rel)
    with pytest.raises(StorageError):
        Store(str(tmp_path)).write(rel, b"x")


def test_prompt_text_never_becomes_a_path(ray_session, tmp_path):
    pkg = make_package(tmp_path / "model")
    prompts = tmp_path / "p.jsonl"
    nasty = ["../../../../tmp/pwned", "/etc/passwd", "s3://other-bucket/x", "..\\..\\win", "a/b/c.png", "%2e%2e/"]
    prompts.write_text("".join(json.dumps({"prompt": p, "label": i}) + "\n" for i, p in enumerate(nasty)))
    spec = validate_job({"name": "paths", "storage": {"root": str(tmp_path / "out")},
                         "generate": {"model": pkg, "prompts": {"uri": str(prompts)}, "shard_size": 4}})
    res = run_generate(spec, date=DATE, progress=False)
    out = Path(res.output)
    written = [p for p in (tmp_path).rglob("*") if p.is_file()]
    assert all(out in p.parents or p.parent == tmp_path or (tmp_path / "model") in p.parents for p in written)
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert names == [f"images/p00000{k // 4}/p00000000{k + 1}-00000.png" for k in range(len(nasty))]
    assert not Path("/tmp/pwned").exists()
