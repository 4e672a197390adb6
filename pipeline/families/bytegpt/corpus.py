"""Text corpora for the byte-level GPT: read from any URI, checked, tokenized, split, counted.

:func:`load_corpus` turns a ``train.data`` section with ``source: text`` into a :class:`Corpus`:

* **Formats**, by extension: ``.txt`` (UTF-8 text; the whole file is one document), ``.jsonl``
  (one JSON object per line; its ``text`` field, or ``train.data.text_column``, is a document) and
  ``.parquet`` (a string column of that name; each row a document). A folder URI reads every such
  file under it, sorted by path. Local paths, ``s3://``, ``gs://`` and ``memory://`` all go
  through :mod:`pipeline.storage`.
* **Tokens**: each document's UTF-8 bytes followed by the end-of-text token (256), in file order;
  ``train.data.limit`` keeps the first N tokens.
* **Held-out split**: the token stream is cut into 2 KiB segments and segment ``i`` is held out
  when ``floor((i + 1) * heldout) > floor(i * heldout)``: with ``heldout: 0.1`` every tenth
  segment, spread evenly over the corpus. The rest, concatenated, is the training stream. Training
  never sees a held-out segment, and both perplexities are measured on the same held-out bytes.
* **Errors** name the file and line (or row): not UTF-8, a NUL byte (a binary file), bad JSON, a
  missing or non-string text field, an unreadable Parquet file, an empty corpus.

The unigram baseline (:func:`unigram_nll`) is the byte-frequency model of the training stream
with add-one smoothing over all 257 tokens, scored on the held-out bytes the GPT is scored on.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

import numpy as np

from pipeline.errors import PipelineError
from pipeline.families.bytegpt.model import EOS, VOCAB_SIZE
from pipeline.specs import DataSpec, StorageSpec
from pipeline.storage import StorageError, Store

SEGMENT = 2048  # tokens per split segment
DEFAULT_HELDOUT = 0.1
DEFAULT_COLUMN = "text"
EXTENSIONS = (".txt", ".jsonl", ".parquet")
FORMAT = "aigc-text/1"  # bump when tokenization or the split changes: it is part of the data fingerprint


@dataclass
class Corpus:
    """A tokenized corpus and its split. Tokens are uint16 (bytes 0-255, EOS 256)."""

    uri: str
    files: list[str]
    documents: int
    train: np.ndarray
    heldout: list[np.ndarray]  # the held-out segments, each scored on its own
    heldout_share: float
    column: str
    fingerprint: str

    @property
    def tokens(self) -> int:
        return len(self.train) + self.heldout_tokens

    @property
    def heldout_tokens(self) -> int:
        return sum(len(s) for s in self.heldout)

    def summary(self) -> dict:
        """What model.json records about the corpus."""
        return {"source": "text", "uri": self.uri, "files": self.files, "documents": self.documents,
                "count": self.tokens, "unit": "bytes", "tokens": self.tokens, "train_tokens": len(self.train),
                "heldout_tokens": self.heldout_tokens, "heldout": self.heldout_share, "segment": SEGMENT,
                "text_column": self.column, "fingerprint": self.fingerprint, "format": FORMAT}


# --------------------------------------------------------------------------------------------- reading
def _check_text(data: bytes, where: str, first_line: int = 1) -> str:
    """UTF-8 text without NUL bytes, or a PipelineError naming the line."""
    nul = data.find(b"\x00")
    if nul >= 0:
        line = first_line + data.count(b"\n", 0, nul)
        raise PipelineError(f"{where}:{line}: contains a NUL byte (a binary file, not UTF-8 text)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + data.count(b"\n", 0, exc.start)
        raise PipelineError(f"{where}:{line}: not valid UTF-8 (byte {exc.start:,} of the file)") from None


def _jsonl_docs(data: bytes, where: str, column: str) -> list[str]:
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    docs = []
    for i, raw in enumerate(lines, 1):
        raw = raw.rstrip(b"\r")
        text = _check_text(raw, where, i)
        if not text.strip():
            raise PipelineError(f"{where}:{i}: empty line (each line must be a JSON object with a '{column}' string)")
        try:
            record = json.loads(text)
        except ValueError as exc:
            raise PipelineError(f"{where}:{i}: invalid JSON ({getattr(exc, 'msg', exc)})") from None
        if not isinstance(record, dict) or column not in record:
            raise PipelineError(f"{where}:{i}: no '{column}' field (set train.data.text_column to the field that holds "
                                "the text)")
        value = record[column]
        if not isinstance(value, str):
            raise PipelineError(f"{where}:{i}: '{column}' must be a string, not {type(value).__name__}")
        if "\x00" in value:
            raise PipelineError(f"{where}:{i}: '{column}' contains a NUL character")
        docs.append(value)
    return docs


def _parquet_docs(data: bytes, where: str, column: str) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        # use_threads=False: in-memory reads with threads were seen aborting pyarrow 26 at exit
        # (docs/architecture.md, "Ray on a small machine")
        table = pq.read_table(pa.BufferReader(data), use_threads=False)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types
        raise PipelineError(f"{where}: not a readable Parquet file ({type(exc).__name__})") from None
    if column not in table.column_names:
        raise PipelineError(f"{where}: no '{column}' column (columns: {', '.join(table.column_names) or 'none'}); "
                            "set train.data.text_column")
    col = table.column(column)
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        raise PipelineError(f"{where}: column '{column}' holds {col.type}, not text")
    docs = col.to_pylist()
    for i, value in enumerate(docs, 1):
        if value is None:
            raise PipelineError(f"{where}: row {i}: '{column}' is null")
        if "\x00" in value:
            raise PipelineError(f"{where}: row {i}: '{column}' contains a NUL character")
    return docs


def _documents(name: str, data: bytes, where: str, column: str) -> list[str]:
    if name.endswith(".jsonl"):
        return _jsonl_docs(data, where, column)
    if name.endswith(".parquet"):
        return _parquet_docs(data, where, column)
    return [_check_text(data, where)]


def _files(uri: str, storage: StorageSpec | None) -> list[tuple[Store, str, str]]:
    """(store, relative name, URI for messages) of every corpus file at ``uri`` (a file or a folder)."""
    try:
        store = Store(uri, storage)
        is_dir = store.fs.isdir(store.root)
        if is_dir:
            found = [(store, rel, store.url(rel)) for rel in store.list() if rel.endswith(EXTENSIONS)]
            if not found:
                raise PipelineError(f"{store.uri}: no .txt, .jsonl or .parquet files in this folder")
            return found
    except StorageError as exc:
        raise PipelineError(f"text corpus {exc}") from None
    if not uri.rstrip("/").endswith(EXTENSIONS):
        raise PipelineError(f"{uri}: a text corpus must be a .txt, .jsonl or .parquet file, or a folder of them")
    parent, _, name = uri.rstrip("/").rpartition("/")
    try:
        return [(Store(parent or ".", storage), name, uri)]
    except StorageError as exc:
        raise PipelineError(f"text corpus {exc}") from None


def read_documents(uri: str, storage: StorageSpec | None = None, column: str = DEFAULT_COLUMN,
                   limit: int | None = None) -> tuple[list[str], list[str]]:
    """(file URIs, documents) of a corpus; stops reading files once ``limit`` bytes are in hand."""
    files, docs, size = [], [], 0
    for store, rel, where in _files(uri, storage):
        try:
            data = store.read(rel)
        except StorageError as exc:
            raise PipelineError(f"text corpus {exc}") from None
        more = _documents(rel, data, where, column)
        files.append(where)
        docs += more
        size += sum(len(d.encode("utf-8")) + 1 for d in more)
        if limit is not None and size >= limit:
            break
    return files, docs


# --------------------------------------------------------------------------------------------- tokens and split
def tokenize(docs: list[str]) -> np.ndarray:
    """Each document's UTF-8 bytes, then EOS, as one uint16 array."""
    parts = []
    for d in docs:
        parts.append(np.frombuffer(d.encode("utf-8"), dtype=np.uint8).astype(np.uint16))
        parts.append(np.array([EOS], dtype=np.uint16))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)


def heldout_segment(i: int, share: float) -> bool:
    return math.floor((i + 1) * share) > math.floor(i * share)


def split(tokens: np.ndarray, share: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """(training stream, held-out segments): every segment of SEGMENT tokens goes to one side."""
    train, held = [], []
    for i, lo in enumerate(range(0, len(tokens), SEGMENT)):
        seg = tokens[lo: lo + SEGMENT]
        (held if heldout_segment(i, share) else train).append(seg)
    return (np.concatenate(train) if train else np.zeros(0, np.uint16)), held


def load_corpus(spec: DataSpec, storage: StorageSpec | None = None) -> Corpus:
    """Read, check, tokenize and split the corpus of a ``source: text`` data section."""
    assert spec.source == "text" and spec.uri
    column = spec.text_column or DEFAULT_COLUMN
    share = DEFAULT_HELDOUT if spec.heldout is None else spec.heldout
    files, docs = read_documents(spec.uri, storage, column, spec.limit)
    tokens = tokenize(docs)
    if spec.limit is not None:
        tokens = tokens[: spec.limit]
    if not any(docs):
        raise PipelineError(f"{spec.uri}: the text corpus is empty")
    train, held = split(tokens, share)
    h = hashlib.sha256(json.dumps({"format": FORMAT, "segment": SEGMENT, "heldout": share}).encode())
    h.update(tokens.astype("<u2").tobytes())
    return Corpus(uri=spec.uri, files=files, documents=len(docs), train=train, heldout=held, heldout_share=share,
                  column=column, fingerprint=h.hexdigest())


# --------------------------------------------------------------------------------------------- baseline
@dataclass
class Score:
    """Summed negative log-likelihood (nats) over ``count`` predicted tokens."""

    nll: float = 0.0
    count: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return self.nll / self.count if self.count else float("nan")

    @property
    def perplexity(self) -> float:
        return (math.exp(self.mean) if self.mean < 700 else float("inf")) if self.count else float("nan")

    @property
    def bits_per_byte(self) -> float:
        return self.mean / math.log(2) if self.count else float("nan")


def unigram_nll(train: np.ndarray, heldout: list[np.ndarray]) -> Score:
    """Byte-frequency model of ``train`` (add-one smoothing over 257 tokens) on each held-out
    segment's tokens after its first: exactly the tokens the GPT predicts."""
    counts = np.bincount(train.astype(np.int64), minlength=VOCAB_SIZE).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    score = Score()
    for seg in heldout:
        target = seg[1:].astype(np.int64)
        score.nll += float(-logp[target].sum())
        score.count += len(target)
    return score
