"""Prompt-conditioned images: the hashed n-gram text encoder, its training, generation and evaluation."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.errors import GateFailed
from pipeline.evaluate import enforce_gate, evaluate_package
from pipeline.families.dcgan.loop import build_models, gan_step, make_optimizers
from pipeline.generate import run_generate
from pipeline.image.metrics import heldout_prompts
from pipeline.models.text_encoder import (
    HELDOUT_TEMPLATES,
    TRAIN_TEMPLATES,
    VERSION,
    caption,
    class_words,
    featurize,
    normalise,
)
from pipeline.package import export_package, load_package
from pipeline.specs import EvaluateSpec, GateSpec, ModelSpec, SpecError, TextEncoderSpec, TrainSpec, validate_job

from helpers import files_of

ROOT = Path(__file__).resolve().parents[1]
DATE = "2026-11-28"
CLASSES = [str(i) for i in range(10)]
TINY_TEXT = TextEncoderSpec(buckets=4096, dim=16, hidden=32)


def tiny_model(**te) -> ModelSpec:
    return ModelSpec(image_size=32, channels=1, z_dim=16, g_width=8, d_width=8, conditional=True,
                     text_encoder=TINY_TEXT.model_copy(update=te))


# --------------------------------------------------------------------------------------------- the encoder
def test_features_are_stable_and_normalised():
    a = featurize(["A handwritten SEVEN!"], TINY_TEXT)
    b = featurize(["a handwritten seven"], TINY_TEXT)
    assert torch.equal(a.ids, b.ids)  # case and punctuation do not matter
    # crc32-based: the same ids in every process and on every machine (Python's hash() is salted)
    assert a.ids[:3].tolist() == [2160, 3542, 3937]  # crc32("w:a"), ("w:handwritten"), ("w:seven") mod 4096
    assert normalise("ｎｕｍｂｅｒ_7") == ["number", "7"]  # NFKC folds full-width letters
    empty = featurize(["!!!"], TINY_TEXT)
    assert len(empty.ids) == 1  # an empty bag still encodes (to a fixed vector)


def test_captions_vary_and_heldout_phrasings_are_new():
    rng = random.Random(0)
    caps = {caption("7", rng) for _ in range(200)}
    assert len(caps) > 30 and all(any(w in c for w in class_words("7")) for c in caps)
    assert not set(HELDOUT_TEMPLATES) & set(TRAIN_TEMPLATES)
    assert class_words("golden_retriever") == ["golden retriever"]
    prompts, targets = heldout_prompts(CLASSES, 30)
    assert prompts[7] == "please generate a 7" and targets[7] == 7 and prompts[17] == "show me the digit 7"


def test_text_encoder_leaves_gan_init_untouched():
    """Adding a text encoder does not move G's or D's initial weights (so a GAN recipe behaves the same)."""
    plain = build_models(TrainSpec(model=tiny_model().model_copy(update={"text_encoder": None})))
    text = build_models(TrainSpec(model=tiny_model()))
    for a, b in zip(plain, text):
        sb = b.state_dict()
        assert all(torch.equal(v, sb[k]) for k, v in a.state_dict().items())
    assert any(k.startswith("text.") for k in text[0].state_dict())


def test_spec_errors_name_the_field():
    with pytest.raises(SpecError) as err:
        validate_job({"name": "x", "train": {"model": {"text_encoder": {}}}}, "job.yaml")
    assert "train.model" in str(err.value) and "conditional" in str(err.value)
    with pytest.raises(SpecError) as err:
        validate_job({"name": "x", "train": {"model": {"conditional": True,
                                                      "text_encoder": {"min_ngram": 5, "max_ngram": 3}}}}, "job.yaml")
    assert "min_ngram" in str(err.value)
    with pytest.raises(SpecError) as err:
        validate_job({"name": "x", "train": {"model": {"conditional": True, "num_classes": 3,
                                                      "text_encoder": {"classes": ["a", "b"]}}}}, "job.yaml")
    assert "classes" in str(err.value)


# --------------------------------------------------------------------------------------------- a tiny trained package
def train_text_gan(steps: int, seed: int = 0) -> torch.nn.Module:
    """A few GAN steps on digits with captions, in-process (the Ray Train path runs in test_prompts_demo_job)."""

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is fastest, and fair to Ray's workers on 2 cores
    try:
        return _train(steps, seed)
    finally:
        torch.set_num_threads(threads)


def _train(steps: int, seed: int) -> torch.nn.Module:
    from pipeline.image.data import digits_arrays, to_float

    torch.manual_seed(seed)
    t = TrainSpec(model=tiny_model(), batch_size=64, seed=seed)
    G, D = build_models(t)
    opt_g, opt_d = make_optimizers(G, D, t)
    images, labels = digits_arrays(32, 1, limit=600)
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    for _ in range(steps):
        b = torch.randint(0, len(images), (64,), generator=gen)
        lab = torch.from_numpy(labels[b.numpy()])
        text = featurize([caption(CLASSES[i], rng) for i in lab.tolist()], t.model.text_encoder)
        gan_step(G, D, opt_g, opt_d, to_float(torch.from_numpy(images[b.numpy()])), lab,
                 torch.randn(64, 16, generator=gen), text=text)
    return G.eval()


@pytest.fixture(scope="module")
def text_package(tmp_path_factory) -> str:
    G = train_text_gan(150)
    uri = str(tmp_path_factory.mktemp("pkg") / "text-model")
    cfg = tiny_model(classes=CLASSES)
    export_package(uri, G, cfg, {"note": "test: 150 steps", "train": {"data": {"source": "digits"}}})
    return uri


def test_encoder_learns_heldout_phrasings_through_gan_step(text_package):
    G = load_package(text_package).build_model()
    prompts, targets = heldout_prompts(CLASSES, 10 * len(HELDOUT_TEMPLATES))
    post = G.prompt_posterior(prompts)
    assert (post.argmax(1).numpy() == targets).mean() >= 0.9
    # a prompt's condition lies nearest its class's embedding
    cond = G.encode_prompts(["a handwritten seven"])
    assert torch.cdist(cond, G.embed.weight).argmin().item() == 7


# --------------------------------------------------------------------------------------------- generation
FREE_FORM = """{"prompt": "a handwritten seven", "label": 7, "n": 3}
{"prompt": "Show me the number TWO!"}
{"prompt": "nine, written quickly with a pen", "n": 2}
{"prompt": "a gory four", "label": 4}
"""


def gen_job(root, model, prompts, *, actors=2, batch=32):
    return validate_job({
        "name": "p", "storage": {"root": str(root)},
        "generate": {"model": model, "seed": 3, "seeds": {"start": 0, "count": 20}, "shard_size": 4,
                     "output": "{root}/{name}/{date}", "prompts": {"uri": prompts, "samples_per_prompt": 1},
                     "scaling": {"num_actors": actors, "num_cpus": 0.5, "batch_size": batch},
                     "safety": {"blocklist": ["gory"], "allowlist": []}},
    }, "test")


def test_free_form_prompts_drive_images_with_provenance(ray_session, text_package, tmp_path):
    prompts = tmp_path / "free.jsonl"
    prompts.write_text(FREE_FORM)
    a = run_generate(gen_job(tmp_path / "a", text_package, str(prompts), actors=1, batch=4), date=DATE, progress=False)
    b = run_generate(gen_job(tmp_path / "b", text_package, str(prompts), actors=2, batch=64), date=DATE, progress=False)
    assert a.items == 20 + 3 + 1 + 2 and a.rejected == 1
    assert files_of(a.output) == files_of(b.output)  # byte-identical across actor counts and batch sizes

    rows = {r["item_id"]: r for r in pq.read_table(Path(a.output) / "data").to_pylist()}
    two = rows["p000000002-00000"]
    assert two["prompt"] == "Show me the number TWO!" and two["label"] is None  # no label needed
    assert two["resolved_label"] == 2 and two["resolved_p"] > 0.5 and two["text_encoder"] == VERSION
    assert rows["p000000001-00002"]["resolved_label"] == 7 and rows["p000000001-00002"]["label"] == 7
    seed_row = rows["s000000000013"]
    assert seed_row["label"] == 3 and seed_row["resolved_label"] is None  # seed items follow their label

    im = Image.open(Path(a.output) / two["image"]["path"])
    im.load()
    cond = json.loads(im.text["aigc:condition"])
    assert im.text["aigc:prompt"] == "Show me the number TWO!"
    assert cond["from"] == "prompt" and cond["class"] == "2" and cond["encoder"] == VERSION


# --------------------------------------------------------------------------------------------- evaluation + gate
def test_prompt_accuracy_is_measured_and_gated(text_package, tmp_path):
    spec = EvaluateSpec(samples=300, gate=GateSpec(min_prompt_accuracy=0.99))
    res = evaluate_package(text_package, spec, log=lambda _: None)
    p = res.prompts
    assert p is not None and p["n"] == 300 and p["phrasings"] == "held-out"
    assert p["encoder_accuracy"] >= 0.9 and 0.0 <= p["accuracy"] <= 1.0  # 150 steps: G itself is still poor
    assert any(line.strip().startswith("prompt acc.") for line in res.lines(spec.gate))
    with pytest.raises(GateFailed) as err:
        enforce_gate(res, spec.gate)
    assert "prompt accuracy" in str(err.value) and "min_prompt_accuracy" in str(err.value)
    again = json.loads(Path(res.uri).read_text())
    assert again["prompts"]["accuracy"] == p["accuracy"]


# ------------------------------------------------------------------------------------------- the job, through Ray Train
@pytest.mark.slow  # the default suite's time budget (README: the suite); make test-slow runs it
def test_prompts_demo_job_runs_at_tiny_size(ray_session, tmp_path):
    """jobs/prompts-demo.yaml end to end at tiny size: train (Ray Train, DDP) → evaluate → generate."""
    overrides = [f"storage.root={tmp_path}", "train.epochs=2", "train.data.limit=400", "train.batch_size=32",
                 "train.model.g_width=8", "train.model.d_width=8", "train.model.text_encoder.buckets=4096",
                 "train.model.text_encoder.dim=16", "evaluate.samples=200", "evaluate.gate={}",
                 "generate.prompts.samples_per_prompt=1", "generate.scaling.num_actors=1"]
    args = ["run", str(ROOT / "jobs" / "prompts-demo.yaml"), "--date", DATE]
    for o in overrides:
        args += ["--set", o]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "prompt accuracy" in res.output
    pkg = next((tmp_path / "models" / "prompts-demo").glob("*[!l]"))  # not the .eval folder
    meta = json.loads((pkg / "model.json").read_text())
    assert meta["model"]["text_encoder"]["classes"] == CLASSES  # the data's classes, filled in at export
    assert "loss_text" in meta["metrics"][-1]
    out = tmp_path / "generated" / "prompts-demo" / DATE
    table = pq.read_table(out / "data")
    lines = (ROOT / "jobs" / "prompts" / "free-form.jsonl").read_text().splitlines()
    assert table.num_rows == len(lines)
    assert set(table.column("text_encoder").to_pylist()) == {VERSION}
    spec = yaml.safe_load((ROOT / "jobs" / "prompts-demo.yaml").read_text())
    assert spec["evaluate"]["gate"]["min_prompt_accuracy"] >= 0.9


@pytest.mark.slow
@pytest.mark.timeout(1500)  # trains the prompt demo model (minutes on 2 cores)
def test_demo_prompt_accuracy_on_heldout_phrasings(ray_session, tmp_path):
    """Acceptance: the full prompts-demo model reaches >= 90 % prompt accuracy on held-out phrasings
    (N=1000)."""
    res = CliRunner().invoke(app, ["run", str(ROOT / "jobs" / "prompts-demo.yaml"), "--date", DATE,
                                   "--set", f"storage.root={tmp_path}",
                                   "--set", "generate.prompts.samples_per_prompt=1"])
    assert res.exit_code == 0, res.output
    result = json.loads(next((tmp_path / "models" / "prompts-demo").glob("*.eval/n1000.json")).read_text())
    assert result["prompts"]["n"] == 1000 and result["prompts"]["accuracy"] >= 0.9, result["prompts"]
