"""Text generation: the byte-level GPT, its corpus, Ray Train training with true resume, bulk completion
through the image path's shards (determinism across actors, a killed run resumed), perplexity
beside a unigram baseline, and jobs/text-demo.yaml at tiny size.

TorchTrainer fits (about 25 s of fixed cost each): three. One tiny 2-epoch run of the demo job
through ``aigc run`` (most tests read it), and a 1 + 1 epoch run of the same train spec that must
equal it bit for bit. Generation tests use an untrained package and need no training.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.errors import PipelineError
from pipeline.families.bytegpt.corpus import SEGMENT, load_corpus, split, tokenize, unigram_nll
from pipeline.families.bytegpt.model import EOS, ByteGPT, complete, complete_batch, score_segments
from pipeline.generate import item_seed, run_generate
from pipeline.package import export_package, load_package
from pipeline.specs import DataSpec, SpecError, TextModelSpec, deep_merge, load_job, validate_job
from pipeline.storage import Store, verify

from helpers import files_of

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "jobs" / "text-demo.yaml"
CORPUS = ROOT / "jobs" / "corpus" / "demo.txt"
DATE = "2026-11-28"
# jobs/text-demo.yaml at tiny size: 120 KB of the corpus, a 2-layer 64-wide model, 2 epochs on 2 workers.
TINY = [f"train.data.uri={CORPUS}", "train.data.limit=120000", "train.model.n_layer=2", "train.model.n_head=2",
        "train.model.n_embd=64", "train.model.block_size=64", "train.epochs=2", "train.batch_size=16",
        "train.lm.lr=0.003", "train.lm.warmup_steps=10", "evaluate.gate.max_perplexity=25",
        f"generate.prompts.uri={ROOT / 'jobs' / 'prompts' / 'text-demo.txt'}", "generate.prompts.samples_per_prompt=1",
        "generate.text.max_new_tokens=48", "generate.safety.blocklist=[a]", "generate.shard_size=8"]
PROMPTS = "Return the\nThis module provides\nthe secret plan\n" + "".join(f"prompt number {i}\n" for i in range(17))


def tiny_model(**kw) -> TextModelSpec:
    return TextModelSpec(**{"arch": "bytegpt", "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32, **kw})


def make_text_package(path: Path, **kw) -> str:
    """An untrained but non-trivial text package (generation needs no training)."""
    cfg = tiny_model(**kw)
    torch.manual_seed(3)
    export_package(str(path), ByteGPT(cfg), cfg, {"note": "test package, untrained", "tokenizer": "bytes"})
    return str(path)


def gen_job(root, model, prompts, *, actors=2, batch=16, shard_size=4, **gen) -> dict:
    return {"name": "t", "storage": {"root": str(root)},
            "generate": deep_merge({"model": model, "seed": 5, "prompts": {"uri": prompts, "samples_per_prompt": 3},
                                    "output": "{root}/{name}/{date}", "formats": ["parquet"], "shard_size": shard_size,
                                    "text": {"temperature": 1.0, "top_k": 50, "max_new_tokens": 100, "batch_size": 3},
                                    "safety": {"blocklist": ["secret"]},
                                    "scaling": {"num_actors": actors, "num_cpus": 0.5, "batch_size": batch}}, gen)}


def rows_of(out: str) -> list[dict]:
    return sorted(pq.read_table(Path(out) / "data").to_pylist(), key=lambda r: r["item_id"])


# --------------------------------------------------------------------------------------------- corpus (no Ray)
def test_corpus_formats_split_and_baseline(tmp_path):
    docs = ["héllo wörld " * 300, "second document\n" * 200]
    (tmp_path / "c.txt").write_text(docs[0])
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in docs))
    pq.write_table(pa.table({"body": docs}), tmp_path / "c.parquet")
    txt = load_corpus(DataSpec(source="text", uri=str(tmp_path / "c.txt")))
    assert txt.documents == 1 and txt.tokens == len(docs[0].encode()) + 1
    jl = load_corpus(DataSpec(source="text", uri=str(tmp_path / "c.jsonl"), text_column="body", heldout=0.25))
    pa_ = load_corpus(DataSpec(source="text", uri=str(tmp_path / "c.parquet"), text_column="body", heldout=0.25))
    assert jl.fingerprint == pa_.fingerprint and jl.documents == 2  # same text, same tokens, same split
    tokens = tokenize(docs)
    assert (tokens == EOS).sum() == 2 and jl.tokens == len(tokens)
    # every 4th 2 KiB segment held out, nothing lost or duplicated
    train, held = split(tokens, 0.25)
    segments = -(-len(tokens) // SEGMENT)
    assert len(held) == len(range(3, segments, 4)) and len(train) + sum(map(len, held)) == len(tokens)
    assert np.array_equal(held[0], tokens[3 * SEGMENT: 4 * SEGMENT])
    # a folder reads every corpus file in it, sorted; memory:// goes through the same storage layer
    Store("memory://corpus").write("a.txt", docs[0].encode())
    assert load_corpus(DataSpec(source="text", uri="memory://corpus/a.txt")).fingerprint == txt.fingerprint
    both = load_corpus(DataSpec(source="text", uri=str(tmp_path), text_column="body"))
    assert both.files == [str(tmp_path / n) for n in ("c.jsonl", "c.parquet", "c.txt")] and both.documents == 5
    # the unigram baseline predicts what the GPT predicts: each held-out segment after its first token
    base = unigram_nll(jl.train, jl.heldout)
    assert base.count == sum(len(s) - 1 for s in jl.heldout) and 1 < base.perplexity < 257


@pytest.mark.parametrize("name, content, message", [
    ("bad.jsonl", b'{"text": "fine"}\n{"text": "broken"\n', r"bad\.jsonl:2: invalid JSON"),
    ("bad.jsonl", b'{"text": "fine"}\n\n{"text": "x"}\n', r"bad\.jsonl:2: empty line"),
    ("bad.jsonl", b'{"text": "fine"}\n{"body": "x"}\n', r"bad\.jsonl:2: no 'text' field"),
    ("bad.jsonl", b'{"text": 7}\n', r"bad\.jsonl:1: 'text' must be a string, not int"),
    ("bad.txt", b"line one\nline two \xff\xfe\n", r"bad\.txt:2: not valid UTF-8"),
    ("bad.txt", b"line one\n\x00\x01binary", r"bad\.txt:2: contains a NUL byte"),
    ("bad.txt", b"", r"bad\.txt: the text corpus is empty"),
    ("bad.parquet", b"PAR1 not really", r"bad\.parquet: not a readable Parquet file"),
    ("bad.csv", b"text\nx\n", r"bad\.csv: a text corpus must be a \.txt, \.jsonl or \.parquet file"),
])
def test_bad_corpus_names_the_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(PipelineError, match=message) as err:
        load_corpus(DataSpec(source="text", uri=str(tmp_path / name)))
    assert "\n" not in str(err.value)


def test_parquet_corpus_problems(tmp_path):
    pq.write_table(pa.table({"body": ["a"], "n": [1]}), tmp_path / "a.parquet")
    with pytest.raises(PipelineError, match=r"a\.parquet: no 'text' column \(columns: body, n\)"):
        load_corpus(DataSpec(source="text", uri=str(tmp_path / "a.parquet")))
    with pytest.raises(PipelineError, match=r"a\.parquet: column 'n' holds int64, not text"):
        load_corpus(DataSpec(source="text", uri=str(tmp_path / "a.parquet"), text_column="n"))
    pq.write_table(pa.table({"text": ["a", None]}), tmp_path / "b.parquet")
    with pytest.raises(PipelineError, match=r"b\.parquet: row 2: 'text' is null"):
        load_corpus(DataSpec(source="text", uri=str(tmp_path / "b.parquet")))
    with pytest.raises(PipelineError, match=r"text corpus .*missing\.txt: not found"):
        load_corpus(DataSpec(source="text", uri=str(tmp_path / "missing.txt")))


def test_demo_corpus_is_what_its_builder_makes():
    """jobs/corpus/demo.txt is reproducible from the stdlib of the Python its README names."""
    readme = (ROOT / "jobs" / "corpus" / "README.md").read_text()
    built_with = re.search(r"Python (\d+\.\d+\.\d+)", readme).group(1)
    if sys.version.split()[0] != built_with:
        pytest.skip(f"the corpus was built with Python {built_with}; docstrings differ between versions")
    out = subprocess.run([sys.executable, str(ROOT / "jobs" / "corpus" / "build_demo.py"), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert CORPUS.stat().st_size < 400_000


# --------------------------------------------------------------------------------------------- model and sampling
def test_sampling_depends_on_the_item_seed_alone():
    torch.manual_seed(0)
    m = ByteGPT(tiny_model(block_size=16)).eval()
    a = complete(m, b"abc", max_new_tokens=40, temperature=1.0, top_k=None, seed=11)
    assert a == complete(m, b"abc", max_new_tokens=40, temperature=1.0, top_k=None, seed=11)
    assert a != complete(m, b"abc", max_new_tokens=40, temperature=1.0, top_k=None, seed=12)
    assert len(a.tokens) == 40 or a.stop == "eos"  # past block_size the context slides: no error
    greedy = complete(m, b"abc", max_new_tokens=10, temperature=0, top_k=None, seed=1)
    assert greedy == complete(m, b"abc", max_new_tokens=10, temperature=0, top_k=None, seed=2)  # no randomness
    assert complete(m, b"abc", max_new_tokens=10, temperature=0.7, top_k=1, seed=3).tokens == greedy.tokens
    # the cached step-by-step forward is the full forward, to float rounding
    x = torch.randint(0, 257, (1, 12))
    from pipeline.families.bytegpt.model import KVCache

    caches = [KVCache() for _ in m.blocks]
    with torch.inference_mode():
        parts = [m(x[:, :5], caches=caches)[0]] + [m(x[:, i:i + 1], caches=caches)[0] for i in range(5, 12)]
        assert torch.allclose(torch.cat(parts, 1), m(x)[0], atol=1e-5)
    # a model whose every logit favours EOS stops at once
    with torch.no_grad():
        m.ln_f.weight.zero_()
        m.ln_f.bias.fill_(1.0)
        m.wte.weight[EOS] = 10.0
    assert complete(m, b"abc", max_new_tokens=5, temperature=1.0, top_k=None, seed=1).stop == "eos"


def test_batched_sampling_computes_what_each_row_computes_alone():
    """Ragged prompts, left-padded: every row's logits are its own unbatched forward's (to float rounding);
    past block_size the windows refill from their last half block; a row that ends leaves the batch."""
    from pipeline.families.bytegpt.model import _padded

    torch.manual_seed(0)
    m = ByteGPT(tiny_model(block_size=16)).eval()
    rows = [list(b"abc"), list(b"a longer prompt"), [EOS]]
    idx, pos, mask, _ = _padded(rows, "cpu")
    with torch.inference_mode():
        batched = m(idx, pos=pos, mask=mask)[0][:, -1]
        alone = torch.stack([m(torch.tensor([r]))[0][0, -1] for r in rows])
    assert torch.allclose(batched, alone, atol=1e-5)
    prompts, seeds = [b"abc", b"a longer prompt", b"", b"x" * 20], [1, 2, 3, 4]
    a = complete_batch(m, prompts, seeds, max_new_tokens=30, temperature=1.0, top_k=None)
    assert a == complete_batch(m, prompts, seeds, max_new_tokens=30, temperature=1.0, top_k=None)  # deterministic
    assert all(len(c.tokens) == 30 or c.stop == "eos" for c in a)  # 20 + 30 > 16: the window slides, no error
    short = [b"abc", b"hi there", b""]  # contexts within the block: greedy batched is greedy alone
    assert [c.tokens for c in complete_batch(m, short, [1, 2, 3], max_new_tokens=8, temperature=0, top_k=None)] == \
        [complete(m, p, max_new_tokens=8, temperature=0, top_k=None, seed=1).tokens for p in short]
    with torch.no_grad():  # every logit favours EOS: every row stops at once, and the loop with it
        m.ln_f.weight.zero_()
        m.ln_f.bias.fill_(1.0)
        m.wte.weight[EOS] = 10.0
    assert [c.stop for c in complete_batch(m, prompts, seeds, max_new_tokens=5, temperature=1.0, top_k=None)] == \
        ["eos"] * 4


def test_text_package_round_trips_without_pickle(tmp_path, monkeypatch):
    def no_pickle(*a, **k):
        raise AssertionError("a model package was unpickled")

    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(torch, "load", no_pickle)
    uri = make_text_package(tmp_path / "pkg")
    pkg = load_package(uri)
    assert pkg.config.arch == "bytegpt" and pkg.config.n_embd == 32
    m = pkg.build_model()
    assert not m.training and "lm_head.weight" not in pkg.state_dict  # the head is tied to wte
    seg = [np.arange(100) % 256]
    assert score_segments(m, seg)[1] == 99
    # a package whose weights do not fit its model.json is one line
    meta = json.loads((tmp_path / "pkg" / "model.json").read_text())
    meta["model"]["n_embd"] = 64
    (tmp_path / "pkg" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(Exception, match="weights do not fit the architecture"):
        load_package(uri).build_model()


@pytest.mark.parametrize("change, message", [
    ({"train": {"model": {"arch": "gpt9"}}}, "train.model: unknown architecture 'gpt9' (registered: 'dcgan'"),
    ({"train": {"model": {"n_head": 5}}}, "train.model: n_embd (96) must be a multiple of n_head (5)"),
    ({"train": {"model": {"z_dim": 5}}}, "train.model.z_dim: unknown key (not part of the spec)"),
    ({"train": {"data": {"source": "digits", "uri": None, "heldout": None}}},
     "train.data.source: the bytegpt architecture trains on text data, not 'digits'"),
    ({"train": {"data": {"source": "digits", "uri": None}}}, "train.data: text_column and heldout apply to source "
                                                             "'text' only"),
    ({"train": {"model": {"arch": "dcgan", "n_layer": None, "n_head": None, "n_embd": None, "block_size": None,
                          "dropout": None}}},
     "train.data.source: the dcgan architecture trains on digits, images, parquet, idx, pixels, fashion-mnist or "
         "mnist-5k data, not 'text' "
     "(that is for train.model.arch: bytegpt)"),
    ({"generate": {"seeds": {"count": 3}}}, "generate.seeds: the bytegpt architecture does not generate from latent "
                                            "seeds"),
    ({"generate": {"formats": ["png", "parquet"]}}, "generate.formats: the bytegpt architecture writes parquet only"),
    ({"generate": {"formats": ["webdataset"]}}, "generate.formats: the bytegpt architecture writes parquet only"),
    ({"evaluate": {"gate": {"max_fld": 3}}}, "evaluate.gate.max_fld: does not apply to the bytegpt architecture"),
    ({"train": {"data": {"heldout": 0}}}, "train.data.heldout: must be greater than 0"),
    ({"generate": {"text": {"top_k": 0}}}, "generate.text.top_k: must be greater than or equal to 1"),
    ({"generate": {"provenance": {"xmp": False}}}, "generate.provenance: does not apply to the bytegpt architecture"),
])
def test_text_spec_errors_name_the_key(change, message):
    base = yaml.safe_load(DEMO.read_text())
    base.pop("include")
    data = deep_merge(base, change)
    data["train"]["model"] = {k: v for k, v in data["train"]["model"].items() if v is not None}
    with pytest.raises(SpecError) as err:
        validate_job(data, "j.yaml")
    assert any(p.startswith(f"j.yaml: {message}") for p in err.value.problems), err.value.problems


def test_image_specs_keep_working_without_arch():
    job = validate_job({"name": "x", "train": {"model": {"z_dim": 8}}, "evaluate": {"gate": {"max_fld": 3}}})
    assert job.train.model.arch == "dcgan" and job.train.model.z_dim == 8
    with pytest.raises(SpecError, match="evaluate.gate.max_perplexity: does not apply to the dcgan architecture"):
        validate_job({"name": "x", "train": {}, "evaluate": {"gate": {"max_perplexity": 3}}})


# --------------------------------------------------------------------------------------------- generation
@pytest.fixture(scope="module")
def text_pkg(tmp_path_factory) -> str:
    """Wide enough that a run lasts a few seconds: the kill test stops it in the middle."""
    return make_text_package(tmp_path_factory.mktemp("tpkg") / "model", n_layer=4, n_head=4, n_embd=128, block_size=128)


@pytest.fixture(scope="module")
def prompts_txt(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("prompts") / "p.txt"
    path.write_text(PROMPTS)
    return str(path)


@pytest.fixture(scope="module")
def clean_run(ray_session, text_pkg, prompts_txt, tmp_path_factory):
    """1 actor, batch 4: the reference every other text-generation run must equal file for file."""
    root = tmp_path_factory.mktemp("clean")
    return run_generate(validate_job(gen_job(root, text_pkg, prompts_txt, actors=1, batch=4), "t"), date=DATE,
                        progress=False)


def test_completions_parquet_reads_back_with_provenance(clean_run, text_pkg):
    res = clean_run
    assert res.items == 19 * 3 and res.rejected == 1 and res.shards == 15  # "the secret plan" blocked
    assert verify(res.output).ok
    manifest = json.loads((Path(res.output) / "manifest.json").read_text())
    assert (manifest["encoder"]["sampler"] == "aigc-bytegpt-sample/2"
            and manifest["model_sha256"] == load_package(text_pkg).model_sha256)
    rows = rows_of(res.output)
    assert len(rows) == res.items == len({r["item_id"] for r in rows})
    assert manifest["counts"]["completion_tokens"] == sum(r["completion_tokens"] for r in rows)
    r = next(r for r in rows if r["item_id"] == "p000000002-00001")
    assert r["prompt"] == "This module provides" and r["seed"] == item_seed(5, 1, 2, 1)
    assert (r["temperature"], r["top_k"], r["max_new_tokens"], r["prompt_tokens"]) == (1.0, 50, 100, 20)
    assert r["completion_tokens"] == len(r["completion_bytes"]) <= 100 and r["stop_reason"] in ("eos", "length")
    assert r["completion"] == r["completion_bytes"].decode("utf-8", "replace") and r["rejected"] is None
    assert r["utf8_valid"] == (r["completion"].encode() == r["completion_bytes"])
    assert r["model_sha256"] == manifest["model_sha256"] and r["job"] == "t"
    assert r["digital_source_type"].endswith("/trainedAlgorithmicMedia") and str(r["created_at"]).startswith(DATE)
    # an untrained byte model writes invalid UTF-8 now and then: recorded, never an error
    assert any(not x["utf8_valid"] for x in rows) and any("\ufffd" in x["completion"] for x in rows)
    # the completion is what the batched sampler makes for that item's micro-batch: its shard's items in
    # order, cut into generate.text.batch_size (3) groups
    part = next(p for p in sorted((Path(res.output) / "data").glob("*.parquet"))
                if r["item_id"] in pq.read_table(p, columns=["item_id"]).column("item_id").to_pylist())
    shard = pq.read_table(part).to_pylist()
    at = [x["item_id"] for x in shard].index(r["item_id"])
    group = shard[at - at % 3: at - at % 3 + 3]
    made = complete_batch(load_package(text_pkg).build_model(), [x["prompt"].encode() for x in group],
                          [x["seed"] for x in group], max_new_tokens=100, temperature=1.0, top_k=50)
    assert [c.data for c in made] == [x["completion_bytes"] for x in group]
    rejected = [json.loads(x) for x in (Path(res.output) / "rejected.jsonl").read_text().splitlines()]
    assert rejected == [{"line": 3, "prompt": "the secret plan", "reason": "blocked term 'secret'"}]


def test_completions_identical_across_actor_counts_and_batch_sizes(clean_run, text_pkg, prompts_txt, tmp_path):
    res = run_generate(validate_job(gen_job(tmp_path, text_pkg, prompts_txt, actors=2, batch=64), "t"), date=DATE,
                       progress=False)
    assert res.items == clean_run.items and files_of(res.output) == files_of(clean_run.output)


def test_killed_text_run_resumes_exactly(ray_session, clean_run, text_pkg, prompts_txt, tmp_path):
    """SIGKILL the driver after 2 of 15 shards; the rerun resumes and equals the clean run checksum for checksum."""
    import ray

    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(gen_job(tmp_path, text_pkg, prompts_txt, actors=2, batch=8)))
    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address)  # the driver joins this cluster
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "generate", str(spec), "--date", DATE], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    shards = tmp_path / "t" / DATE / "_shards"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(shards.glob("*.json"))) < 2 and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    out = tmp_path / "t" / DATE
    committed = len(list(shards.glob("*.json")))
    assert not (out / "_SUCCESS").exists() and 2 <= committed < 15
    said = []
    res = run_generate(load_job(spec), date=DATE, progress=False, log=said.append)
    assert res.shards_skipped >= committed and "already committed" in said[0]
    assert verify(res.output).ok and not list(out.rglob("*.tmp-*"))
    assert files_of(res.output) == files_of(clean_run.output)


def test_text_generation_errors_are_one_line(ray_session, text_pkg, tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": "broken"\n')
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(gen_job(tmp_path, text_pkg, str(bad))))
    r = CliRunner().invoke(app, ["generate", str(spec), "--date", DATE])
    assert r.exit_code == 1 and r.output.strip().splitlines() == [f"error: {bad}:2: invalid JSON (Expecting ',' "
                                                                  "delimiter)"]
    assert not (tmp_path / "t").exists()
    seeds = gen_job(tmp_path, text_pkg, str(bad))
    seeds["generate"]["seeds"] = {"count": 10}
    spec.write_text(yaml.safe_dump(seeds))
    r = CliRunner().invoke(app, ["generate", str(spec), "--date", DATE])
    assert (r.exit_code == 1 and "generate.seeds: the model at" in r.output
            and "is a bytegpt model, which does not generate from latent seeds" in r.output)
    assert len(r.output.strip().splitlines()) == 1
    # and the other way round: text sampling settings for an image model
    from helpers import make_package

    image = gen_job(tmp_path, make_package(tmp_path / "img"), str(bad))
    spec.write_text(yaml.safe_dump(image))
    r = CliRunner().invoke(app, ["generate", str(spec), "--date", DATE])
    assert r.exit_code == 1 and r.output.strip().splitlines() == [
        f"error: generate.text: does not apply: the model at {tmp_path / 'img'} is a dcgan model"]


# --------------------------------------------------------------------------------------------- training (3 fits)
@pytest.fixture(scope="module")
def demo_run(ray_session, tmp_path_factory):
    """jobs/text-demo.yaml at tiny size through `aigc run` (train → evaluate → generate → verify)."""
    root = tmp_path_factory.mktemp("textdemo")
    r = CliRunner().invoke(app, ["run", str(DEMO), "--date", DATE, "--verify", "--set", f"storage.root={root}", *[
        x for t in TINY for x in ("--set", t)]])
    return {"root": root, "result": r, "job": load_job(DEMO, [f"storage.root={root}", *TINY])}


def package_dir(root: Path) -> Path:
    """The demo's model package (beside it, ``<version>.eval/`` holds its evaluations)."""
    return next(p for p in (root / "models" / "text-demo").iterdir() if not p.name.endswith(".eval"))


def test_demo_job_runs_end_to_end_at_tiny_size(demo_run):
    r, root = demo_run["result"], demo_run["root"]
    assert r.exit_code == 0, r.output
    out = r.output
    assert "starting: epoch 1/2 on 2 worker(s), 1 node(s)" in out
    assert "epoch 2/2 done  loss " in out and "held-out perplexity" in out
    assert "evaluate  done" in out and "gate passed" in out and "verify    ok" in out
    pkg = load_package(str(package_dir(root)))
    assert pkg.config.arch == "bytegpt" and pkg.meta["tokenizer"]["vocab_size"] == 257 and pkg.meta["epochs"] == 2
    assert (pkg.meta["data"]["heldout_tokens"] > 0
            and pkg.meta["data"]["train_tokens"] + pkg.meta["data"]["heldout_tokens"] == 120000)
    gen_out = root / "generated" / "text-demo" / DATE
    rows = rows_of(str(gen_out))
    manifest = json.loads((gen_out / "manifest.json").read_text())
    # blocklist [a]: prompts with the word "a" are rejected; completions with it are kept as rejected rows
    assert manifest["counts"]["rejected"] == sum("a" in p.lower().split() for p in
                                                 (ROOT / "jobs" / "prompts" / "text-demo.txt").read_text().splitlines())
    blocked = [x for x in rows if x["rejected"]]
    assert blocked and manifest["counts"]["completions_rejected"] == len(blocked)
    assert all(x["completion"] is None and x["completion_bytes"] is None and x["rejected"] == "blocked term 'a'"
               for x in blocked)
    # per-epoch samples beside the checkpoints
    assert (root / "checkpoints" / "text-demo" / "samples" / "epoch_0001.txt").read_text().startswith(
        "--- 'Return the ")


def test_trained_model_beats_the_unigram_baseline(demo_run):
    """Held-out perplexity of the tiny model is below the byte-frequency model's, on the same bytes."""
    root = demo_run["root"]
    uri = str(package_dir(root))
    r = CliRunner().invoke(app, ["evaluate", uri, "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output[r.output.index("{"):])
    model, unigram = res["metrics"]["model"]["perplexity"], res["metrics"]["unigram"]["perplexity"]
    print(f"held-out perplexity {model:.2f} vs unigram {unigram:.2f} on {res['n']:,} bytes")
    assert 1 < model < 0.9 * unigram and res["data"]["same_as_training"]
    assert math.isclose(res["metrics"]["model"]["bits_per_byte"] * math.log(2), math.log(model), rel_tol=1e-4)
    r = CliRunner().invoke(app, ["evaluate", uri, "--set", "evaluate.gate.max_perplexity=1.5"])
    assert r.exit_code == 3 and "error: quality gate failed" in r.output and "max_perplexity 1.5" in r.output
    rep = CliRunner().invoke(app, ["report", str(root / "generated" / "text-demo" / DATE)])
    assert rep.exit_code == 0, rep.output
    html = (root / "generated" / "text-demo" / f"{DATE}.report" / "index.html").read_text()
    assert "unigram baseline" in html and f"{model:.3f}" in html and f"{unigram:.3f}" in html
    assert "(completion rejected)" in (root / "generated" / "text-demo" / f"{DATE}.report" / "gallery"
                                       / "page-0001.html").read_text()


@pytest.mark.slow  # the default suite's time budget (README: the suite); make test-slow runs it
def test_text_resume_equals_an_uninterrupted_run(demo_run, tmp_path):
    """1 epoch through the CLI, then the same spec to 2 epochs: weights, AdamW state and history equal
    the demo run's bit for bit (every draw is a function of (seed, epoch, rank), RNG states are restored)."""
    from pipeline.train.checkpoint import load_checkpoint
    from pipeline.train.driver import train

    over = [f"storage.root={tmp_path}", *TINY]
    r = CliRunner().invoke(app, ["train", str(DEMO), *[x for t in over + ["train.epochs=1"] for x in ("--set", t)]])
    assert r.exit_code == 0, r.output
    assert "trained epochs 1-1 of 1" in r.output and "held-out perplexity" in r.output
    res = train(load_job(DEMO, over))
    assert res.resumed_from == 0 and res.epochs_run == [1]
    resumed = load_checkpoint(str(tmp_path / "checkpoints" / "text-demo" / "epoch_0001"), parts=("LM",))
    straight = load_checkpoint(str(demo_run["root"] / "checkpoints" / "text-demo" / "epoch_0001"), parts=("LM",))
    for a, b in ((resumed.models, straight.models), (resumed.optim, straight.optim)):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = [{k: v for k, v in h.items() if k not in ("seconds", "tokens/s")} for h in res.history]
    assert strip == [{k: v for k, v in h.items() if k not in ("seconds", "tokens/s")}
                     for h in straight.state["history"]]
    assert res.model_sha256 == load_package(str(package_dir(demo_run["root"]))).model_sha256


def test_bad_corpus_stops_training_with_one_line(ray_session, tmp_path):
    bad = tmp_path / "corpus.jsonl"
    bad.write_text('{"text": "one"}\n{"txt": "two"}\n')
    r = CliRunner().invoke(app, ["train", str(DEMO), "--set", f"storage.root={tmp_path}",
                                 "--set", f"train.data.uri={bad}"])
    assert r.exit_code == 1
    assert r.output.strip().splitlines() == [f"error: {bad}:2: no 'text' field (set train.data.text_column to the "
                                             "field that holds the text)"]
    small = tmp_path / "small.txt"
    small.write_text("tiny corpus " * 20)
    r = CliRunner().invoke(app, ["train", str(DEMO), "--set", f"storage.root={tmp_path}",
                                 "--set", f"train.data.uri={small}"])
    assert (r.exit_code == 1 and "train.model.block_size: 128, but" in r.output
            and len(r.output.strip().splitlines()) == 1)
