"""Prompt → condition vector: a learned hashed word and character n-gram embedding (fastText-style).

Dependency-free and deterministic: a prompt is normalised (NFKC, lower case), split into words, and
turned into hashed features — each word, each word bigram, and the character n-grams of each word
with boundary marks (``<seven>`` → ``<se``, ``sev``, …). Features index an ``EmbeddingBag``; the sum
is L2-normalised (so an n-gram never seen in training, whose embedding stays near its tiny
initial value, barely moves the direction) and an MLP maps it to class logits.

The generator's condition for a prompt is the posterior-weighted mix of its class embeddings,
``softmax(logits) @ E`` (see :meth:`pipeline.families.dcgan.model.Generator.encode_prompts`): a confident
prompt lands exactly where that class's label embedding is, an ambiguous one ("eight or nine")
between classes. The encoder lives inside G (one package, one DDP module) and is trained in the same
steps as the GAN, by cross-entropy on captions of each batch's labels, while G's adversarial loss
trains the class embeddings. Letting the adversarial loss also drive the encoder (condition =
MLP output, aux loss beside it) was measured first and failed: the adversarial gradients swamp the
caption signal, D wins, FLD 1,481 and 14 % prompt accuracy on the demo recipe.

Captions for training come from the class names with varied templates and synonyms
(:func:`caption`); a separate set of phrasings (:data:`HELDOUT_TEMPLATES`) is never used in
training and measures how well free-form prompts are understood.

    >>> from pipeline.models.text_encoder_config import TextEncoderConfig
    >>> enc = TextEncoder(TextEncoderConfig(), num_classes=10)
    >>> enc.logits(["a handwritten seven", "number 7, bold stroke"]).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import random
import re
import unicodedata
import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.text_encoder_config import TextEncoderConfig

VERSION = "hashed-ngram/1"
MAX_PROMPT_CHARS = 1000  # longer prompts are cut (the rest carries no more class signal)

# Words for each digit class. A class whose name is not here captions with its own name.
DIGIT_WORDS: dict[str, list[str]] = {
    "0": ["0", "zero", "nought"],
    "1": ["1", "one"],
    "2": ["2", "two"],
    "3": ["3", "three"],
    "4": ["4", "four"],
    "5": ["5", "five"],
    "6": ["6", "six"],
    "7": ["7", "seven"],
    "8": ["8", "eight"],
    "9": ["9", "nine"],
}

# Phrasings used to caption training labels ({w} is a class word).
TRAIN_TEMPLATES: tuple[str, ...] = (
    "{w}", "a {w}", "the {w}", "a handwritten {w}", "the digit {w}", "digit {w}", "number {w}",
    "the number {w}", "a {w}, bold stroke", "number {w}, bold stroke", "a thin {w}", "a neat {w}",
    "a messy handwritten {w}", "an image of a {w}", "a picture of the digit {w}", "draw a {w}",
    "write the number {w}", "a small {w}", "{w} written by hand", "one handwritten {w}",
    "the numeral {w}", "a scanned {w}", "a sketch of the number {w}", "digit: {w}", "a {w} in pencil",
    "a big {w}", "a faint {w}", "a photo of a handwritten {w}", "handwritten digit {w}", "{w}, thin stroke",
)

# Phrasings never seen in training: prompt-conditioned accuracy is measured on these.
HELDOUT_TEMPLATES: tuple[str, ...] = (
    "please generate a {w}", "show me the digit {w}", "i would like a picture of number {w}",
    "{w}, written quickly with a pen", "a blurry photo of the numeral {w}", "handwriting sample: {w}",
    "can you draw {w} for me", "the figure {w} on paper", "a {w} drawn by a child",
    "render the number {w} with a thick stroke", "grayscale image showing {w}", "an old scan of a {w}",
)


# The same for speech (an audio family's configuration says ``phrasing = "speech"``): "say seven".
SPEECH_TRAIN_TEMPLATES: tuple[str, ...] = (
    "{w}", "say {w}", "say the word {w}", "the spoken digit {w}", "a voice saying {w}", "someone says {w}",
    "speak the number {w}", "the number {w}, spoken", "a recording of {w}", "{w}, said aloud", "pronounce {w}",
    "a man saying {w}", "a woman saying {w}", "the word {w} spoken quickly", "the word {w} spoken slowly",
    "a clip of someone saying {w}", "digit {w} as speech", "voice: {w}", "read out the number {w}", "count {w}",
)
SPEECH_HELDOUT_TEMPLATES: tuple[str, ...] = (
    "please say {w}", "i want to hear {w}", "can you pronounce the number {w}", "an audio clip of the digit {w}",
    "speech sample: {w}", "a robot voice reading {w}", "tell me {w} out loud", "the spoken word {w} in english",
    "say the numeral {w} clearly", "a short recording that says {w}",
)
# phrasing → (training templates, held-out templates)
PHRASINGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "image": (TRAIN_TEMPLATES, HELDOUT_TEMPLATES),
    "speech": (SPEECH_TRAIN_TEMPLATES, SPEECH_HELDOUT_TEMPLATES),
}


def phrasing(model: object) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(training, held-out) caption templates of a model configuration: its ``phrasing``, else image captions."""
    return PHRASINGS[str(getattr(model, "phrasing", "image"))]


def class_words(name: str) -> list[str]:
    """The words that name a class in captions: digit synonyms, or the class name itself."""
    if name in DIGIT_WORDS:
        return DIGIT_WORDS[name]
    words = " ".join(re.findall(r"[^\W_]+", name.lower()))
    return [words or name]


def caption(name: str, rng: random.Random, templates: tuple[str, ...] = TRAIN_TEMPLATES) -> str:
    """A random caption of class ``name`` (deterministic for a given ``rng`` state)."""
    return rng.choice(templates).format(w=rng.choice(class_words(name)))


def normalise(text: str) -> list[str]:
    """NFKC, lower case, words of letters and digits (punctuation and underscores split words)."""
    return re.findall(r"[^\W_]+", unicodedata.normalize("NFKC", text[:MAX_PROMPT_CHARS]).lower())


def feature_strings(text: str, min_n: int, max_n: int) -> list[str]:
    words = normalise(text)
    feats = [f"w:{w}" for w in words] + [f"b:{a} {b}" for a, b in zip(words, words[1:])]
    for w in words:
        s = f"<{w}>"
        for n in range(min_n, max_n + 1):
            feats += [f"c:{s[i:i + n]}" for i in range(len(s) - n + 1)]
    return feats or ["<empty>"]


@dataclass
class Features:
    """A batch of prompts as EmbeddingBag input: flat feature ids and per-prompt offsets."""

    ids: torch.Tensor
    offsets: torch.Tensor

    def to(self, device: torch.device | str) -> Features:
        return Features(self.ids.to(device), self.offsets.to(device))


def featurize(texts: list[str], spec: TextEncoderConfig) -> Features:
    """Prompts → hashed feature ids (crc32 mod buckets: stable across processes and machines)."""
    ids: list[int] = []
    offsets: list[int] = []
    for t in texts:
        offsets.append(len(ids))
        ids += [zlib.crc32(f.encode()) % spec.buckets for f in feature_strings(t, spec.min_ngram, spec.max_ngram)]
    return Features(torch.tensor(ids, dtype=torch.long), torch.tensor(offsets, dtype=torch.long))


class TextEncoder(nn.Module):
    """Hashed n-gram bag → L2-normalised → MLP → class logits (a prompt's class posterior)."""

    def __init__(self, spec: TextEncoderConfig, num_classes: int):
        super().__init__()
        self.spec = spec
        with torch.random.fork_rng(devices=[]):  # the layers' own default init must not move the global RNG
            self.bag = nn.EmbeddingBag(spec.buckets, spec.dim, mode="sum")
            self.mlp = nn.Sequential(nn.Linear(spec.dim, spec.hidden), nn.GELU(), nn.Linear(spec.hidden, num_classes))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default init for the MLP (DCGAN's N(0, 0.02) learns 4x slower here); a tiny
        n-gram init, so an n-gram no training caption contained hardly changes the direction.

        Drawn from a generator of its own (seeded from the global seed), so adding a text encoder
        leaves the global RNG, and so G's and D's initial weights, exactly as they were.
        """
        g = torch.Generator().manual_seed(torch.initial_seed() ^ 0x7E47E0C0DE)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_uniform_(m.weight, a=5**0.5, generator=g)  # = nn.Linear's own init
                bound = 1 / m.in_features**0.5
                nn.init.uniform_(m.bias, -bound, bound, generator=g)
        nn.init.normal_(self.bag.weight, 0.0, 0.01, generator=g)

    def forward(self, feats: Features) -> torch.Tensor:
        return self.mlp(F.normalize(self.bag(feats.ids, feats.offsets), dim=1))

    def logits(self, texts: list[str]) -> torch.Tensor:
        return self(featurize(texts, self.spec).to(self.bag.weight.device))
