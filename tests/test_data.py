"""Training data through Ray Data: digits, image folders and Parquet from local paths and S3; bad input."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipeline.errors import PipelineError
from pipeline.image.data import decode_image, digits_arrays, to_float, to_uint8
from pipeline.image.trainset import load_data, read_all
from pipeline.specs import DataSpec, ModelSpec
from pipeline.storage import Store


def png(color: int | tuple, size=(20, 12), mode="L", fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format=fmt)
    return buf.getvalue()


def image_folder(root: Path, classes: dict[str, int]) -> Path:
    """``classes`` name → count; a mix of sizes, modes and formats."""
    for ci, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            if i % 3 == 0:
                data = png((40 * ci + i) % 256, size=(20 + i, 12))
            elif i % 3 == 1:
                data = png((10 * i, 20 * ci, 30), size=(64, 64), mode="RGB", fmt="JPEG")
            else:
                data = png((5 * i, 20 * ci, 30, 128), size=(9, 40), mode="RGBA")
            (root / name / f"{i:03d}.{'jpg' if i % 3 == 1 else 'png'}").write_bytes(data)
    return root


def test_digits_match_the_plain_arrays_and_fingerprint_is_stable(ray_session):
    spec, model = DataSpec(limit=100), ModelSpec(image_size=32)
    data = load_data(spec, model)
    assert data.count == 100 and data.labelled and data.classes == [str(i) for i in range(10)]
    images, labels = read_all(data)
    ref_images, ref_labels = digits_arrays(32, 1, limit=100)
    assert images.dtype == torch.uint8 and images.shape == (100, 1, 32, 32)
    assert torch.equal(images, torch.from_numpy(ref_images)) and torch.equal(labels, torch.from_numpy(ref_labels))
    assert images.max() == 255 and images.min() == 0  # the full range is used
    assert load_data(spec, model).fingerprint == data.fingerprint
    assert load_data(DataSpec(limit=99), model).fingerprint != data.fingerprint
    assert load_data(spec, ModelSpec(image_size=28)).fingerprint != data.fingerprint


def test_pixel_conversions_round_trip():
    x = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    f = to_float(x)
    assert f.min() == -1 and f.max() == 1
    assert torch.equal(to_uint8(f), x)


def test_image_folder_with_class_subfolders(ray_session, tmp_path):
    root = image_folder(tmp_path / "imgs", {"cat": 4, "ant": 3, "bee": 5})
    (root / "ant" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.png").write_bytes(b"junk that would fail to decode")
    data = load_data(DataSpec(source="images", uri=str(root)), ModelSpec(image_size=32, channels=3))
    assert data.count == 12 and data.labelled and data.classes == ["ant", "bee", "cat"]
    images, labels = read_all(data)
    assert images.shape == (12, 3, 32, 32)
    assert labels.tolist() == [0] * 3 + [1] * 5 + [2] * 4  # sorted by path, label = sorted class index
    gray = load_data(DataSpec(source="images", uri=str(root), limit=5), ModelSpec(image_size=28, channels=1))
    assert gray.count == 5 and read_all(gray)[0].shape == (5, 1, 28, 28)
    # Same content → same fingerprint; one changed file → another.
    assert load_data(DataSpec(source="images", uri=str(root)), ModelSpec(channels=3)).fingerprint == data.fingerprint
    (root / "ant" / "000.png").write_bytes(png(200))
    assert load_data(DataSpec(source="images", uri=str(root)), ModelSpec(channels=3)).fingerprint != data.fingerprint


def test_flat_folder_has_no_labels(ray_session, tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(png(i * 50))
    data = load_data(DataSpec(source="images", uri=str(tmp_path)), ModelSpec())
    assert data.count == 3 and not data.labelled and data.classes == []
    assert read_all(data)[1].tolist() == [-1, -1, -1]


@pytest.mark.parametrize("case", ["empty", "no_images", "missing", "file"])
def test_no_images_names_the_uri(ray_session, tmp_path, case):
    folder = tmp_path / "data"
    if case != "missing":
        folder.mkdir()
    if case == "no_images":
        (folder / "readme.md").write_text("hi")
    if case == "file":
        folder = tmp_path / "one.png"
        folder.write_bytes(png(1))
    with pytest.raises(PipelineError, match="no PNG/JPEG images|not found|is a file") as err:
        load_data(DataSpec(source="images", uri=str(folder)), ModelSpec())
    assert str(folder) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("bad", [b"\x89PNG\r\n\x1a\n garbage", "truncated", b""])
def test_corrupt_image_names_the_file(ray_session, tmp_path, bad):
    image_folder(tmp_path, {"a": 3})
    if bad == "truncated":
        bad = png(7, size=(64, 64), mode="RGB")[:60]
    (tmp_path / "a" / "broken.png").write_bytes(bad)
    with pytest.raises(PipelineError) as err:
        load_data(DataSpec(source="images", uri=str(tmp_path)), ModelSpec())
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path}/a/broken.png: ") and "\n" not in msg, msg
    assert "Traceback" not in msg and "ray::" not in msg


def test_decode_image_crops_and_converts():
    wide = Image.new("RGB", (60, 20), (255, 0, 0))
    wide.paste((0, 0, 255), (0, 0, 20, 20))  # blue on the left third: cropped away by the centre crop
    buf = io.BytesIO()
    wide.save(buf, format="PNG")
    out = decode_image(buf.getvalue(), 16, 3, "x.png")
    assert out.shape == (3, 16, 16) and out.dtype == np.uint8
    assert out[0].min() > 200 and out[2].max() < 50  # all red
    assert decode_image(buf.getvalue(), 16, 1, "x.png").shape == (1, 16, 16)


def _parquet(path: Path, cells: list, labels: list | None, name="image") -> Path:
    cols = {name: cells}
    if labels is not None:
        cols["label"] = labels
    pq.write_table(pa.table(cols), path)
    return path


def test_parquet_bytes_and_struct_columns(ray_session, tmp_path):
    (tmp_path / "pq").mkdir()
    _parquet(tmp_path / "pq" / "a.parquet", [png(i * 20) for i in range(6)], list(range(6)))
    _parquet(tmp_path / "pq" / "b.parquet", [png(200 - i) for i in range(4)], [1, 2, 3, 4])
    data = load_data(DataSpec(source="parquet", uri=str(tmp_path / "pq")), ModelSpec(conditional=True))
    assert data.count == 10 and data.labelled
    images, labels = read_all(data)
    assert images.shape == (10, 1, 32, 32) and sorted(labels.tolist()) == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5]
    assert load_data(DataSpec(source="parquet", uri=str(tmp_path / "pq")), ModelSpec(conditional=True)).fingerprint \
        == data.fingerprint
    # Hugging Face style {bytes, path} structs decode to the same pixels as plain bytes.
    hf = _parquet(tmp_path / "hf.parquet", [{"bytes": png(i * 20), "path": f"{i}.png"} for i in range(6)],
                  list(range(6)))
    hf_images, hf_labels = read_all(load_data(DataSpec(source="parquet", uri=str(hf)), ModelSpec()))
    plain_images, plain_labels = read_all(load_data(DataSpec(source="parquet", uri=str(tmp_path / "pq" / "a.parquet")),
                                                    ModelSpec()))
    assert torch.equal(hf_images, plain_images) and torch.equal(hf_labels, plain_labels)
    limited = load_data(DataSpec(source="parquet", uri=str(tmp_path / "pq" / "a.parquet"), limit=3), ModelSpec())
    assert limited.count == 3
    unlabelled = _parquet(tmp_path / "u.parquet", [png(1), png(2)], None)
    assert not load_data(DataSpec(source="parquet", uri=str(unlabelled)), ModelSpec()).labelled


def test_parquet_bad_input(ray_session, tmp_path):
    p = _parquet(tmp_path / "x.parquet", [png(1)], [0], name="pixels")
    with pytest.raises(PipelineError, match="no column 'image'.*columns are pixels, label"):
        load_data(DataSpec(source="parquet", uri=str(p)), ModelSpec())
    p = _parquet(tmp_path / "y.parquet", [png(1), b"not an image"], [0, 1])
    with pytest.raises(PipelineError, match=r"y\.parquet \(column 'image'\): not a decodable"):
        load_data(DataSpec(source="parquet", uri=str(p)), ModelSpec())
    p = _parquet(tmp_path / "z.parquet", [png(1)], [12])
    with pytest.raises(PipelineError, match="label 12 is outside 0..9"):
        load_data(DataSpec(source="parquet", uri=str(p)), ModelSpec(conditional=True))
    p = _parquet(tmp_path / "e.parquet", [], [])
    with pytest.raises(PipelineError, match="dataset is empty"):
        load_data(DataSpec(source="parquet", uri=str(p)), ModelSpec())
    (tmp_path / "notpq.parquet").write_bytes(b"PAR1 nope")
    with pytest.raises(PipelineError, match="cannot read Parquet"):
        load_data(DataSpec(source="parquet", uri=str(tmp_path / "notpq.parquet")), ModelSpec())
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    _parquet(mixed / "a.parquet", [png(1)], [0])
    _parquet(mixed / "b.parquet", [{"bytes": png(2), "path": "2.png"}], [1])
    with pytest.raises(PipelineError, match=rf"^{mixed}: cannot read the training data \(.*struct") as err:
        load_data(DataSpec(source="parquet", uri=str(mixed)), ModelSpec())
    assert "\n" not in str(err.value)


def test_memory_uri_is_refused(ray_session):
    with pytest.raises(PipelineError, match="memory:// lives in one process"):
        load_data(DataSpec(source="images", uri="memory://x"), ModelSpec())


def test_image_folder_on_s3(ray_session, s3_storage, tmp_path):
    image_folder(tmp_path, {"zero": 3, "one": 2})
    store = Store(f"{s3_storage.root}/imgs", s3_storage)
    store.write_many({str(p.relative_to(tmp_path)): p.read_bytes() for p in tmp_path.rglob("*.*")})
    local = load_data(DataSpec(source="images", uri=str(tmp_path)), ModelSpec())
    remote = load_data(DataSpec(source="images", uri=store.uri), ModelSpec(), s3_storage)
    assert remote.count == 5 and remote.classes == ["one", "zero"]
    assert remote.fingerprint == local.fingerprint  # same content, whatever the URI
    (tmp_path / "corrupt").mkdir()
    store.write("one/bad.png", b"\x89PNG broken")
    with pytest.raises(PipelineError, match=rf"^{store.uri}/one/bad\.png: not a decodable"):
        load_data(DataSpec(source="images", uri=store.uri), ModelSpec(), s3_storage)
