"""The families: the VAE and the seed's MLP GAN through the shared machinery, an out-of-tree family
through its entry point, and the registry's errors."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from pipeline.catalog.registry import families, family, parse_config
from pipeline.cli import app
from pipeline.families.mlpgan.model import Discriminator as MLPD
from pipeline.families.mlpgan.model import Generator as MLPG
from pipeline.families.vae.loop import heldout_mask
from pipeline.families.vae.model import VAE, kl_weight
from pipeline.package import PackageError, load_package
from pipeline.specs import SpecError, validate_job
from pipeline.storage import verify
from pipeline.train.checkpoint import load_checkpoint
from pipeline.train.driver import train

ROOT = Path(__file__).resolve().parents[1]
DATE = "2026-11-28"
PROMPTS = '{"prompt": "a zero", "label": 0}\n{"prompt": "two sevens", "label": 7, "n": 2}\n'


def vae_spec(root: Path, name: str = "vae", epochs: int = 4, **train) -> dict:
    return {"name": name, "storage": {"root": str(root)},
            "train": {"data": {"source": "digits", "limit": 256},
                      "model": {"arch": "vae", "z_dim": 8, "width": 8, "kl_warmup_steps": 6, "heldout": 0.25},
                      "epochs": epochs, "batch_size": 32, "seed": 5, "scaling": {"num_workers": 2}, **train}}


# --------------------------------------------------------------------------------------------- registry
def test_every_builtin_family_is_registered_and_its_config_is_torch_free():
    assert {"dcgan", "mlp-gan", "vae", "bytegpt"} <= set(families())
    for fam in families().values():
        assert fam.config.model_fields["arch"] is not None and fam.implementation_path


def test_an_unknown_arch_names_the_registered_ones():
    with pytest.raises(SpecError, match=r"train.model: unknown architecture 'gpt9' \(registered: .*'vae'"):
        validate_job({"name": "x", "train": {"model": {"arch": "gpt9"}}})


def test_a_package_of_an_arch_not_installed_here_is_one_line(tmp_path):
    from helpers import make_package

    uri = make_package(tmp_path / "m")
    meta = json.loads((Path(uri) / "model.json").read_text())
    meta["model"]["arch"] = "someone-elses"
    (Path(uri) / "model.json").write_text(json.dumps(meta))
    with pytest.raises(PackageError, match="unknown architecture 'someone-elses'"):
        load_package(uri)


@pytest.mark.parametrize("bad,match", [
    ({"model": {"arch": "vae"}, "ema": 0.99}, "train.ema: does not apply to the vae architecture"),
    ({"model": {"arch": "mlp-gan"}, "augment": ["cutout"]}, "train.augment: does not apply to the mlp-gan"),
    ({"model": {"arch": "mlp-gan", "image_size": 32}}, "train.model.image_size"),
])
def test_settings_a_family_does_not_read_are_refused(bad, match):
    with pytest.raises(SpecError, match=match):
        validate_job({"name": "x", "train": bad})


def test_the_gate_a_family_does_not_measure_is_refused():
    with pytest.raises(SpecError, match="evaluate.gate.max_perplexity: does not apply to the vae architecture"):
        validate_job({"name": "x", "train": {"model": {"arch": "vae"}}, "evaluate": {"gate": {"max_perplexity": 9}}})


# --------------------------------------------------------------------------------------------- mlp-gan
def test_the_mlp_gan_is_exactly_the_seed_articles():
    cfg = parse_config({"arch": "mlp-gan"})
    g, d = MLPG(cfg), MLPD(cfg)
    assert [(m.in_features, m.out_features) for m in g.net if isinstance(m, torch.nn.Linear)] == \
        [(100, 256), (256, 512), (512, 1024), (1024, 784)]
    assert [type(m).__name__ for m in g.net if not isinstance(m, torch.nn.Linear)] == ["ReLU"] * 3 + ["Tanh"]
    assert [(m.in_features, m.out_features) for m in d.net if isinstance(m, torch.nn.Linear)] == \
        [(784, 1024), (1024, 512), (512, 256), (256, 1)]
    acts = [m for m in d.net if not isinstance(m, torch.nn.Linear)]
    assert [type(m).__name__ for m in acts] == ["LeakyReLU"] * 3 + ["Sigmoid"] and acts[0].negative_slope == 0.2
    assert g(torch.randn(3, 100)).shape == (3, 1, 28, 28)


@pytest.mark.slow  # the default suite's time budget (README: the suite); make test-slow runs it
def test_mlp_gan_trains_evaluates_and_generates_through_aigc_run(ray_session, tmp_path):
    spec = {"name": "mlp", "storage": {"root": str(tmp_path)},
            "train": {"data": {"limit": 256}, "epochs": 1, "batch_size": 32, "model": {"arch": "mlp-gan"}},
            "evaluate": {"samples": 64},
            "generate": {"seeds": {"count": 20}, "shard_size": 10, "scaling": {"num_actors": 1}}}
    job = tmp_path / "mlp.yaml"
    job.write_text(yaml.safe_dump(spec))
    r = CliRunner().invoke(app, ["run", str(job), "--date", DATE, "--verify"])
    assert r.exit_code == 0, r.output
    assert "loss_D" in r.output and "FLD" in r.output and "verify    ok" in r.output
    out = tmp_path / "generated" / "mlp" / DATE
    img = Image.open(next((out / "images").rglob("*.png")))
    assert img.size == (28, 28) and img.mode == "L"
    assert pq.read_table(out / "data").num_rows == 20


# --------------------------------------------------------------------------------------------- vae
def test_the_discretized_logistic_is_a_distribution_over_the_256_values():
    vae = VAE(parse_config({"arch": "vae", "image_size": 28, "z_dim": 4, "width": 4}))
    with torch.no_grad():
        vae.log_scale.fill_(-1.5)
    values = torch.arange(256, dtype=torch.float32) / 127.5 - 1.0
    x = values.view(256, 1, 1, 1).expand(256, 1, 28, 28).contiguous()
    for mean in (-0.8, 0.0, 0.37):
        nll = vae.nll(x, torch.full_like(x, mean)) / (28 * 28)  # nats per pixel, one value per image
        assert torch.exp(-nll).sum().item() == pytest.approx(1.0, abs=2e-3)


def test_kl_warmup_is_a_function_of_the_step_alone():
    cfg = parse_config({"arch": "vae", "beta": 2.0, "kl_warmup_steps": 4})
    assert [kl_weight(cfg, s) for s in range(6)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert kl_weight(parse_config({"arch": "vae", "kl_warmup_steps": 0}), 0) == 1.0


def test_vae_heldout_examples_are_never_trained_on():
    mask = heldout_mask(40, 0.25)
    assert mask.sum() == 10 and mask.tolist()[:4] == [False, False, False, True]


@pytest.fixture(scope="module")
def vae_run(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("vae")
    res = train(validate_job(vae_spec(root, "full")))
    return {"root": root, "result": res}


def test_vae_trains_with_ddp_and_exports_a_package(vae_run):
    res = vae_run["result"]
    assert res.epochs == 4 and "bits/dim" in res.detail and math.isfinite(res.history[-1]["bits/dim"])
    assert res.history[-1]["bits/dim"] < res.history[0]["bits/dim"]  # it learns
    pkg = load_package(res.package_uri)
    assert pkg.config.arch == "vae" and pkg.meta["likelihood"].startswith("discretized logistic")
    x = pkg.build_model()(torch.randn(2, 8), torch.tensor([1, 2]))
    assert x.shape == (2, 1, 32, 32) and x.abs().max() <= 1


@pytest.mark.slow  # the default suite's time budget (README: the suite); make test-slow runs it
def test_vae_resume_2_plus_2_epochs_is_bit_identical_to_4(vae_run, tmp_path):
    root = vae_run["root"]
    train(validate_job(vae_spec(root, "half", epochs=2)))
    shutil.rmtree(root / "models" / "half")  # the package of the 2-epoch spec; the 4-epoch one differs anyway
    res = train(validate_job(vae_spec(root, "half", epochs=4)))
    assert res.resumed_from == 1 and res.epochs_run == [2, 3]
    resumed = load_checkpoint(str(root / "checkpoints" / "half" / "epoch_0003"), parts=("VAE",))
    straight = load_checkpoint(str(root / "checkpoints" / "full" / "epoch_0003"), parts=("VAE",))
    for a, b in ((resumed.models, straight.models), (resumed.optim, straight.optim)):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in resumed.state["history"]] == [h["loss"] for h in straight.state["history"]]


def test_with_a_test_split_the_vae_bound_is_measured_on_it(vae_run):
    from pipeline.families.vae.family import heldout_elbo
    from pipeline.image.realdata import Split, real_data
    from pipeline.specs import DataSpec

    pkg = load_package(vae_run["result"].package_uri)
    real = real_data(DataSpec(source="digits", limit=356), pkg.config)  # the 256 trained on, then 100 more
    own = heldout_elbo(pkg, real, Split(heldout=np.arange(64), reference=np.arange(256), train=np.arange(256)))
    assert own["bits_per_dim"]["label"] == "held-out bits/dim" and "the 64 held-out" in own["bits_per_dim"]["note"]
    test = np.arange(256, 356)
    split = Split(heldout=test, reference=np.arange(256), train=np.arange(256), test=test)
    got = heldout_elbo(pkg, real, split)["bits_per_dim"]
    assert got["label"] == "test-split bits/dim" and "the 100 test-split images" in got["note"]
    assert math.isfinite(got["value"]) and got["value"] != own["bits_per_dim"]["value"]


def test_vae_evaluates_generates_from_seeds_and_prompts_and_reports(vae_run, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(PROMPTS)
    spec = {"name": "vgen", "storage": {"root": str(tmp_path)},
            "evaluate": {"model": vae_run["result"].package_uri, "samples": 60},
            "generate": {"model": vae_run["result"].package_uri, "seeds": {"count": 20}, "shard_size": 10,
                         "prompts": {"uri": str(prompts)}, "scaling": {"num_actors": 1}}}
    job = tmp_path / "v.yaml"
    job.write_text(yaml.safe_dump(spec))
    r = CliRunner().invoke(app, ["evaluate", vae_run["result"].package_uri, "--job", str(job), "--samples", "60"])
    assert r.exit_code == 0, r.output
    assert "held-out bits/dim" in r.output and "FLD" in r.output
    r = CliRunner().invoke(app, ["generate", str(job), "--date", DATE])
    assert r.exit_code == 0, r.output
    out = tmp_path / "generated" / "vgen" / DATE
    assert verify(str(out)).ok
    rows = pq.read_table(out / "data").to_pylist()
    assert len(rows) == 23 and sorted(r["label"] for r in rows if r["prompt"]) == [0, 7, 7]
    r = CliRunner().invoke(app, ["report", str(out)])
    assert r.exit_code == 0 and "1 evaluation(s)" in r.output, r.output
    html = (Path(str(out) + ".report") / "index.html").read_text()
    assert "held-out bits/dim" in html and "architecture" in html


# --------------------------------------------------------------------------------------------- plugin
def test_an_out_of_tree_family_trains_and_generates_through_aigc_run(ray_session, tmp_path):
    """examples/aigc-family-example registers `tiny-gan` by entry point; nothing in pipeline/ names it."""
    assert "tiny-gan" in families(), "install it: pip install -e examples/aigc-family-example (make install does)"
    assert family("tiny-gan").implementation_path.startswith("aigc_family_example")
    spec = yaml.safe_load((ROOT / "examples" / "aigc-family-example" / "job.yaml").read_text())
    spec["storage"]["root"] = str(tmp_path)
    spec["train"]["epochs"] = 1
    job = tmp_path / "tiny.yaml"
    job.write_text(yaml.safe_dump(spec))
    r = CliRunner().invoke(app, ["run", str(job), "--date", DATE, "--verify"])
    assert r.exit_code == 0, r.output
    assert "train     done" in r.output and "1 epochs, loss_D" in r.output and "verify    ok" in r.output
    out = tmp_path / "generated" / "tiny-gan-demo" / DATE
    assert len(list((out / "images").rglob("*.png"))) == 40
    meta = json.loads(next((tmp_path / "models" / "tiny-gan-demo").glob("*/model.json")).read_text())
    assert meta["model"]["arch"] == "tiny-gan" and meta["plugin"] == "aigc-family-example"
    assert np.asarray(Image.open(next((out / "images").rglob("*.png")))).shape == (28, 28)
