"""The GAN training aids behind the demo model's quality: differentiable augmentation, the moving
average of G (with its batch-norm statistics), upsample + conv in G, minibatch-stddev in D, and
that a run using them still resumes bit-exactly and exports the averaged G.

The last test trains on a real local Ray (three short fits, about 25 s of fixed cost each).
"""

from __future__ import annotations

import copy

import pytest
import torch

from pipeline.families.dcgan.loop import EMA_PART, build_ema, exported_generator, gan_step, r1_weight, save_checkpoint
from pipeline.families.dcgan.model import Discriminator, Generator
from pipeline.models.diffaugment import BACKGROUND, cutout, diff_augment, translation
from pipeline.models.ema import ema_decay, ema_update, recalibrate_bn
from pipeline.package import load_package
from pipeline.specs import ModelSpec, TrainSpec, deep_merge, validate_job
from pipeline.train.checkpoint import load_checkpoint
from pipeline.train.driver import train


def cfg(**over) -> ModelSpec:
    return ModelSpec(**{"image_size": 32, "z_dim": 16, "g_width": 8, "d_width": 8, "conditional": True, **over})


# --------------------------------------------------------------------------------------------- DiffAugment
def test_augmentation_is_a_function_of_its_generator_and_lets_gradients_through():
    x = (torch.rand(8, 3, 32, 32) * 2 - 1).requires_grad_(True)
    a = diff_augment(x, ["translation", "cutout"], torch.Generator().manual_seed(1))
    b = diff_augment(x, ["translation", "cutout"], torch.Generator().manual_seed(1))
    c = diff_augment(x, ["translation", "cutout"], torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="unknown augmentation 'flip'"):
        diff_augment(x, ["flip"], torch.Generator())


def test_translation_shifts_by_at_most_an_eighth_and_reveals_black():
    x = torch.arange(32.0).repeat(32, 1)[None, None].repeat(64, 1, 1, 1)  # column index as the value
    out = translation(x, torch.Generator().manual_seed(0))
    shifts = set()
    for img in out[:, 0]:
        row = img[16]
        inside = row[row != BACKGROUND]
        shifts.add(int(inside[0] - (row != BACKGROUND).nonzero()[0]))  # value minus position = shift
        assert torch.equal(inside, torch.arange(inside[0], inside[0] + len(inside)))  # contiguous, unscaled
    assert shifts <= set(range(-4, 5)) and len(shifts) > 3


def test_cutout_blanks_one_square_of_half_the_side():
    out = cutout(torch.ones(32, 1, 32, 32), torch.Generator().manual_seed(0))
    blank = (out == 0).sum(dim=(1, 2, 3))
    assert (blank <= 16 * 16).all() and (blank > 0).all() and (blank == 256).any()


# --------------------------------------------------------------------------------------------- EMA of G
def test_ema_decay_ramps_up_to_its_value():
    assert ema_decay(0.999, 1) == pytest.approx(2 / 11)
    assert ema_decay(0.999, 100) == pytest.approx(101 / 110)
    assert ema_decay(0.999, 10**6) == 0.999


def test_ema_update_averages_parameters_only():
    g = Generator(cfg())
    avg = copy.deepcopy(g)
    with torch.no_grad():
        for p in g.parameters():
            p.add_(1.0)
        for b in g.buffers():
            if b.is_floating_point():
                b.add_(5.0)
    before = [p.clone() for p in avg.parameters()]
    ema_update(avg, g, decay=0.9, step=10**6)
    for a, b0, p in zip(avg.parameters(), before, g.parameters()):
        assert torch.allclose(a, 0.9 * b0 + 0.1 * p)
    assert all(not torch.equal(a, b) for a, b in zip(avg.buffers(), g.buffers()) if a.is_floating_point())


def test_recalibrated_bn_statistics_depend_on_the_weights_and_seed_only():
    g = Generator(cfg(g_upsample="nearest"))
    other = copy.deepcopy(g)
    with torch.no_grad():
        for m in other.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-3, 3)
                m.running_var.uniform_(4, 9)
    a = recalibrate_bn(g, torch.Generator().manual_seed(0))
    b = recalibrate_bn(other, torch.Generator().manual_seed(0))
    assert not a.training and not b.training
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k
    bn = next(m for m in a.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert bn.momentum == 0.1 and bn.running_var.min() > 0


# --------------------------------------------------------------------------------------------- R1 penalty
def test_r1_is_lazy_and_weighted_by_its_interval():
    t = TrainSpec(r1=0.5, r1_every=4)
    assert [r1_weight(t, s) for s in range(6)] == [2.0, 0, 0, 0, 2.0, 0]
    assert r1_weight(TrainSpec(), 0) == 0 and r1_weight(TrainSpec(r1=1.0, r1_every=1), 7) == 1.0


def _first_step(r1: float, scaler=None) -> tuple[torch.Tensor, Discriminator]:
    """One gan_step from a fixed init and fixed inputs; returns its report and the updated D."""
    m = cfg(g_upsample="nearest", d_minibatch_std=True)
    torch.manual_seed(0)
    real = torch.rand(8, 1, 32, 32) * 2 - 1
    labels, z = torch.arange(8) % 10, torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    G, D = Generator(m), Discriminator(m)
    opt_g, opt_d = torch.optim.Adam(G.parameters(), 1e-3), torch.optim.Adam(D.parameters(), 1e-3)
    return gan_step(G, D, opt_g, opt_d, real, labels, z, scaler=scaler, r1=r1), D


def test_r1_penalty_joins_d_loss_but_not_its_report():
    """Same inputs, with and without R1: the reported loss_D is the same, D's update is not."""
    (plain, d0), (penalised, d1) = _first_step(0.0), _first_step(10.0)
    assert torch.isfinite(penalised).all()
    assert torch.allclose(plain[0], penalised[0])  # reported loss_D leaves the penalty out
    assert any(not torch.equal(a, b) for a, b in zip(d0.parameters(), d1.parameters()))


def test_r1_through_a_grad_scaler_is_unscaled():
    """The fp16 path differentiates the scaled sum and divides the scale out: through a scaler at
    scale 1024 (a power of two: exact) D's update is bit-identical to the scaler-free path, where
    an unscaled input gradient would weigh the penalty 1024² times."""
    _, plain = _first_step(10.0)
    _, scaled = _first_step(10.0, torch.amp.GradScaler("cpu", init_scale=1024.0))
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), scaled.parameters()))


# --------------------------------------------------------------------------------------------- architecture options
@pytest.mark.parametrize("size", [28, 32, 64])
@pytest.mark.parametrize("up", ["transposed", "nearest", "bilinear"])
def test_generator_upsampling_options_make_the_right_size(size, up):
    m = cfg(image_size=size, channels=3, g_upsample=up)
    g = Generator(m).eval()
    out = g(torch.randn(2, 16), torch.tensor([1, 2]))
    assert out.shape == (2, 3, size, size) and out.abs().max() <= 1
    assert any(isinstance(x, torch.nn.Upsample) for x in g.modules()) == (up != "transposed")


def test_minibatch_std_lets_d_see_the_variety_of_a_batch():
    d = Discriminator(cfg(d_minibatch_std=True)).eval()
    labels = torch.zeros(4, dtype=torch.long)
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    same = x[:1].repeat(4, 1, 1, 1)
    # The first image's score changes with the rest of its batch (plain D: never, in eval mode).
    assert not torch.allclose(d(x, labels)[0], d(same, labels)[0])
    plain = Discriminator(cfg()).eval()
    assert torch.allclose(plain(x, labels)[0], plain(same, labels)[0])


def test_older_specs_build_the_old_architecture():
    m = ModelSpec.model_validate({"image_size": 32, "z_dim": 16, "g_width": 8, "d_width": 8})
    assert m.g_upsample == "transposed" and not m.d_minibatch_std
    t = validate_job({"name": "x", "train": {"model": {"z_dim": 16}}}, "t").train
    assert t.ema == 0 and t.augment == []


# --------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_carries_the_average_and_exports_it(tmp_path):
    t = TrainSpec(model=cfg(g_upsample="nearest", d_minibatch_std=True), ema=0.99)
    G, D = Generator(t.model), Discriminator(t.model)
    G_ema = build_ema(t, G)
    with torch.no_grad():
        for p in G_ema.parameters():
            p.mul_(0.5)
    opt_g, opt_d = torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters())
    save_checkpoint(str(tmp_path), G, D, opt_g, opt_d, {"epoch": 0, "global_step": 0}, G_ema=G_ema)
    ck = load_checkpoint(str(tmp_path))
    assert {k.split(".", 1)[0] for k in ck.models} == {"G", "D", EMA_PART}
    restored = build_ema(t, Generator(t.model), ck)
    exported = exported_generator(ck, t)
    for (k, a), b, c in zip(G_ema.state_dict().items(), restored.state_dict().values(), exported.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(a, c), k
    # Without train.ema there is no average, and G itself is exported.
    assert build_ema(t.model_copy(update={"ema": 0.0}), G) is None
    save_checkpoint(str(tmp_path), G, D, opt_g, opt_d, {"epoch": 0, "global_step": 0})
    ck = load_checkpoint(str(tmp_path))
    assert not ck.part(EMA_PART)
    assert all(torch.equal(a, b)
               for a, b in zip(G.state_dict().values(), exported_generator(ck, t).state_dict().values()))


def test_a_text_model_refuses_gan_options():
    base = {"name": "x", "train": {"data": {"source": "text", "uri": "corpus.txt"}, "model": {"arch": "bytegpt"}}}
    for extra in ({"ema": 0.999}, {"augment": ["cutout"]}, {"r1": 1.0}):
        with pytest.raises(Exception, match=f"train.{next(iter(extra))}: does not apply to the bytegpt architecture"):
            validate_job(deep_merge(base, {"train": extra}), "t")


# --------------------------------------------------------------------------------------------- resume (Ray)
@pytest.mark.slow  # the default suite proves the same with tests/test_train.py's shared spec (which uses the recipe)
@pytest.mark.timeout(900)
def test_resume_with_ema_and_augmentation_matches_an_uninterrupted_run(ray_session, tmp_path):
    """2 epochs, then the same job to 4: G, D, the average and the optimizers equal a straight 4-epoch run."""

    def job(root, epochs):
        return validate_job({
            "name": "aids", "storage": {"root": str(root)},
            "train": {"data": {"source": "digits", "limit": 256},
                      "model": {"image_size": 32, "z_dim": 16, "g_width": 8, "d_width": 8, "conditional": True,
                                "g_upsample": "nearest", "d_minibatch_std": True},
                      "epochs": epochs, "batch_size": 32, "seed": 5, "ema": 0.99, "augment": ["translation", "cutout"],
                      "r1": 1.0, "r1_every": 2,
                      "scaling": {"num_workers": 2}, "checkpoint": {"keep": 2}}}, "test")

    straight = train(job(tmp_path / "a", 4))
    train(job(tmp_path / "b", 2))
    resumed = train(job(tmp_path / "b", 4))
    assert resumed.resumed_from == 1 and resumed.epochs_run == [2, 3]
    a = load_checkpoint(str(tmp_path / "a" / "checkpoints" / "aids" / "epoch_0003"))
    b = load_checkpoint(str(tmp_path / "b" / "checkpoints" / "aids" / "epoch_0003"))
    assert a.models.keys() == b.models.keys() and any(k.startswith(EMA_PART + ".") for k in a.models)
    for x, y in ((a.models, b.models), (a.optim, b.optim)):
        diff = max((x[k].double() - y[k].double()).abs().max().item() for k in x)
        assert diff <= 1e-6, f"resumed run differs from the uninterrupted one by {diff}"
    # The package holds the average (with its recomputed BN statistics), not the last G.
    pkg = load_package(straight.package_uri)
    assert all(torch.equal(v, a.part(EMA_PART)[k]) for k, v in pkg.state_dict.items())
    assert any(not torch.equal(v, a.part("G")[k]) for k, v in pkg.state_dict.items())
