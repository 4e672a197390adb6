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
SAMPLER = "aigc-bytegpt-sample/1"  # names the sampling procedure in every output's manifest


class KVCache:
    """Keys and values of one attention layer for the tokens seen so far (sampling only)."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[2]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ByteGPTConfig):
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        causal = True
        if cache is not None:
            if cache.k is not None:  # one new token attends to every cached one: no mask needed
                assert T == 1, "a cached step feeds one token"
                k, v = torch.cat([cache.k, k], 2), torch.cat([cache.v, v], 2)
                causal = False
            cache.k, cache.v = k, v
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

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache)
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
                caches: list[KVCache] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, 257) of ``idx`` (B, T); with ``targets``, also the mean cross-entropy.

        ``caches`` (sampling): positions continue after the cached tokens, and the caches grow.
        """
        T = idx.shape[1]
        start = len(caches[0]) if caches else 0
        if start + T > self.cfg.block_size:
            raise ValueError(f"{start + T} tokens do not fit block_size {self.cfg.block_size}")
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for i, block in enumerate(self.blocks):
            x = block(x, caches[i] if caches else None)
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
