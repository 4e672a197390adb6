"""Issue 12: sixteen defects found by attacking the release as a careless or hostile user would.

Each test is named after its defect and failed on the code before the fix (see docs/reliability.md).
The two high items are proven end to end through `aigc run`: a folder of user files given as the
output survives byte for byte, and a unique secret reaches no file of the Ray session's temp dir.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.errors import PipelineError
from pipeline.generate import ShardPlan, plan_shards, run_generate
from pipeline.image.data import decode_image
from pipeline.package import PackageError, load_package
from pipeline.prompts import load_prompts
from pipeline.safety import PromptFilter
from pipeline.specs import PromptsSpec, SpecError, check_run_id, load_job, validate_job
from pipeline.storage import Store, commit_shard, publish, verify

from helpers import S3_KEY, make_package

DATE = "2026-11-28"
ROOT = Path(__file__).resolve().parents[1]
NO_FILTER = PromptFilter([], [])


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` → sha256 (symlinks by their target text), to compare before and after."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[p.relative_to(root).as_posix()] = "link:" + os.readlink(p)
        elif p.is_file():
            out[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def gen_job(tmp_path: Path, model: str, output: str, **extra) -> dict:
    return {"name": "hard", "storage": {"root": str(tmp_path / "root")},
            "generate": {"model": model, "seeds": {"count": 20}, "shard_size": 10, "output": output,
                         "scaling": {"num_actors": 1}}, **extra}


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> str:
    return make_package(tmp_path_factory.mktemp("pkg") / "model")


# --------------------------------------------------------------------------------------------- 1 (high)
def user_folder(path: Path) -> Path:
    """A user's data set: images and Parquet under the very names a run writes into, plus notes."""
    (path / "images" / "s000000").mkdir(parents=True)
    (path / "data").mkdir()
    Image.new("L", (8, 8), 7).save(path / "images" / "cat.png")
    (path / "images" / "s000000" / "s000000000003.png").write_bytes(b"my own image, same name as an item")
    (path / "data" / "part-s000000.parquet").write_bytes(b"my own table")
    (path / "notes.txt").write_text("keep me\n")
    return path


def test_generate_deletes_files_it_did_not_write_through_aigc_run(ray_session, package, tmp_path):
    """A folder of user files given as generate.output survives byte for byte; the run stops with one line."""
    folder = user_folder(tmp_path / "dataset")
    before = tree_digest(folder)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(gen_job(tmp_path, package, str(folder))))
    r = CliRunner().invoke(app, ["run", str(job), "--date", DATE])
    assert r.exit_code == 1, r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and str(folder) in lines[0] and "is not empty" in lines[0] and "generate.output" in lines[0]
    assert tree_digest(folder) == before
    assert not (folder / ".lock").exists() and not (folder / "_job.json").exists()
    # --set generate.output=. from a project folder is the same refusal
    r = CliRunner().invoke(app, ["run", str(job), "--date", DATE, "--set", f"generate.output={folder}/."])
    assert r.exit_code == 1 and "is not empty" in r.output and tree_digest(folder) == before


def test_generate_removes_only_names_its_own_plan_could_produce_and_never_follows_symlinks(ray_session, package,
                                                                                            tmp_path):
    """Files a user drops into a run's own output (after it started) and symlinks there are left alone."""
    spec = validate_job(gen_job(tmp_path, package, "{root}/gen/{date}"))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "s000000000001.png").write_bytes(b"precious")
    out = Path(run_generate(spec, date=DATE, progress=False).output)
    for marker in ("manifest.json", "_SUCCESS"):
        (out / marker).unlink()  # as if the publish had crashed: the rerun publishes again
    (out / "images" / "s000000" / "s000000000001.png").unlink()
    (out / "images" / "s000000" / "s000000000001.png").symlink_to(outside / "s000000000001.png")
    (out / "images" / "s000009").symlink_to(outside)  # a symlinked folder under a planned-looking name
    (out / "images" / "holiday.png").write_bytes(b"user file")
    (out / "images" / "s000000" / "s000000000099.png").write_bytes(b"not an item of this shard")
    (out / "images" / "s000001" / "s000000000011.png.tmp-0123456789ab").write_bytes(b"a crashed write of ours")
    run_generate(spec, date=DATE, progress=False)
    assert (outside / "s000000000001.png").read_bytes() == b"precious"
    assert (out / "images" / "s000009").is_symlink()
    assert (out / "images" / "holiday.png").read_bytes() == b"user file"
    assert (out / "images" / "s000000" / "s000000000099.png").exists()
    assert not (out / "images" / "s000001" / "s000000000011.png.tmp-0123456789ab").exists()


@pytest.mark.parametrize("output,data,where", [
    ("{root}", None, "storage.root"),
    ("{root}/models/x", None, "models/"),
    ("{root}/gen/{date}", "{root}/gen", "inside the training data"),
    ("{root}/gen/{date}", "{root}/gen/2026-11-28/images", "a folder above the training data"),
    ("{root}/{name}-{date}", "{root}/hard-2026/x", "a folder above the training data"),
])
def test_output_overlapping_training_data_or_storage_root_is_refused_at_validation(tmp_path, output, data, where):
    spec = gen_job(tmp_path, "m", output)
    root = str(tmp_path / "root")
    if data:
        spec["train"] = {"data": {"source": "images", "uri": data.replace("{root}", root)}}
    with pytest.raises(SpecError, match=f"generate.output: must not .*{where}"):
        validate_job(spec)


# --------------------------------------------------------------------------------------------- 2 (high)
def test_s3_secret_reaches_no_file_of_the_ray_session_through_aigc_run(moto_server, tmp_path, monkeypatch):
    """Train (S3 checkpoints) and generate to S3 with a unique secret; grep every file Ray wrote for it."""
    secret = f"aigc-canary-{uuid.uuid4().hex}"
    bucket = moto_server.bucket()
    spec = {
        "name": "canary", "env": ["AWS_SECRET_ACCESS_KEY"],
        "storage": {"root": f"s3://{bucket}/r", "endpoint": moto_server.endpoint, "region": "us-east-1",
                    "credentials": {"access_key_env": "AWS_ACCESS_KEY_ID", "secret_key_env": "AWS_SECRET_ACCESS_KEY"}},
        "train": {"data": {"limit": 64}, "epochs": 1, "batch_size": 32,
                  "model": {"z_dim": 8, "g_width": 8, "d_width": 8}},
        "generate": {"seeds": {"count": 20}, "shard_size": 10, "scaling": {"num_actors": 1}},
    }
    job = tmp_path / "canary.yaml"
    job.write_text(yaml.safe_dump(spec))
    ray_tmp = Path(tempfile.mkdtemp(prefix="aigc-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": secret, "RAY_TMPDIR": str(ray_tmp),
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    try:
        r = subprocess.run([sys.executable, "-m", "pipeline", "run", str(job), "--date", DATE, "--verify"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        assert secret not in r.stdout + r.stderr
        files = [p for p in ray_tmp.rglob("*") if p.is_file() and not p.is_symlink()]
        logs = [p for p in files if "/logs/" in p.as_posix()]
        assert any(p.name.startswith("runtime_env_agent") for p in logs) and len(logs) > 10
        leaks = []
        for p in files:
            try:
                if secret.encode() in p.read_bytes():
                    leaks.append(str(p.relative_to(ray_tmp)))
            except OSError:  # a socket
                continue
        assert leaks == []
        # nor in the run's own log, where Ray's output went (its path is the run's last line)
        log = re.search(r"^log: (\S+)$", r.stdout + r.stderr, re.M)
        assert log and Path(log.group(1)).is_file(), r.stdout[-1000:] + r.stderr[-1000:]
        text = Path(log.group(1)).read_text(errors="replace")
        assert "(raylet)" in text or "Ray" in text  # it really holds Ray's lines
        assert secret not in text
        # nor in any object the run wrote
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        store = Store(f"s3://{bucket}", validate_job(spec).storage)
        assert any(rel.endswith(".png") for rel in store.list())
        written = [rel for rel in store.list() if secret.encode() in store.read(rel)]
        assert written == []
    finally:
        import shutil

        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_worker_env_never_goes_into_runtime_env(monkeypatch, tmp_path):
    """What carries credentials to workers shows names only, and submit sends no env values at all."""
    from pipeline.storage import worker_env
    from pipeline.submit import runtime_env

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "canary-value-123")
    spec = validate_job({"name": "x", "env": ["AWS_SECRET_ACCESS_KEY"], "generate": {"model": "m",
                                                                                       "seeds": {"count": 1}}})
    env = worker_env(spec)
    assert "canary-value-123" not in repr(env) + str(env) and "AWS_SECRET_ACCESS_KEY" in repr(env)
    (tmp_path / "jobs").mkdir()
    lines: list[str] = []
    renv = runtime_env(spec, tmp_path, log=lines.append)
    assert "env_vars" not in renv and "canary-value-123" not in json.dumps(renv) + "".join(lines)
    assert any("AWS_SECRET_ACCESS_KEY" in ln and "never uploaded" in ln for ln in lines)


# --------------------------------------------------------------------------------------------- 3
@pytest.mark.parametrize("version", ["../../../x", "a/b", "..", "v1\n", ".hidden"])
def test_train_version_cannot_become_a_path(version):
    with pytest.raises(SpecError, match="train.version"):
        validate_job({"name": "x", "train": {"version": version}})


# --------------------------------------------------------------------------------------------- 4
BAD_LINES = {
    '{"prompt": "a", "n": 1e400}': "'n' must be a whole number",
    '{"prompt": "a", "label": 1e400}': "'label' must be a whole number",
    '{"prompt": "a", "n": Infinity}': "invalid JSON",
    '{"prompt": "a", "label": -Infinity}': "invalid JSON",
    '{"prompt": "a", "n": ' + "9" * 5000 + "}": "invalid JSON",
    "[" * 100_000: "invalid JSON",
    '{"prompt": "bad \\ud800 text"}': "lone surrogate",
}


@pytest.mark.parametrize("line", list(BAD_LINES), ids=["n-1e400", "label-1e400", "Infinity", "-Infinity",
                                                      "5000-digits", "nested", "surrogate"])
def test_prompt_lines_that_crashed_the_run_are_line_rejections(tmp_path, line):
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "fine", "label": 1}\n' + line + "\n")
    with pytest.raises(PipelineError, match=rf"p.jsonl:2: .*{BAD_LINES[line]}"):
        load_prompts(PromptsSpec(uri=str(p)), None, num_classes=10, prompt_filter=NO_FILTER)
    ps = load_prompts(PromptsSpec(uri=str(p), on_error="skip"), None, num_classes=10, prompt_filter=NO_FILTER)
    assert [x.line for x in ps.prompts] == [1] and [r["line"] for r in ps.rejected] == [2]
    json.dumps(ps.rejected, ensure_ascii=False).encode("utf-8")  # rejected.jsonl can be written


# --------------------------------------------------------------------------------------------- 5
def _tamper(uri: str, **model) -> None:
    meta_path = Path(uri) / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["model"].update(model)
    meta_path.write_text(json.dumps(meta))


def test_package_with_a_huge_architecture_is_refused_before_allocating(tmp_path):
    """model.json claims 12.9 billion parameters; the load is refused without building them."""
    uri = make_package(tmp_path / "m")
    meta = json.loads((Path(uri) / "model.json").read_text())
    meta["model"] = {"arch": "bytegpt", "n_layer": 64, "n_head": 64, "n_embd": 4096, "block_size": 4096}
    (Path(uri) / "model.json").write_text(json.dumps(meta))
    code = ("import resource, sys\nfrom pipeline.package import load_package, PackageError\n"
            "try:\n    load_package(sys.argv[1])\nexcept PackageError as e:\n    print('refused:', e)\n"
            "print('peak_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    r = subprocess.run([sys.executable, "-c", code, uri], capture_output=True, text=True, timeout=120)
    assert "refused:" in r.stdout and "parameters, over the limit" in r.stdout, r.stdout + r.stderr
    peak_gib = int(r.stdout.split("peak_kib")[1]) / 2**20
    assert peak_gib < 2, f"peak RSS {peak_gib:.1f} GiB: the architecture was allocated"


def test_package_whose_weights_do_not_fit_is_refused_from_the_header(tmp_path):
    uri = make_package(tmp_path / "m")
    _tamper(uri, g_width=512)  # a larger G than the weights hold: caught from the safetensors header
    with pytest.raises(PackageError, match=r"weights do not fit .*\(.* is \[.*\], the architecture needs"):
        load_package(uri)


def test_package_without_sha256_is_refused(tmp_path):
    uri = make_package(tmp_path / "m")
    meta = json.loads((Path(uri) / "model.json").read_text())
    del meta["model_sha256"]
    (Path(uri) / "model.json").write_text(json.dumps(meta))
    with pytest.raises(PackageError, match="names no model_sha256"):
        load_package(uri)


# --------------------------------------------------------------------------------------------- 6
def test_includes_that_fan_out_are_read_once(tmp_path, monkeypatch):
    """Thirty files, each including the next twice: 2^30 reads before, 30 now."""
    for i in range(30):
        (tmp_path / f"f{i}.yaml").write_text(yaml.safe_dump({"include": [f"f{i + 1}.yaml"] * 2}))
    (tmp_path / "f30.yaml").write_text(yaml.safe_dump({"generate": {"model": "m", "seeds": {"count": 1}}}))
    (tmp_path / "job.yaml").write_text(yaml.safe_dump({"name": "fan", "include": ["f0.yaml"]}))
    reads: list[str] = []
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: (reads.append(self.name), real(self, *a, **k))[1])
    job = load_job(tmp_path / "job.yaml")
    assert job.generate is not None and sorted(reads) == sorted({*reads}) and len(reads) == 32


def test_includes_are_bounded(tmp_path):
    for i in range(70):
        (tmp_path / f"g{i}.yaml").write_text(yaml.safe_dump({"include": [f"g{i + 1}.yaml"]}))
    (tmp_path / "g70.yaml").write_text("{}")
    (tmp_path / "job.yaml").write_text(yaml.safe_dump({"name": "deep", "include": ["g0.yaml"]}))
    with pytest.raises(SpecError, match="include: more than 64 files"):
        load_job(tmp_path / "job.yaml")


# --------------------------------------------------------------------------------------------- 7
CREDENTIAL_FILES = [
    ".netrc", "id_rsa", "keys/id_ed25519", ".git-credentials", "secrets.yaml", "conf/secrets.json",
    "terraform.tfvars", "token.txt", ".kube/config", ".docker/config.json", ".pypirc", ".npmrc", ".s3cfg",
    ".boto", "rclone.conf", ".envrc", ".config/gcloud/application_default_credentials.json",
    "service-account.json", "prod-sa-key.json", "cert.p12", "cert.pfx",
]


def test_submit_uploads_no_credential_files_and_names_them(tmp_path):
    """Ray's own packaging, with our excludes, leaves every credential-like file out; submit names each."""
    from ray._private.runtime_env.packaging import create_package

    from pipeline.submit import runtime_env

    wd = tmp_path / "project"
    (wd / "jobs").mkdir(parents=True)
    (wd / "jobs" / "a.yaml").write_text("name: a\n")
    for rel in CREDENTIAL_FILES:
        (wd / rel).parent.mkdir(parents=True, exist_ok=True)
        (wd / rel).write_text("secret\n")
    spec = validate_job({"name": "a", "generate": {"model": "m", "seeds": {"count": 1}}})
    lines: list[str] = []
    renv = runtime_env(spec, wd, log=lines.append)
    target = tmp_path / "pkg.zip"
    create_package(str(wd), target, include_gitignore=True, excludes=renv["excludes"])
    names = zipfile.ZipFile(target).namelist()
    assert "jobs/a.yaml" in names
    assert [n for n in names if not n.startswith("jobs")] == [], names
    note = [ln for ln in lines if "credential-like" in ln]
    assert len(note) == 1 and all(rel.split("/")[0] in note[0] for rel in CREDENTIAL_FILES)


# --------------------------------------------------------------------------------------------- 8
def test_duplicate_yaml_keys_are_a_spec_error(tmp_path):
    job = tmp_path / "dup.yaml"
    job.write_text("name: d\ngenerate:\n  model: m\n  seeds: {count: 1}\n  safety:\n    blocklist: [gore]\n"
                   "  safety: {}\n")
    with pytest.raises(SpecError, match=r"line 7: generate\.safety: duplicate key"):
        load_job(job)


# --------------------------------------------------------------------------------------------- 9
def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def test_16bit_grey_png_is_scaled_not_clipped():
    data = _png(Image.fromarray(np.full((8, 8), 30000, np.uint16)))
    assert int(decode_image(data, 8, 1, "x")[0, 0, 0]) == round(30000 / 65535 * 255)


def test_exif_orientation_is_applied():
    img = Image.new("L", (8, 8), 0)
    img.paste(255, (0, 0, 8, 2))  # a white band along the top as stored
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": the band shows on the right
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes(), quality=100)
    px = decode_image(buf.getvalue(), 8, 1, "x")[0]
    assert px[:, -1].mean() > 200 and px[:, 0].mean() < 50


def test_alpha_is_composited_on_the_background_the_spec_names():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[4:, :, 3] = 255  # top half transparent red, bottom half opaque red
    data = _png(Image.fromarray(rgba, "RGBA"))
    px = decode_image(data, 8, 3, "x", (0, 0, 255))
    assert list(px[:, 0, 0]) == [0, 0, 255] and list(px[:, 7, 0]) == [255, 0, 0]
    assert validate_job({"name": "x", "train": {"data": {"source": "images", "uri": "/d", "background": "#00f"}}})
    with pytest.raises(SpecError, match="train.data.background"):
        validate_job({"name": "x", "train": {"data": {"source": "images", "uri": "/d", "background": "blue-ish"}}})


# --------------------------------------------------------------------------------------------- 10
def test_unplannable_seed_work_is_refused_at_validation():
    with pytest.raises(SpecError, match=r"generate.seeds.count: .* shards, over the limit of 1,000,000"):
        validate_job({"name": "x", "generate": {"model": "m", "seeds": {"count": 10**10}, "shard_size": 1}})


def test_prompt_file_asking_for_unplannable_work_is_refused_at_its_line(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text("".join(json.dumps({"prompt": f"p{i}", "n": 100_000}) + "\n" for i in range(10_000)))
    with pytest.raises(PipelineError, match=r"p.jsonl:11: the prompts so far ask for 1,100,000 items"):
        load_prompts(PromptsSpec(uri=str(p)), None, num_classes=None, prompt_filter=NO_FILTER, shard_size=1)


def test_a_small_prompt_file_asking_for_a_billion_items_plans_compactly(tmp_path):
    """270 KB asking for 675 million items: the plan holds one segment per prompt and shard, not the items."""
    p = tmp_path / "p.jsonl"
    p.write_text("".join(json.dumps({"prompt": f"prompt number {i:05d}", "n": 100_000}) + "\n" for i in range(6750)))
    assert 200_000 < p.stat().st_size < 400_000
    spec = validate_job({"name": "x", "generate": {"model": "m", "prompts": {"uri": str(p)},
                                                   "shard_size": 1_000_000}})
    ps = load_prompts(spec.generate.prompts, None, num_classes=None, prompt_filter=NO_FILTER, shard_size=1_000_000)
    shards = plan_shards(spec, ps)
    assert len(shards) == 675 and sum(s.items for s in shards) == 675_000_000
    assert max(len(s.segments) for s in shards) == 10 and len(json.dumps([s.row() for s in shards])) < 2_000_000


def test_prompt_file_size_is_checked_before_it_is_read(tmp_path, monkeypatch):
    import pipeline.prompts as prompts_mod

    p = tmp_path / "p.txt"
    p.write_text("a prompt\n" * 1000)
    monkeypatch.setattr(prompts_mod, "MAX_FILE_BYTES", 100)
    monkeypatch.setattr(Store, "read", lambda self, rel: pytest.fail("read before the size check"))
    with pytest.raises(PipelineError, match="9,000 bytes is over the 100-byte limit"):
        load_prompts(PromptsSpec(uri=str(p)), None, num_classes=None, prompt_filter=NO_FILTER)


def test_compact_prompt_plan_yields_the_same_items_as_before():
    """Segments expand to exactly the ids and seeds that one item per row gave (the bytes of old runs)."""
    from pipeline.generate import item_seed, prompt_item_id, shard_items

    plan = ShardPlan("p000000", segments=[[3, 0, 2, 1, "a"], [5, 0, 1, None, "b"]])
    items = shard_items(plan.row(), 7, None)
    assert [(i.item_id, i.seed, i.label, i.prompt) for i in items] == [
        (prompt_item_id(3, 0), item_seed(7, 1, 3, 0), 1, "a"), (prompt_item_id(3, 1), item_seed(7, 1, 3, 1), 1, "a"),
        (prompt_item_id(5, 0), item_seed(7, 1, 5, 0), None, "b")]


# --------------------------------------------------------------------------------------------- 11
@pytest.mark.parametrize("key,value", [
    ("generate.scaling.num_cpus", ".inf"), ("generate.scaling.num_gpus", ".nan"),
    ("train.scaling.cpus_per_worker", ".inf"), ("train.lr_g", ".nan"), ("evaluate.gate.max_fld", ".inf"),
])
def test_non_finite_scaling_values_are_spec_errors(tmp_path, key, value):
    job = tmp_path / "j.yaml"
    job.write_text(yaml.safe_dump({"name": "x", "train": {}, "evaluate": {}, "generate": {"seeds": {"count": 1}}}))
    with pytest.raises(SpecError, match=key.replace(".", r"\.")):
        load_job(job, [f"{key}={value}"])


@pytest.mark.parametrize("resources,match", [({"GPU": 1}, "GPU needs train.scaling.use_gpu"),
                                             ({"CPU": 2}, "CPU is set by"), ({"node_a": -1}, "greater than")])
def test_worker_resources_that_ray_would_refuse_are_spec_errors(resources, match):
    with pytest.raises(SpecError, match=match):
        validate_job({"name": "x", "train": {"scaling": {"resources_per_worker": resources}}})


# --------------------------------------------------------------------------------------------- 12
def test_a_trailing_newline_fails_the_name_run_id_and_env_name_checks():
    for spec, field in [({"name": "x\n"}, "name"), ({"name": "x", "env": ["AWS_KEY\n"]}, "env"),
                        ({"name": "x", "storage": {"credentials": {"secret_key_env": "S\n"}}}, "secret_key_env")]:
        spec = {**spec, "generate": {"model": "m", "seeds": {"count": 1}}}
        with pytest.raises(SpecError, match=field):
            validate_job(spec)
    with pytest.raises(SpecError, match="--run-id"):
        check_run_id("nightly\n")


# --------------------------------------------------------------------------------------------- 13
TOKENS = ["ghp_" + "aB3" * 12, "sk_live_" + "51HxYz" * 4, "github_pat_11ABCDEFG0" + "x1Y2" * 8,
          "xoxb-" + "1234567890" * 3, "hf_" + "AbCdEfGh12" * 3]


@pytest.mark.parametrize("token", TOKENS, ids=["github", "stripe", "github-pat", "slack", "huggingface"])
def test_token_shaped_env_names_are_refused_and_never_echoed(token, tmp_path):
    for spec in ({"name": "x", "env": [token]}, {"name": "x", "storage": {"credentials": {"secret_key_env": token}}}):
        spec["generate"] = {"model": "m", "seeds": {"count": 1}}
        with pytest.raises(SpecError) as err:
            validate_job(spec)
        assert token not in str(err.value) and "never put a secret" in str(err.value)


@pytest.mark.parametrize("key,value", [("storage.endpoint", "https://user:pass-w0rd@minio.local:9000"),
                                       ("storage.root", "s3://AKIAKEY:topsecretvalue@bucket/prefix"),
                                       ("generate.model", "gs://me:hunter2@bucket/models/m")])
def test_credentials_inside_uris_are_refused_and_never_echoed(tmp_path, key, value):
    job = tmp_path / "j.yaml"
    job.write_text(yaml.safe_dump({"name": "x", "generate": {"model": "m", "seeds": {"count": 1}}}))
    r = CliRunner().invoke(app, ["validate", str(job), "--set", f"{key}={value}"])
    assert r.exit_code == 2 and "must not carry credentials" in r.output
    assert value.split("://")[1].split("@")[0] not in r.output


def test_plain_env_names_still_pass():
    spec = validate_job({"name": "x", "env": ["AWS_SECRET_ACCESS_KEY", "HF_TOKEN", "MY_SERVICE_API_KEY_2", "hf_home"],
                         "generate": {"model": "m", "seeds": {"count": 1}}})
    assert spec.env[-1] == "hf_home"


# --------------------------------------------------------------------------------------------- 14
def _published(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    store = Store(str(out))
    rec = commit_shard(store, "s000000", {"images/s000000/a.png": b"A" * 10, "images/s000000/b.png": b"B" * 10},
                       {"items": 2})
    publish(store, kind="generate", job="j", spec=None, counts={"items": 2, "shards": 1, "files": 2},
            shards={"s000000": rec})
    return out


def test_verify_does_not_follow_symlinks_out_of_the_output(tmp_path):
    out = _published(tmp_path)
    copy = tmp_path / "elsewhere.png"
    copy.write_bytes(b"A" * 10)  # the very bytes the manifest expects
    (out / "images/s000000/a.png").unlink()
    (out / "images/s000000/a.png").symlink_to(copy)
    report = verify(str(out))
    assert not report.ok and any("a.png: not a regular file" in p for p in report.problems)


@pytest.mark.parametrize("target", ["/dev/zero", "fifo"])
def test_verify_never_reads_a_device_or_a_fifo(tmp_path, target):
    out = _published(tmp_path)
    (out / "images/s000000/b.png").unlink()
    if target == "fifo":
        os.mkfifo(out / "images/s000000/b.png")
    else:
        (out / "images/s000000/b.png").symlink_to(target)
    report = verify(str(out))  # before the fix: read until memory ran out, or hung on the FIFO
    assert not report.ok and any("b.png: not a regular file" in p for p in report.problems)


def test_verify_of_a_deeply_nested_manifest_is_a_finding(tmp_path):
    out = _published(tmp_path)
    (out / "manifest.json").write_text("[" * 100_000)
    r = CliRunner().invoke(app, ["verify", str(out)])
    assert r.exit_code == 1 and "manifest.json: not valid JSON" in r.output and "Traceback" not in r.output


def test_verify_of_a_manifest_claiming_items_over_no_shards_fails(tmp_path):
    out = tmp_path / "empty"
    publish(Store(str(out)), kind="generate", job="j", spec=None, counts={"items": 2000, "shards": 0, "files": 0})
    report = verify(str(out))
    assert not report.ok and any("counts.items says 2,000 but its shards hold 0" in p for p in report.problems)


# --------------------------------------------------------------------------------------------- 15
def test_report_of_an_output_from_another_directory_finds_the_model(ray_session, package, tmp_path, monkeypatch):
    """The manifest records absolute URIs; an older manifest's relative model_uri resolves beside it."""
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    Path(package).rename(project / "model")
    spec = validate_job({"name": "rel", "storage": {"root": "outputs"},
                         "generate": {"model": "model", "seeds": {"count": 10}, "shard_size": 10,
                                      "scaling": {"num_actors": 1}}})
    res = run_generate(spec, date=DATE, progress=False)
    manifest = json.loads((project / res.output / "manifest.json").read_text())
    assert manifest["model_uri"] == str(project / "model")
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["report", str(project / res.output)])
    assert r.exit_code == 0, r.output
    # an output written by the previous release (relative model_uri): resolved against the folders above it
    manifest["model_uri"] = "model"
    (project / res.output / "manifest.json").write_text(json.dumps(manifest))
    r = CliRunner().invoke(app, ["report", str(project / res.output), "--out", str(tmp_path / "rep2")])
    assert r.exit_code == 0, r.output
    Path(project / "model").rename(package)


# --------------------------------------------------------------------------------------------- 16
@pytest.mark.parametrize("name,text", [("p.csv", "prompt,label\nhello,1\n"), ("p.jsonl", '{"prompt": "hello"}\n'),
                                       ("p.txt", "hello\n")])
def test_a_utf8_bom_is_not_part_of_the_first_prompt(tmp_path, name, text):
    p = tmp_path / name
    p.write_bytes(b"\xef\xbb\xbf" + text.encode())
    ps = load_prompts(PromptsSpec(uri=str(p)), None, num_classes=None, prompt_filter=NO_FILTER)
    assert [x.text for x in ps.prompts] == ["hello"]


def test_a_long_csv_field_is_judged_by_max_length_not_by_csv(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text("prompt\n" + "x" * 200_000 + "\nshort\n")
    ps = load_prompts(PromptsSpec(uri=str(p), max_length=300_000), None, num_classes=None, prompt_filter=NO_FILTER)
    assert [len(x.text) for x in ps.prompts] == [200_000, 5]
    ps = load_prompts(PromptsSpec(uri=str(p), on_error="skip"), None, num_classes=None, prompt_filter=NO_FILTER)
    assert [x.text for x in ps.prompts] == ["short"] and "over the limit" in ps.rejected[0]["reason"]


@pytest.mark.parametrize("prompt", ["go\u200bre", "g\u00f6re", "go\u0304re", "gore_scene", "gore2", "GORE",
                                    "blood  bath", "blood\tbath", "blood-bath", "ｂｌｏｏｄ bath"])
def test_the_blocklist_normalises_before_matching(prompt):
    f = PromptFilter(["gore", "blood bath"], [])
    assert f.check(f"a {prompt} here") is not None
    assert f.check("a gorey bloodbath") is None  # other letters around a term: a different word
