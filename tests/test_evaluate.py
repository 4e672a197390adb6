"""Quality metrics and the gate: metric math on known answers, real evaluations of tiny packages on
the embedded digits (a few hundred images, N=100), the memorization check against a "generator" that
returns training images, a zeroed G stopped by the gate in `aigc run`, and every user error.

The acceptance case on the trained demo model (FLD well below an untrained G's, within 2x the
floor) trains for minutes and is marked slow.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.errors import GateFailed, PipelineError
from pipeline.evaluate import enforce_gate, evaluate_package
from pipeline.families.dcgan.model import Generator
from pipeline.image.features import load_extractor
from pipeline.image.metrics import classifier_score, frechet_distance, memorization_threshold, nearest, precision_recall
from pipeline.image.realdata import real_data, split_real
from pipeline.image.result import EvalResult, gate_failures
from pipeline.layout import eval_uri
from pipeline.package import export_package
from pipeline.specs import DataSpec, EvaluateSpec, GateSpec, ModelSpec, validate_job
from pipeline.storage import verify

from helpers import make_package

DATE = "2026-11-28"
LIMIT = 300  # digits used by the fast tests: 100 held out, 200 reference
N = 100
DIGITS = {"source": "digits", "limit": LIMIT}


def tiny_cfg() -> ModelSpec:
    return ModelSpec(image_size=32, channels=1, z_dim=16, g_width=8, d_width=8, conditional=True)


def zeroed_package(path: Path) -> str:
    """A deliberately broken model: every G weight zeroed (it draws one flat gray image)."""
    cfg = tiny_cfg()
    g = Generator(cfg)
    with torch.no_grad():
        for p in g.parameters():
            p.zero_()
    export_package(str(path), g, cfg, {"train": {"data": DIGITS}, "note": "zeroed"})
    return str(path)


class TrainingImages(torch.nn.Module):
    """A 'generator' that ignores its latents and returns training images."""

    def __init__(self, images: np.ndarray):
        super().__init__()
        self.images = torch.from_numpy(images).float().div(127.5).sub(1.0)
        self.next = 0

    def forward(self, z, labels=None):
        idx = (torch.arange(len(z)) + self.next) % len(self.images)
        self.next += len(z)
        return self.images[idx]


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> str:
    return make_package(tmp_path_factory.mktemp("eval") / "model")


@pytest.fixture(scope="module")
def result(package) -> EvalResult:
    return evaluate_package(package, EvaluateSpec(samples=N), data=DataSpec(**DIGITS), log=lambda s: None)


# --------------------------------------------------------------------------------------------- metric math
def test_frechet_distance_matches_the_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (20000, 3))
    b = rng.normal(0, 1, (20000, 3)) * np.array([1.0, 2.0, 0.5]) + np.array([3.0, 0.0, 0.0])
    # diagonal Gaussians: |mu_a - mu_b|^2 + sum (sigma_a - sigma_b)^2 = 9 + (0 + 1 + 0.25)
    assert frechet_distance(a, b) == pytest.approx(10.25, rel=0.03)
    assert abs(frechet_distance(a, a)) < 1e-6
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-6)


def test_classifier_score_bounds():
    confident = np.eye(10)[np.arange(1000) % 10]
    assert classifier_score(confident) == pytest.approx(10, rel=1e-6)  # sure and diverse: the class count
    assert classifier_score(np.eye(10)[np.zeros(1000, int)]) == pytest.approx(1, rel=1e-6)  # one class only
    assert classifier_score(np.full((1000, 10), 0.1)) == pytest.approx(1, rel=1e-6)  # never sure


def test_precision_recall_tell_fidelity_from_diversity():
    rng = np.random.default_rng(0)
    real = rng.normal(0, 1, (500, 8))
    same = rng.normal(0, 1, (500, 8))
    p, r = precision_recall(real, same, k=3)
    assert p > 0.8 and r > 0.8
    collapsed = np.repeat(real[:1], 500, 0) + rng.normal(0, 1e-3, (500, 8))  # one real point, 500 times
    p, r = precision_recall(real, collapsed, k=3)
    assert p == 1.0 and r < 0.05
    p, r = precision_recall(real, same + 50, k=3)  # somewhere else entirely
    assert p == 0.0 and r == 0.0


def test_memorization_threshold_is_a_quantile_of_leave_one_out_distances():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (200, 1, 8, 8), dtype=np.uint8)
    flat = imgs.reshape(200, -1).astype(np.float64) / 255
    brute = np.sqrt(((flat[:, None] - flat[None]) ** 2).mean(-1))  # RMS per pixel
    np.fill_diagonal(brute, np.inf)
    d, idx = nearest(imgs, imgs, exclude=np.arange(200))
    assert np.allclose(d, brute.min(1)) and (idx == brute.argmin(1)).all()
    assert memorization_threshold(imgs, 0.05, 0) == pytest.approx(np.quantile(brute.min(1), 0.05))
    d_copy, idx = nearest(imgs[:10], imgs)
    assert (d_copy == 0).all() and (idx == np.arange(10)).all()
    one_level = imgs[:1].copy()
    one_level[0, 0, 0, 0] ^= 1  # one gray level in one pixel: still measurably not a copy
    assert nearest(one_level, imgs[:1])[0][0] > 0


def test_split_is_seeded_and_disjoint():
    real = real_data(DataSpec(**DIGITS), tiny_cfg())
    a, b = split_real(real, N, 0), split_real(real, N, 0)
    assert (a.heldout == b.heldout).all() and a.n == N and len(a.reference) == LIMIT - N
    assert not set(a.heldout) & set(a.reference)
    assert not (split_real(real, N, 1).heldout == a.heldout).all()


# --------------------------------------------------------------------------------------------- evaluations
def test_evaluation_of_an_untrained_package(result, package):
    m, f = result.model, result.floor
    assert result.n == N and result.data["heldout"] == N and result.data["reference"] == LIMIT - N
    assert result.extractor["kind"] == "classifier" and result.extractor["heldout_accuracy"] > 0.8
    # real vs real is far better than an untrained G on every axis
    assert f.fld * 5 < m.fld
    assert f.score > 5 > m.score
    assert f.precision > 0.5 and f.recall > 0.5
    assert 0 <= m.memorization <= 1 and m.memorization == 0.0
    stored = json.loads(Path(eval_uri(package), "n100.json").read_text())
    assert stored["metrics"]["model"]["fld"] == pytest.approx(m.fld, rel=1e-5)
    assert stored["memorization"]["space"] == "pixel" and stored["n"] == N
    assert Path(eval_uri(package), "n100-closest.png").is_file()
    # the results live beside the package, which still verifies byte for byte
    assert verify(package).ok


def test_rerun_is_skipped_and_a_fresh_run_gives_the_same_figures(result, package, tmp_path):
    logs: list[str] = []
    again = evaluate_package(package, EvaluateSpec(samples=N), data=DataSpec(**DIGITS), log=logs.append)
    assert again.skipped and again.to_json()["metrics"] == result.to_json()["metrics"] and not logs
    # a copy of the package evaluated from scratch: same extractor bytes, same figures
    copy = make_package(tmp_path / "copy")
    fresh = evaluate_package(copy, EvaluateSpec(samples=N), data=DataSpec(**DIGITS), log=logs.append)
    assert not fresh.skipped and any("training the classifier" in line for line in logs)
    assert fresh.to_json()["metrics"] == result.to_json()["metrics"]
    w1 = Path(result.extractor["uri"], "extractor.safetensors").read_bytes()
    w2 = Path(fresh.extractor["uri"], "extractor.safetensors").read_bytes()
    assert w1 == w2


def test_extractor_package_is_pickle_free_and_reloads(result):
    folder = Path(result.extractor["uri"])
    assert sorted(p.name for p in folder.iterdir()) == ["_SUCCESS", "extractor.json", "extractor.safetensors",
                                                        "manifest.json"]
    ex = load_extractor(str(folder))
    imgs = real_data(DataSpec(**DIGITS), tiny_cfg()).images[:16]
    assert ex.features(imgs).shape == (16, 128) and ex.probs(imgs).shape == (16, 10)


def test_memorization_flags_a_generator_that_returns_training_images(package):
    real = real_data(DataSpec(**DIGITS), tiny_cfg())
    spec = EvaluateSpec(samples=N, gate=GateSpec(max_memorization=0.05))
    res = evaluate_package(package, spec, data=DataSpec(**DIGITS), generator=TrainingImages(real.images),
                           log=lambda s: None)
    assert res.model.memorization == 1.0
    assert res.floor.memorization < 0.2
    assert all(c.distance == 0.0 for c in res.copies)
    with pytest.raises(GateFailed, match=r"memorization 100\.0% .* > evaluate.gate.max_memorization 5\.0%"):
        enforce_gate(res, spec.gate)
    # its FLD is real data's: the extractor cannot tell copies from real images, only the copy check can
    assert res.model.fld < 2 * res.floor.fld


def test_gate_names_every_failed_threshold(result):
    gate = GateSpec(max_fld=1.0, min_score=9.5, max_memorization=0.5)
    failed = gate_failures(result, gate)
    assert len(failed) == 2 and failed[0].startswith("FLD") and failed[1].startswith("classifier score")
    assert gate_failures(result, GateSpec()) == []
    nan = EvalResult.from_json(result.to_json())
    nan.model.fld = math.nan
    assert gate_failures(nan, GateSpec(max_fld=1e9))  # NaN never passes


def test_gate_on_fld_as_a_multiple_of_the_floor(result):
    ratio = result.model.fld / result.floor.fld
    assert gate_failures(result, GateSpec(max_fld_ratio=ratio * 1.01)) == []
    failed = gate_failures(result, GateSpec(max_fld_ratio=ratio * 0.99))
    assert failed == [f"FLD {result.model.fld:.2f} is {ratio:.2f}x the real-vs-real floor {result.floor.fld:.2f} > "
                      f"evaluate.gate.max_fld_ratio {ratio * 0.99:g}"]
    row = next(line for line in result.lines(GateSpec(max_fld=1e9, max_fld_ratio=ratio * 0.99)) if "FLD" in line)
    assert row.endswith(f"<= 1e+09  ok; <= {ratio * 0.99:g}x floor  FAILED")
    zero_floor = EvalResult.from_json(result.to_json())
    zero_floor.floor.fld = 0.0
    assert gate_failures(zero_floor, GateSpec(max_fld_ratio=1e9))  # no ratio to a zero floor: never passes


# --------------------------------------------------------------------------------------------- aigc run + gate
def _gate_job(tmp_path: Path, model: str, gate: dict, generate: bool = True) -> Path:
    spec = {"name": "gate", "storage": {"root": str(tmp_path / "out")},
            "evaluate": {"samples": N, "data": DIGITS, "gate": gate}}
    if generate:
        spec["generate"] = {"model": model, "seeds": {"count": 20}, "shard_size": 10,
                            "scaling": {"num_actors": 1, "num_cpus": 0.5, "batch_size": 16}}
    else:
        spec["evaluate"]["model"] = model
    validate_job(spec)
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(spec))
    return path


def test_zeroed_model_fails_the_gate_in_aigc_run(ray_session, tmp_path):
    model = zeroed_package(tmp_path / "zeroed")
    job = _gate_job(tmp_path, model, {"max_fld": 50, "max_fld_ratio": 2})
    r = CliRunner().invoke(app, ["run", str(job), "--date", DATE])
    assert r.exit_code == 3, r.output
    assert "error: quality gate failed" in r.output and "FLD" in r.output and "> evaluate.gate.max_fld 50" in r.output
    assert "x the real-vs-real floor" in r.output and "> evaluate.gate.max_fld_ratio 2;" in r.output
    assert "generate did not run and nothing was published" in r.output and "Traceback" not in r.output
    out = tmp_path / "out" / "generated" / "gate" / DATE
    assert not (out / "_SUCCESS").exists() and not (out / "manifest.json").exists()
    record = json.loads((tmp_path / "out" / "runs" / "gate" / f"{DATE}.json").read_text())
    assert record["status"] == "gate_failed" and record["failed_stage"] == "evaluate"
    assert record["reason"].startswith("quality gate failed") and "FLD" in record["reason"]
    assert record["evaluation"]["gate"]["passed"] is False
    assert record["evaluation"]["model"]["fld"] > 50 > record["evaluation"]["floor"]["fld"]
    assert [s["stage"] for s in record["stages"]] == ["evaluate"]


def test_passing_gate_is_recorded(ray_session, tmp_path, package):
    job = _gate_job(tmp_path, package, {"max_memorization": 0.5}, generate=False)
    r = CliRunner().invoke(app, ["run", str(job), "--date", DATE])
    assert r.exit_code == 0, r.output
    assert "evaluate" in r.output and "gate passed" in r.output
    record = json.loads((tmp_path / "out" / "runs" / "gate" / f"{DATE}.json").read_text())
    assert record["status"] == "succeeded" and record["reason"] == ""
    assert record["evaluation"]["gate"]["passed"] is True and record["evaluation"]["n"] == N


def test_failed_stage_is_recorded_too(ray_session, tmp_path):
    job = _gate_job(tmp_path, str(tmp_path / "missing"), {}, generate=False)
    r = CliRunner().invoke(app, ["run", str(job), "--date", DATE, "--run-id", "try-1"])
    assert r.exit_code == 1 and "no published model package" in r.output
    record = json.loads((tmp_path / "out" / "runs" / "gate" / "try-1.json").read_text())
    assert record["status"] == "failed" and "no published model package" in record["reason"]


# --------------------------------------------------------------------------------------------- aigc evaluate
def test_cli_evaluate_prints_the_table_and_applies_the_gate(result, package):
    runner = CliRunner()
    r = runner.invoke(app, ["evaluate", package, "--samples", str(N), "--set", "evaluate.data.source=digits",
                            "--set", f"evaluate.data.limit={LIMIT}"])
    assert r.exit_code == 0, r.output
    assert "FLD" in r.output and "floor" in r.output and "N=100" in r.output and "reused" in r.output
    r = runner.invoke(app, ["evaluate", package, "--samples", str(N), "--set", "evaluate.data.source=digits",
                            "--set", f"evaluate.data.limit={LIMIT}", "--set", "evaluate.gate.max_fld=1"])
    assert r.exit_code == 3 and "error: quality gate failed" in r.output and "FAILED" in r.output
    r = runner.invoke(app, ["evaluate", package, "--samples", str(N), "--json", "--set", "evaluate.data.source=digits",
                            "--set", f"evaluate.data.limit={LIMIT}"])
    assert r.exit_code == 0 and json.loads(r.stdout)["n"] == N


@pytest.mark.parametrize("args, message", [
    (["--samples", "250"], "evaluate.samples: N=250 needs at least 375 real images"),
    (["--samples", "0"], "--samples: must be greater than 0"),
    (["--samples", str(N), "--set", "evaluate.extractor=autoencoder", "--set", "evaluate.gate.min_score=5"],
     "evaluate.gate.min_score: the classifier score needs the classifier extractor"),
    (["--set", "evaluate.k=100", "--samples", str(N)], "evaluate.k: k=100 needs more than 100 samples per set"),
])
def test_cli_evaluate_errors_are_one_line(package, args, message):
    base = ["evaluate", package, "--set", "evaluate.data.source=digits", "--set", f"evaluate.data.limit={LIMIT}"]
    r = CliRunner().invoke(app, base + args)
    assert r.exit_code == 1, r.output
    assert message in r.output and "Traceback" not in r.output
    assert len([line for line in r.output.splitlines() if line.startswith("error:")]) == 1


def test_cli_evaluate_needs_to_know_the_data(package, tmp_path):
    r = CliRunner().invoke(app, ["evaluate", package])
    assert r.exit_code == 1 and "evaluate.data: the model package at" in r.output and "does not say" in r.output
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "nope")])
    assert r.exit_code == 1 and "no published model package" in r.output


def test_unlabelled_data_uses_the_autoencoder(ray_session, tmp_path, package):
    from PIL import Image

    real = real_data(DataSpec(**DIGITS), tiny_cfg())
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    for i, img in enumerate(real.images[:90]):
        Image.fromarray(img[0]).save(folder / f"{i:03d}.png")
    data = DataSpec(source="images", uri=str(folder))
    res = evaluate_package(package, EvaluateSpec(samples=30), data=data, log=lambda s: None)
    assert res.extractor["kind"] == "autoencoder" and res.model.score is None and res.floor.score is None
    assert res.data["labelled"] is False and res.model.fld > res.floor.fld
    assert "autoencoder features" in "\n".join(res.lines())
    with pytest.raises(PipelineError, match="evaluate.extractor: 'classifier' needs labelled data"):
        evaluate_package(package, EvaluateSpec(samples=30, extractor="classifier"), data=data, log=lambda s: None)
    with pytest.raises(PipelineError, match="evaluate.gate.min_score"):
        evaluate_package(package, EvaluateSpec(samples=30, gate=GateSpec(min_score=2)), data=data, log=lambda s: None)


# --------------------------------------------------------------------------------------------- acceptance (slow)
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_trained_demo_model_is_near_the_floor_and_far_from_an_untrained_g(ray_session, tmp_path):
    from pipeline.specs import load_job
    from pipeline.train.driver import train

    root = Path(__file__).resolve().parents[1]
    job = load_job(root / "jobs" / "demo.yaml", [f"storage.root={tmp_path}"])
    trained = train(job).package_uri
    untrained_cfg = job.train.model
    torch.manual_seed(job.train.seed)
    untrained = str(tmp_path / "untrained")
    export_package(untrained, Generator(untrained_cfg), untrained_cfg, {"train": {"data": {"source": "digits"}}})
    spec = EvaluateSpec(samples=1000)
    good = evaluate_package(trained, spec, log=lambda s: None)
    bad = evaluate_package(untrained, spec, log=lambda s: None)
    assert good.floor.to_json() == bad.floor.to_json()  # same data, split and extractor: one floor
    assert good.model.fld < bad.model.fld / 10
    assert good.model.fld <= 2 * good.floor.fld, good.lines()


def test_evaluate_only_job_needs_a_model():
    from pipeline.evaluate import run_evaluate

    with pytest.raises(PipelineError, match="evaluate.model: needed when the job has neither a train stage"):
        run_evaluate(validate_job({"name": "x", "evaluate": {"samples": N}}))
