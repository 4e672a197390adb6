"""The byte-level GPT's training loop on a Ray Train worker (the shared driver runs it: DDP,
checkpoints, true resume and export are the same as for every family).

    aigc train jobs/text-demo.yaml [--set train.epochs=4]

How it works

* Data: :func:`pipeline.families.bytegpt.corpus.load_corpus` reads, checks and splits the corpus in the driver
  (errors name the file and line before any worker starts). The token streams travel to the
  workers as a small Ray Data dataset that every worker reads whole.
* Examples: the training stream is cut into ``n`` windows of ``block_size + 1`` tokens starting at
  ``offset + k * block_size``; the offset (0 .. block_size-1) is drawn per epoch from (seed, epoch),
  so window boundaries move between epochs. Each epoch takes this rank's slice of a permutation
  seeded by (seed, epoch) (:func:`~pipeline.train.worker.epoch_indices`), as the GAN does.
* Optimizer: AdamW (``train.lm``), decaying the 2-D weights only, with a linear warm-up that is a
  function of the global step alone (no schedule that depends on ``train.epochs``: a run extended
  from 1 to 2 epochs must equal a 2-epoch run).
* After each epoch every rank scores its share of the held-out segments; the sums are
  all-reduced, so every epoch records the held-out perplexity beside the unigram baseline.
* Checkpoints: ``models.safetensors`` (``LM.*``), ``optimizers.safetensors`` + ``state.json``
  (AdamW param groups, epoch, global step, history, spec), ``rng-rank<r>.safetensors`` and
  ``samples.txt`` (two completions from fixed seeds); the same files and completeness rule as
  the GAN's, so resume, retries and the cleanup of unregistered folders are shared.
* Export: the last checkpoint's model becomes the package ``<root>/models/<job>/<version>/``
  (``model.json`` + ``generator.safetensors``), with the tokenizer, the corpus summary and the
  history of held-out and unigram perplexities.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

import pipeline.runtime  # noqa: F401 - sets Ray's loopback env before anything imports Ray
from pipeline.errors import PipelineError
from pipeline.families.bytegpt.corpus import Corpus, load_corpus, unigram_nll
from pipeline.families.bytegpt.model import ByteGPT, complete, score_segments
from pipeline.specs.schema import LMSpec, TrainSpec
from pipeline.train.checkpoint import save_parts, set_rng_state
from pipeline.train.worker import (
    PROGRESS_EVERY_S,
    Progress,
    epoch_indices,
    mix,
    quiet_worker_logs,
    report_epoch,
    resumed,
    seed_worker,
    start_worker,
    steps_per_epoch,
    unwrap,
    world_nodes,
    write_samples,
)

PART = "LM"  # the model's name in the checkpoint files
CHUNK = 1 << 16  # tokens per dataset row on the way to the workers
SAMPLE_PROMPTS = ("Return the ", "This module ")


# --------------------------------------------------------------------------------------------- data
@dataclass
class TextData:
    """The corpus as the training machinery sees it (``_run_fit`` reads dataset, fingerprint, classes)."""

    corpus: Corpus
    dataset: Any  # ray.data.Dataset: rows {split, i, data} (uint16 little-endian tokens)
    fingerprint: str
    classes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return self.corpus.summary()


def load_text_data(t: TrainSpec, storage: Any) -> TextData:
    import ray

    corpus = load_corpus(t.data, storage)
    rows = [{"split": "train", "i": k, "data": corpus.train[lo: lo + CHUNK].astype("<u2").tobytes()}
            for k, lo in enumerate(range(0, len(corpus.train), CHUNK))]
    rows += [{"split": "heldout", "i": k, "data": seg.astype("<u2").tobytes()} for k, seg in enumerate(corpus.heldout)]
    return TextData(corpus=corpus, dataset=ray.data.from_items(rows), fingerprint=corpus.fingerprint)


def _read_tokens(shard: Any) -> tuple[torch.Tensor, list[np.ndarray]]:
    """The training stream and the held-out segments, reassembled in order from the dataset rows."""
    rows = sorted(((str(r["split"]), int(r["i"]), bytes(r["data"])) for r in shard.iter_rows()))
    train = [np.frombuffer(d, dtype="<u2") for s, _, d in rows if s == "train"]
    held = [np.frombuffer(d, dtype="<u2").astype(np.int64) for s, _, d in rows if s == "heldout"]
    return torch.from_numpy(np.concatenate(train).astype(np.int64)), held


def windows(n_tokens: int, block: int) -> int:
    """Training windows of block+1 tokens in a stream, leaving room for any offset below ``block``.

    Window k spans ``offset + k*block .. offset + (k+1)*block`` inclusive, offset <= block-1.
    """
    return max(0, (n_tokens - 2 * block) // block + 1)


# --------------------------------------------------------------------------------------------- progress
class TextProgress(Progress):
    """The GAN's progress event, phrased for a language model."""

    def metrics_line(self) -> str:
        m = self.metrics
        if self.kind == "step":
            return (f"epoch {self.epoch + 1}/{self.epochs}  step {self.step}/{self.steps}  loss {m.get('loss', 0):.3f} "
                    " "
                    f"{m.get('tokens/s', 0):,.0f} tokens/s")
        return (f"epoch {self.epoch + 1}/{self.epochs} done  loss {m.get('loss', 0):.3f}  held-out perplexity "
                f"{m.get('perplexity', float('nan')):.2f} (unigram {m.get('unigram_perplexity', float('nan')):.2f})  "
                f"{m.get('tokens/s', 0):,.0f} tokens/s  (step {self.global_step})")


# --------------------------------------------------------------------------------------------- model and optimizer
def build_lm(t: TrainSpec) -> ByteGPT:
    """The GPT with the same initial weights on every rank, for a given ``train.seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(t.seed)
        return ByteGPT(t.model)


def make_optimizer(model: torch.nn.Module, lm: LMSpec) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": lm.weight_decay},
                              {"params": rest, "weight_decay": 0.0}],
                             lr=lm.lr, betas=(lm.beta1, lm.beta2))


def lr_at(step: int, lm: LMSpec) -> float:
    return lm.lr * min(1.0, (step + 1) / lm.warmup_steps) if lm.warmup_steps else lm.lr


def restore_lm(ck: Any, model: torch.nn.Module) -> None:
    try:
        unwrap(model).load_state_dict(ck.part(PART), strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0][:200]
        raise PipelineError(f"{ck.where}/models.safetensors: weights do not fit train.model ({first})") from None


def restore_optimizer(ck: Any, opt: torch.optim.Optimizer, lm: LMSpec) -> None:
    try:
        opt.load_state_dict(ck.optimizer_state(PART))
    except (ValueError, KeyError, RuntimeError) as exc:
        raise PipelineError(f"{ck.where}/optimizers.safetensors: optimizer state does not fit ({exc})") from None
    for group in opt.param_groups:  # the spec is the source of truth for hyper-parameters
        group["betas"] = (lm.beta1, lm.beta2)


def sample_text(model: torch.nn.Module, t: TrainSpec) -> str:
    """Two completions from fixed prompts and seeds: what the model writes after this epoch."""
    m = unwrap(model)
    was = m.training
    m.eval()
    out = []
    for i, prompt in enumerate(SAMPLE_PROMPTS):
        c = complete(m, prompt.encode(), max_new_tokens=min(96, t.model.block_size), temperature=0.8, top_k=40,
                     seed=mix(t.seed, "sample", i), device=next(m.parameters()).device)
        out.append(f"--- {prompt!r} ({c.stop})\n{prompt}{c.data.decode('utf-8', 'replace')}\n")
    m.train(was)
    return "".join(out)


# --------------------------------------------------------------------------------------------- worker loop
def loop(config: dict) -> None:
    """The loop every Ray Train worker runs for a text model (rank 0 also checkpoints and reports progress)."""
    import ray
    import ray.train
    import ray.train.torch

    w = start_worker(config)
    cfg, rank, world, device, progress = w.cfg, w.rank, w.world, w.device, w.progress
    t = cfg.job.train
    lm = t.lm or LMSpec()
    block = t.model.block_size

    # 1. data: the whole token stream and the held-out segments on every worker
    tokens, heldout = _read_tokens(ray.train.get_dataset_shard("train"))
    quiet_worker_logs()
    n = windows(len(tokens), block)
    steps = steps_per_epoch(n, world, t.batch_size)
    mine = heldout[rank::world]  # Distributed: each rank scores its share of the held-out segments
    unigram = unigram_nll(tokens.numpy(), heldout).perplexity

    # 2. the model from the seed, or from the checkpoint rank 0 chose (after a resume or a restart)
    model = build_lm(t)
    ck, rng = w.resume((PART,))
    start_epoch, global_step, history, resumed_from = resumed(ck)
    if ck is not None:
        restore_lm(ck, model)
    model = ray.train.torch.prepare_model(model)  # Distributed: DDP all-reduces the gradients
    opt = make_optimizer(model, lm)
    if ck is not None:
        restore_optimizer(ck, opt, lm)
        if rng is not None:
            set_rng_state(*rng)
    else:
        seed_worker(t.seed, rank)  # dropout differs per rank, as in any DDP run

    progress(TextProgress("start", start_epoch, t.epochs, steps=steps, global_step=global_step,
                          resumed_from=resumed_from, world_size=world, nodes=world_nodes(world)))
    arange = torch.arange(block)
    for epoch in range(start_epoch, t.epochs):
        idx = epoch_indices(n, epoch, rank, world, t.seed)
        offset = int(torch.randint(block, (), generator=torch.Generator().manual_seed(mix(t.seed, "offset", epoch))))
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64)
        t0 = last = time.perf_counter()
        for step in range(steps):
            starts = offset + idx[step * t.batch_size:(step + 1) * t.batch_size] * block
            pos = starts[:, None] + arange[None, :]
            x, y = tokens[pos].to(device), tokens[pos + 1].to(device)
            for group in opt.param_groups:
                group["lr"] = lr_at(global_step, lm)
            # 1. forward and backward (DDP averages the gradients over the ranks)
            _, loss = model(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            # 2. clip the (already all-reduced, so identical) gradients, then step
            if lm.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), lm.grad_clip)
            opt.step()
            loss_sum += loss.detach().double().cpu()
            global_step += 1
            now = time.perf_counter()
            if rank == 0 and now - last > PROGRESS_EVERY_S:
                last = now
                progress(TextProgress("step", epoch, t.epochs, step + 1, steps, global_step,
                                      {"loss": loss.item(),
                                       "tokens/s": (step + 1) * t.batch_size * block * world / (now - t0)}))
        seconds = time.perf_counter() - t0

        # 3. held-out perplexity: each rank its segments, summed over the ranks
        sums = torch.tensor([loss_sum.item(), *score_segments(unwrap(model).eval(), mine, device=device)],
                            dtype=torch.float64)
        if world > 1:  # Distributed: the loop's only explicit collective
            torch.distributed.all_reduce(sums)
        nll = sums[1].item() / sums[2].item() if sums[2].item() else float("nan")
        metrics = {"epoch": epoch, "global_step": global_step, "loss": sums[0].item() / (steps * world),
                   "heldout_loss": nll, "perplexity": math.exp(nll) if nll == nll else float("nan"),
                   "unigram_perplexity": unigram, "heldout_tokens": int(sums[2].item()),
                   "lr": lr_at(global_step - 1, lm), "tokens/s": steps * t.batch_size * block * world / seconds,
                   "seconds": seconds}
        history.append(metrics)

        # 4. checkpoint: rank 0 writes model, optimizer, state and samples; every rank its RNG
        def write(tmp: str, state: dict) -> None:
            save_parts(tmp, {PART: model}, {PART: opt}, state)
            with torch.random.fork_rng(devices=[]):  # sampling draws from its own generators only
                text = sample_text(model, t)
            write_samples(cfg, tmp, epoch, text.encode("utf-8"), "txt")

        report_epoch(cfg, epoch, rank, metrics, history, write, world_size=world, steps_per_epoch=steps, num_examples=n)
        progress(TextProgress("epoch", epoch, t.epochs, steps, steps, global_step, metrics))
