"""A small byte-level GPT (nanoGPT style) and its sampler, sized from a :class:`ByteGPTConfig`.

* **Tokens** are the 256 byte values plus one end-of-text token ``EOS = 256`` (vocabulary 257).
  Any UTF-8 text (any byte string, in fact) is its own token sequence; no tokenizer file exists.
* **Model**: token + position embeddings, ``n_layer`` pre-LayerNorm blocks (causal self-attention
  through ``F.scaled_dot_product_attention(is_causal=True)``, then a GELU MLP of width 4x), a final
  LayerNorm, and a head tied to the token embedding (``F.linear(x, wte.weight)``: one tensor, so
  the safetensors export holds no shared storage).
* **Sampling** (:func:`complete`): one prompt at a time, with a key/value cache, from its own
  ``torch.Generator(seed)``. Every item is computed alone, so its bytes never depend on which
  other items share its actor, batch or shard. Each step conditions on the last ``block_size``
  tokens (as nanoGPT's ``generate``): the cache serves until the context is full, after that every
  step re-reads the last ``block_size`` tokens. The next token is drawn by inverse CDF from one
  float64 uniform of the item's generator, after ``temperature`` and ``top_k``; temperature 0 is
  greedy. Sampling stops at EOS (not part of the completion) or after ``max_new_tokens``.

    >>> from pipeline.catalog.bytegpt import ByteGPTConfig
    >>> m = ByteGPT(ByteGPTConfig(arch="bytegpt", n_layer=1, n_head=2, n_embd=16, block_size=32)).eval()
    >>> c = complete(m, b"Hello", max_new_tokens=8, temperature=1.0, top_k=None, seed=7)
    >>> len(c.tokens) <= 8 and c.stop in ("eos", "length")
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.catalog.bytegpt import ByteGPTConfig

VOCAB_SIZE = 257
EOS = 256
TOKENIZER = {"kind": "bytes", "vocab_size": VOCAB_SIZE, "eos": EOS}  # recorded in model.json
# names the sampling procedure in every output's manifest; /2: fixed micro-batches (generate.text.batch_size)
SAMPLER = "aigc-bytegpt-sample/2"


class KVCache:
    """Keys and values of one attention layer for the tokens seen so far (sampling only).

    With a ``capacity``, the first write allocates buffers for that many positions and later
    writes fill them in place (no copy of the whole cache per token, as growing by ``torch.cat``
    costs); without one, the cache grows by concatenation.
    """

    def __init__(self, capacity: int | None = None) -> None:
        self.capacity = capacity
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the keys and values of new positions; returns every position's so far."""
        t = k.shape[2]
        if self.capacity is None:
            self.k = k if self.k is None else torch.cat([self.k, k], 2)
            self.v = v if self.v is None else torch.cat([self.v, v], 2)
        else:
            if self.k is None:
                shape = (k.shape[0], k.shape[1], max(self.capacity, t), k.shape[3])
                self.k, self.v = k.new_empty(shape), v.new_empty(shape)
            if self.n + t > self.k.shape[2]:
                raise ValueError(f"a cache of {self.k.shape[2]} positions cannot take {self.n + t}")
            self.k[:, :, self.n:self.n + t] = k
            self.v[:, :, self.n:self.n + t] = v
        self.n += t
        return self.k[:, :, :self.n], self.v[:, :, :self.n]

    def select(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows (finished ones leave)."""
        if self.k is not None:
            self.k, self.v = self.k[rows], self.v[rows]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ByteGPTConfig):
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` (B, 1, T, S), True where a query may attend to a key (batched sampling with padding)."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        causal = True
        if cache is not None:
            causal = len(cache) == 0  # new tokens after cached ones attend to every cached one
            k, v = cache.append(k, v)
        if mask is not None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            assert causal or T == 1, "a cached step without a mask feeds one token"
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                               is_causal=causal and T > 1)
        return self.resid_drop(self.proj(y.transpose(1, 2).contiguous().view(B, T, C)))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: ByteGPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.out = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache, mask)
        return x + self.drop(self.out(F.gelu(self.fc(self.ln2(x)))))


class ByteGPT(nn.Module):
    def __init__(self, cfg: ByteGPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(VOCAB_SIZE, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        # GPT-2 init: N(0, 0.02), residual projections scaled down by sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * cfg.n_layer) if name.endswith(("attn.proj.weight", "out.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                caches: list[KVCache] | None = None, pos: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, 257) of ``idx`` (B, T); with ``targets``, also the mean cross-entropy.

        ``caches`` (sampling): positions continue after the cached tokens, and the caches grow.
        ``pos`` (B, T) and ``mask`` (B, 1, T, S): per-row positions and attention of a padded batch.
        """
        T = idx.shape[1]
        if pos is None:
            start = len(caches[0]) if caches else 0
            if start + T > self.cfg.block_size:
                raise ValueError(f"{start + T} tokens do not fit block_size {self.cfg.block_size}")
            pos = torch.arange(start, start + T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for i, block in enumerate(self.blocks):
            x = block(x, caches[i] if caches else None, mask)
        logits = F.linear(self.ln_f(x), self.wte.weight)  # the head is the token embedding (weight tying)
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.reshape(-1, VOCAB_SIZE).float(), targets.reshape(-1))


# --------------------------------------------------------------------------------------------- sampling
@dataclass
class Completion:
    tokens: list[int]  # generated bytes (0-255); EOS is never included
    stop: str  # "eos" | "length"

    @property
    def data(self) -> bytes:
        return bytes(self.tokens)


def next_token(logits: torch.Tensor, temperature: float, top_k: int | None, gen: torch.Generator) -> int:
    """One token from the last position's logits: greedy at temperature 0, else inverse-CDF sampling."""
    logits = logits.double()
    if temperature == 0:
        return int(torch.argmax(logits))  # ties: the lowest token id
    logits = logits / temperature
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    cdf = torch.cumsum(torch.softmax(logits, 0), 0)
    u = torch.rand((), generator=gen, dtype=torch.float64)
    return min(int(torch.searchsorted(cdf, u * cdf[-1], right=True)), logits.numel() - 1)


@torch.inference_mode()
def complete(model: ByteGPT, prompt: bytes, *, max_new_tokens: int, temperature: float, top_k: int | None,
             seed: int, device: str | torch.device = "cpu") -> Completion:
    """Sample one completion of ``prompt`` from ``model`` (in eval mode) with its own generator(seed)."""
    gen = torch.Generator().manual_seed(seed)
    block = model.cfg.block_size
    tokens = list(prompt) or [EOS]  # an empty prompt starts after an end-of-text, like a new document
    out: list[int] = []
    caches: list[KVCache] | None = None
    for _ in range(max_new_tokens):
        if len(tokens) <= block and caches is not None:  # 1 new token on top of the cache
            logits, _ = model(torch.tensor([tokens[-1:]], device=device), caches=caches)
        elif len(tokens) <= block:  # the prompt, once, filling the cache
            caches = [KVCache() for _ in model.blocks]
            logits, _ = model(torch.tensor([tokens], device=device), caches=caches)
        else:  # the context is full: the last block_size tokens, without a cache
            logits, _ = model(torch.tensor([tokens[-block:]], device=device))
        tok = next_token(logits[0, -1].cpu(), temperature, top_k, gen)
        if tok == EOS:
            return Completion(out, "eos")
        tokens.append(tok)
        out.append(tok)
    return Completion(out, "length")


def _pick(logits: torch.Tensor, temperature: float, top_k: int | None, gens: list[torch.Generator]) -> list[int]:
    """:func:`next_token` for a batch: one row of float64 logits per item, each drawing from its own generator."""
    if temperature == 0:
        return torch.argmax(logits, dim=1).tolist()  # ties: the lowest token id
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[1]:
        kth = torch.topk(logits, top_k, dim=1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    cdf = torch.cumsum(torch.softmax(logits, 1), 1)
    u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in gens])
    picked = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1).contiguous(), right=True).squeeze(1)
    return picked.clamp(max=logits.shape[1] - 1).tolist()


def _padded(rows: list[list[int]], device: str | torch.device) -> tuple[torch.Tensor, ...]:
    """Rows left-padded to one length: (tokens, positions from 0 at each row's first token, attention mask
    (causal, pads never attended to; a pad attends to itself only, so nothing is NaN), which keys are real)."""
    width = max(len(r) for r in rows)
    pads = torch.tensor([width - len(r) for r in rows])
    idx = torch.tensor([[0] * (width - len(r)) + r for r in rows], device=device)
    pos = (torch.arange(width)[None, :] - pads[:, None]).clamp(min=0).to(device)
    real = torch.arange(width)[None, :] >= pads[:, None]
    causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
    mask = (causal[None] & real[:, None, :]) | torch.eye(width, dtype=torch.bool)[None]
    return idx, pos, mask[:, None].to(device), real.to(device)


@torch.inference_mode()
def complete_batch(model: ByteGPT, prompts: list[bytes], seeds: list[int], *, max_new_tokens: int,
                   temperature: float, top_k: int | None, device: str | torch.device = "cpu") -> list[Completion]:
    """Completions of a micro-batch: every item with its own generator(seed), one forward pass per step.

    Ragged prompts are left-padded; each row's positions start at its first token and no query
    attends to a pad, so a row computes what it would alone (up to floating-point rounding: the
    bytes depend on the micro-batch's composition, which the spec fixes). A row that stops (end of
    text, or ``max_new_tokens``) leaves the batch and its cache. New tokens run one per row on top
    of the key/value cache; when a row's context would pass ``block_size``, every row keeps its
    last ``block_size // 2`` tokens and the batch refills the cache from them once (positions are
    absolute within a window, so a full window cannot slide by one token without recomputing it:
    sliding by half a block costs one refill per ``block_size // 2`` tokens instead of a full
    window per token). A prompt longer than the block starts from its last half block.
    """
    block, keep_last = model.cfg.block_size, max(1, model.cfg.block_size // 2)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    toks = [list(p) or [EOS] for p in prompts]  # an empty prompt starts after an end-of-text
    start = [max(0, len(t) - keep_last) if len(t) > block else 0 for t in toks]  # each row's window
    outs: list[list[int]] = [[] for _ in prompts]
    stops = ["length"] * len(prompts)
    active = list(range(len(prompts)))
    caches: list[KVCache] | None = None
    real = torch.zeros(0)
    for _ in range(max_new_tokens):
        if not active:
            break
        if caches is not None and max(len(toks[i]) - start[i] for i in active) > block:
            for i in active:  # a window is full: every row keeps its last half block, one refill
                start[i] = len(toks[i]) - keep_last
            caches = None
        if caches is None:  # the windows, once, filling the cache
            idx, pos, mask, real = _padded([toks[i][start[i]:] for i in active], device)
            width = idx.shape[1]  # at most width + block more positions before the next refill
            caches = [KVCache(width + min(max_new_tokens, block) + 1) for _ in model.blocks]
            real = torch.cat([real, torch.zeros(len(active), caches[0].capacity - width, dtype=torch.bool,
                                                device=real.device)], 1)
            filled = width
            logits, _ = model(idx, caches=caches, pos=pos, mask=mask)
        else:  # one new token per row on top of the cache
            idx = torch.tensor([[toks[i][-1]] for i in active], device=device)
            pos = torch.tensor([[len(toks[i]) - 1 - start[i]] for i in active], device=device)
            real[:, filled] = True
            filled += 1
            logits, _ = model(idx, caches=caches, pos=pos, mask=real[:, None, None, :filled])
        picked = _pick(logits[:, -1].double().cpu(), temperature, top_k, [gens[i] for i in active])
        keep = []
        for row, (i, tok) in enumerate(zip(active, picked)):
            if tok == EOS:
                stops[i] = "eos"
                continue
            toks[i].append(tok)
            outs[i].append(tok)
            keep.append(row)
        if len(keep) < len(active):  # finished rows leave the cache
            sel = torch.tensor(keep, dtype=torch.long, device=real.device)
            for c in caches:
                c.select(sel)
            real = real[sel]
        active = [active[row] for row in keep]
    return [Completion(o, stop) for o, stop in zip(outs, stops)]


@torch.inference_mode()
def score_segments(model: ByteGPT, segments: list, batch_size: int = 16,
                   device: str | torch.device = "cpu") -> tuple[float, int]:
    """(summed NLL in nats, tokens predicted) of ``model`` on each segment's tokens after its first.

    A segment is cut into windows of ``block_size + 1`` tokens overlapping by one, so every token
    but a segment's first is predicted exactly once, from the earlier tokens of its window.
    """
    block = model.cfg.block_size
    windows: dict[int, list[torch.Tensor]] = {}  # by length, so each batch is one shape
    for seg in segments:
        seg = torch.as_tensor(seg.astype("int64") if hasattr(seg, "astype") else seg, dtype=torch.long)
        for lo in range(0, len(seg) - 1, block):
            w = seg[lo: lo + block + 1]
            windows.setdefault(len(w), []).append(w)
    nll, count = 0.0, 0
    for length in sorted(windows):
        ws = windows[length]
        for i in range(0, len(ws), batch_size):
            w = torch.stack(ws[i: i + batch_size]).to(device)
            logits, _ = model(w[:, :-1])
            nll += F.cross_entropy(logits.reshape(-1, VOCAB_SIZE).double(), w[:, 1:].reshape(-1),
                                   reduction="sum").item()
            count += w[:, 1:].numel()
    return nll, count
