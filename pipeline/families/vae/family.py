"""The VAE family's implementation: its network, loop and export, and its own figure beside the
image evaluation's: the held-out negative ELBO in bits per dimension."""

from __future__ import annotations

from typing import Any

import torch

from pipeline.families.vae import loop as vae_loop
from pipeline.families.vae.model import VAE as VAENet
from pipeline.families.vae.model import bits_per_dim
from pipeline.image.family import ImageFamily
from pipeline.image.realdata import RealData, Split, to_float
from pipeline.train.checkpoint import load_part
from pipeline.train.worker import mix


@torch.inference_mode()
def heldout_elbo(pkg: Any, real: RealData, split: Split, seed: int = 0, batch: int = 256) -> dict[str, dict]:
    """The negative ELBO on the examples training never saw, in bits per dimension: the test split when
    ``evaluate.heldout`` names one, else the training data's held-out rows (``train.model.heldout``); one
    posterior sample per image from a seeded generator."""
    cfg = pkg.config
    mask = vae_loop.heldout_mask(len(split.train), cfg.heldout).numpy()  # in the training data's order
    if split.tested:  # evaluate.heldout: a test split, which training never saw either
        which, idx = "test-split", split.test
    else:
        which = "held-out" if mask.any() else "training"
        idx = split.train[mask] if mask.any() else split.train
    model = pkg.build_model()
    dims = cfg.channels * cfg.image_size * cfg.image_size
    gen = torch.Generator().manual_seed(mix(seed, "elbo"))
    nll_sum = kl_sum = 0.0
    for lo in range(0, len(idx), batch):
        part = idx[lo: lo + batch]
        x = to_float(real.images[part])
        y = torch.from_numpy(real.labels[part]) if cfg.conditional else None
        nll, kl = model(torch.randn(len(part), cfg.z_dim, generator=gen), y, x=x)
        nll_sum, kl_sum = nll_sum + float(nll.sum()), kl_sum + float(kl.sum())
    n = max(len(idx), 1)
    return {"bits_per_dim": {
        "value": bits_per_dim((nll_sum + kl_sum) / n, dims), "label": f"{which} bits/dim", "gate": "max_bits_per_dim",
        "note": (f"negative ELBO on the {len(idx):,} {which} images ({bits_per_dim(nll_sum / n, dims):.3f} "
                 f"reconstruction + {bits_per_dim(kl_sum / n, dims):.3f} KL), a bound on their code length; "
                 "lower is better")}}


class VAE(ImageFamily):
    parts = (vae_loop.PART,)
    loop = staticmethod(vae_loop.loop)
    extra_metrics = staticmethod(heldout_elbo)

    def build(self, config: Any) -> VAENet:
        return VAENet(config)

    def export(self, job: Any, ck: Any, data: Any) -> tuple[Any, Any, dict]:
        model = VAENet(job.train.model)
        load_part(ck, vae_loop.PART, model)
        return model, job.train.model, {"likelihood": "discretized logistic, 256 bins"}

    def describe(self, history: list[dict], data: dict) -> str:
        last = history[-1] if history else {}
        if "bits/dim" not in last:
            return f"{len(history)} epochs"
        return (f"{len(history)} epochs, {data.get('count', 0):,} images, training ELBO {last['bits/dim']:.3f} "
                f"bits/dim (KL {last['kl']:.2f} nats, beta {last['beta']:.2f})")

    def curves(self, history: list[dict]) -> dict[str, tuple[str, dict[str, list[float]]]]:
        def col(key: str) -> list[float]:
            return [float(h[key]) if isinstance(h.get(key), (int, float)) else float("nan") for h in history]

        return {"elbo.png": ("Negative ELBO per epoch (training images, bits per dimension)",
                             {"bits/dim": col("bits/dim")}),
                "kl.png": ("KL(q(z|x) || p(z)) per image (nats) and its weight",
                           {"KL": col("kl"), "beta": col("beta")})}
