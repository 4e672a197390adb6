"""The data cache and the per-worker stream (pipeline.image.stream): what each rank trains on in each
epoch, that it is a function of (seed, epoch, rank, world) and the cache alone, and that a worker reads
only its own part, a window at a time. No Ray needed: the caches here are written from numpy batches."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from pipeline.image.stream import Stream, epoch_slices, open_cache, write_cache


def batches(n: int, side: int = 4, every: int = 37):
    """Rows whose first pixel byte pair encodes their index, in batches of ``every`` (not a multiple of anything)."""
    for start in range(0, n, every):
        idx = np.arange(start, min(n, start + every))
        images = np.zeros((len(idx), 1, side, side), np.uint8)
        images[:, 0, 0, 0], images[:, 0, 0, 1] = idx % 256, idx // 256
        yield {"key": np.array([f"{i:06d}" for i in idx], dtype=object), "image": images, "label": idx % 10,
               "sha": np.array([hashlib.sha256(str(i).encode()).hexdigest() for i in idx], dtype=object)}


def ids(images) -> list[int]:
    x = np.asarray(images)
    return (x[:, 0, 0, 0].astype(int) + 256 * x[:, 0, 0, 1].astype(int)).tolist()


def cache(tmp_path, n=1000, group_rows=32, key="k"):
    return write_cache(batches(n), str(tmp_path), key, None, "test\n", [str(i) for i in range(10)],
                       group_rows=group_rows)


def test_epoch_slices_cut_a_seeded_order_of_the_units_into_equal_ranges():
    rows = [32] * 31 + [8]  # 1,000 rows
    parts = [epoch_slices(rows, 3, r, 3, seed=1) for r in range(3)]
    sizes = [sum(b - a for _, a, b in p) for p in parts]
    assert sizes == [334, 334, 334]  # ceil(1000 / 3): the last range padded from the start
    covered = [(u, i) for p in parts for u, a, b in p for i in range(a, b)]
    assert set(covered) == {(u, i) for u, r in enumerate(rows) for i in range(r)} and len(covered) == 1002
    assert parts[1] == epoch_slices(rows, 3, 1, 3, seed=1)  # a function of (seed, epoch, rank, world)
    assert parts[1] != epoch_slices(rows, 4, 1, 3, seed=1) and parts[1] != epoch_slices(rows, 3, 1, 3, seed=2)


def test_the_cache_keeps_source_order_and_a_fingerprint_of_every_row(tmp_path):
    c = cache(tmp_path)
    assert c.count == 1000 and c.labelled and c.num_labels == 10 and c.shape == [1, 4, 4]
    assert [len(f["groups"]) for f in c.files] and all(g <= 32 for f in c.files for g in f["groups"])
    images, labels = Stream(c, None, 64).read_all()
    assert ids(images) == list(range(1000)) and labels.tolist() == [i % 10 for i in range(1000)]
    assert open_cache(str(tmp_path), "k", None).fingerprint == c.fingerprint  # found again by its key
    assert cache(tmp_path / "again").fingerprint == c.fingerprint  # the same rows, however they were batched
    assert open_cache(str(tmp_path), "other", None) is None


@pytest.mark.parametrize("world, window", [(1, 2000), (2, 100), (3, 64)])
def test_every_rank_trains_on_its_part_once_per_epoch_in_a_seeded_order(tmp_path, world, window):
    c = cache(tmp_path)
    streams = [Stream(c, None, window) for _ in range(world)]
    batch = 16
    steps = streams[0].steps(world, batch)
    assert steps == (-(-1000 // world)) // batch
    seen: list[int] = []
    for r, s in enumerate(streams):
        got = [ids(x) for x, _ in s.epoch(5, r, world, batch, seed=7)]
        assert len(got) == steps and all(len(b) == batch for b in got)
        seen += [i for b in got for i in b]
        again = [ids(x) for x, _ in Stream(c, None, window).epoch(5, r, world, batch, seed=7)]
        assert again == got  # a resumed run draws the same batches
        other = [ids(x) for x, _ in s.epoch(6, r, world, batch, seed=7)]
        assert other != got
    assert len(set(seen)) >= len(seen) - world  # nothing twice but the padding, across ranks
    assert len(seen) == world * steps * batch
    labels_match = all((y.numpy() == np.array(ids(x)) % 10).all()
                       for x, y in streams[0].epoch(0, 0, world, batch, seed=7))
    assert labels_match


def test_a_small_set_is_shuffled_whole_and_a_large_one_window_by_window(tmp_path):
    c = cache(tmp_path)
    whole = [i for x, _ in Stream(c, None, 5000).epoch(0, 0, 1, 10, seed=0) for i in ids(x)]
    # one window: rows from every unit anywhere in the epoch
    assert len(whole) == 1000 and abs(np.corrcoef(np.arange(1000), whole)[0, 1]) < 0.1
    windowed = [i for x, _ in Stream(c, None, 100).epoch(0, 0, 1, 10, seed=0) for i in ids(x)]
    assert sorted(windowed) == list(range(1000)) and windowed != whole


def test_a_worker_reads_only_the_units_its_range_touches(tmp_path, monkeypatch):
    c = cache(tmp_path, n=2048, group_rows=64)  # 32 units
    s = Stream(c, None, 128)
    read: list[int] = []
    real = Stream.read_unit

    def counting(self, u, a=0, b=None):
        read.append(u)
        return real(self, u, a, b)

    monkeypatch.setattr(Stream, "read_unit", counting)
    held = []
    for x, _ in s.epoch(0, 1, 4, 32, seed=0):
        held.append(len(x))
    assert len(set(read)) <= 2048 // 64 // 4 + 1  # its quarter of the units (one shared at an edge)
    assert sum(held) == 2048 // 4


def test_held_out_rows_never_stream(tmp_path):
    c = cache(tmp_path)
    s = Stream(c, None, 256, skip_every=10)
    assert s.count == 900
    seen = [i for r in range(2) for x, _ in s.epoch(1, r, 2, 25, seed=0) for i in ids(x)]
    assert not [i for i in seen if i % 10 == 9] and len(seen) == 2 * s.steps(2, 25) * 25 == 900


def test_a_cache_file_gone_under_a_run_is_one_line(tmp_path):
    c = cache(tmp_path)
    (tmp_path / "cache" / "data" / "k" / c.files[0]["name"]).unlink()
    with pytest.raises(Exception) as e:
        Stream(c, None, 64).read_all()
    assert "cannot read the training data cache" in str(e.value) and "delete the folder to rebuild it" in str(e.value)
