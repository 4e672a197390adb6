"""Distributed GAN training on a real local Ray (CPU): checkpoints, true resume, bad input, failures.

The default set calls ``TorchTrainer.fit()`` three times (about 25 s of fixed cost each): one
uninterrupted 4-epoch run that most tests inspect, and a 2 + 2 epoch resume of the same spec.
``-m slow`` adds a worker SIGKILL, a killed driver, S3 storage, a two-node cluster and quality.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.errors import PipelineError
from pipeline.families.dcgan.loop import save_checkpoint
from pipeline.package import load_package
from pipeline.specs import deep_merge, validate_job
from pipeline.storage import Store
from pipeline.train.checkpoint import MODELS_FILE, OPTIM_FILE, STATE_FILE, load_checkpoint, rng_state, set_rng_state
from pipeline.train.driver import existing_package, package_version, train
from pipeline.train.worker import epoch_indices, steps_per_epoch

EPOCHS = 4
LIMIT, BATCH, WORKERS = 256, 32, 2
STEPS = steps_per_epoch(LIMIT, WORKERS, BATCH)  # 4 steps per epoch and worker


def spec(root, name="t", epochs=EPOCHS, **over) -> dict:
    base = {
        "name": name,
        "storage": {"root": str(root)},
        "train": {
            # a shuffle window smaller than a worker's 128 rows: the resume below is proven on streamed windows
            "data": {"source": "digits", "limit": LIMIT, "shuffle_window": 48},
            # the demo's quality recipe too, so resume and retry are proven with EMA, DiffAugment and
            # lazy R1 (every 2nd step here, so both kinds of step occur in every epoch)
            "model": {"image_size": 32, "z_dim": 16, "g_width": 8, "d_width": 8, "conditional": True,
                      "g_upsample": "nearest", "d_minibatch_std": True},
            "epochs": epochs, "batch_size": BATCH, "seed": 3, "ema": 0.99, "augment": ["translation", "cutout"],
            "r1": 1.0, "r1_every": 2,
            "scaling": {"num_workers": WORKERS},
            "checkpoint": {"keep": 2, "max_failures": 2},
        },
    }
    return deep_merge(base, over)


def job(root, name="t", epochs=EPOCHS, **over):
    return validate_job(spec(root, name, epochs, **over), "test")


def write_job(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data))
    return path


def train_worker_pids() -> list[int]:
    import ray
    from ray.util.state import list_actors

    gcs = ray.get_runtime_context().gcs_address  # other Ray clusters may run on this machine
    return [a.pid for a in list_actors(address=gcs, filters=[("state", "=", "ALIVE")], limit=1000)
            if a.class_name == "RayTrainWorker" and a.pid]


def listening(pids: list[int]) -> list[str]:
    """Local addresses on which these processes listen for TCP."""
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True).stdout
    found = []
    for line in out.splitlines():
        if any(f"pid={pid}," in line for pid in pids):
            found.append(line.split()[3])
    return found


@pytest.fixture(scope="module")
def full_run(ray_session, tmp_path_factory):
    """One uninterrupted 2-worker, 4-epoch run; also samples the workers' listening sockets."""
    root = tmp_path_factory.mktemp("full")
    events, sockets, stop = [], [], threading.Event()

    def watch():
        while not stop.is_set() and shutil.which("ss"):
            pids = train_worker_pids()
            if len(pids) >= WORKERS:
                sockets.extend(listening(pids))
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = train(job(root, "full"), on_progress=events.append)
    finally:
        stop.set()
        watcher.join(10)
    return {"root": root, "result": result, "events": events, "sockets": sockets}


# --------------------------------------------------------------------------------------------- fast units
def test_epoch_slices_partition_a_seeded_permutation():
    n, world = 101, 3
    slices = [epoch_indices(n, 5, r, world, seed=1) for r in range(world)]
    assert {len(s) for s in slices} == {34}  # padded: every rank runs the same number of steps
    assert set(torch.cat(slices).tolist()) == set(range(n))
    assert torch.equal(epoch_indices(n, 5, 1, world, 1), slices[1])  # a function of (seed, epoch, rank)
    assert not torch.equal(epoch_indices(n, 6, 1, world, 1), slices[1])
    assert not torch.equal(epoch_indices(n, 5, 1, world, 2), slices[1])


def test_rng_state_round_trips():
    import random

    import numpy as np

    tensors, meta = rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(tensors, meta)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def _tiny_checkpoint(directory: Path) -> None:
    from pipeline.families.dcgan.loop import build_models, make_optimizers

    t = job(directory, epochs=1).train
    G, D = build_models(t)
    opt_g, opt_d = make_optimizers(G, D, t)
    save_checkpoint(str(directory), G, D, opt_g, opt_d, {"epoch": 0, "global_step": 0, "history": []})


def test_truncated_or_forged_checkpoint_is_refused_without_unpickling(tmp_path, monkeypatch):
    def no_pickle(*a, **k):
        raise AssertionError("a checkpoint was unpickled")

    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(torch, "load", no_pickle)
    _tiny_checkpoint(tmp_path)
    assert load_checkpoint(str(tmp_path)).epoch == 0

    data = (tmp_path / MODELS_FILE).read_bytes()
    (tmp_path / MODELS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(PipelineError, match=rf"{MODELS_FILE}: .*truncated or corrupt checkpoint"):
        load_checkpoint(str(tmp_path))

    # A pickle that would run code, in place of the weights (with a matching checksum): refused as not safetensors.
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    forged = pickle.dumps(Evil())
    state = json.loads((tmp_path / STATE_FILE).read_text())
    import hashlib

    state["files"][MODELS_FILE] = {"size": len(forged), "sha256": hashlib.sha256(forged).hexdigest()}
    (tmp_path / STATE_FILE).write_text(json.dumps(state))
    (tmp_path / MODELS_FILE).write_bytes(forged)
    with pytest.raises(PipelineError, match="not a readable safetensors file"):
        load_checkpoint(str(tmp_path))
    assert not marker.exists()

    (tmp_path / STATE_FILE).write_text('{"format": "aigc-checkpoint/1", "epo')
    with pytest.raises(PipelineError, match=rf"{STATE_FILE}: not an aigc-checkpoint/1 state file"):
        load_checkpoint(str(tmp_path))
    (tmp_path / STATE_FILE).unlink()
    with pytest.raises(PipelineError, match=rf"{STATE_FILE}: missing from the checkpoint"):
        load_checkpoint(str(tmp_path))


def test_a_worker_side_user_error_becomes_one_line():
    from ray.train import WorkerGroupError
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback

    from pipeline.train.driver import _training_error

    inner = UserExceptionWithTraceback(PipelineError("s3://b/ckpt/epoch_0003/models.safetensors: truncated"),
                                       "Traceback (most recent call last):\n  ...\nPipelineError: s3://b/...")
    err = _training_error(WorkerGroupError("rank 0 failed", {0: inner}))
    assert str(err) == "s3://b/ckpt/epoch_0003/models.safetensors: truncated"
    other = _training_error(WorkerGroupError("x", {1: UserExceptionWithTraceback(
        RuntimeError("boom"), "Traceback:\n  File x\nRuntimeError: Connection reset by peer")}))
    assert str(other) == "training failed: RuntimeError: Connection reset by peer"


# --------------------------------------------------------------------------------------------- a full run
def test_two_workers_train_digits_for_four_epochs(full_run):
    res, root = full_run["result"], full_run["root"]
    assert not res.skipped and res.resumed_from is None
    assert res.epochs_run == [0, 1, 2, 3] and res.epochs == EPOCHS
    assert res.global_step == EPOCHS * STEPS
    assert [h["epoch"] for h in res.history] == [0, 1, 2, 3]
    # what the workers used, summed over both by an all-reduce (each process's own CPU time)
    assert res.usage["workers"] == WORKERS and res.usage["cpu_s"] > 1.0 and res.usage["gpu_s"] == 0.0
    # ... and the largest worker's peak resident memory so far, after every epoch: it can only grow
    peaks = [h["peak_rss_mb"] for h in res.history]
    assert peaks == sorted(peaks) and peaks[0] > 100 and peaks[-1] == res.usage["peak_rss_mb"]
    for h in res.history:
        assert all(torch.isfinite(torch.tensor(h[k])) for k in ("loss_D", "loss_G", "D(x)", "D(G(z))", "images/s"))
        assert 0 < h["D(x)"] < 1 and 0 < h["D(G(z))"] < 1 and h["images/s"] > 0
    # Live progress: a start event from 2 workers, then one event per epoch, in order.
    events = full_run["events"]
    assert events[0].kind == "start" and events[0].world_size == 2 and events[0].epoch == 0
    assert [e.epoch for e in events if e.kind == "epoch"] == [0, 1, 2, 3]
    assert "epoch 4/4 done" in [e for e in events if e.kind == "epoch"][-1].line()
    # The package loads on its own and records what it was trained from.
    pkg = load_package(res.package_uri)
    assert res.package_uri == f"{root}/models/full/{package_version(job(root, 'full'))}"
    assert pkg.model_sha256 == res.model_sha256
    meta = pkg.meta
    assert meta["train_fingerprint"] == job(root, "full").fingerprint("train")
    assert meta["data"]["count"] == LIMIT and len(meta["data"]["fingerprint"]) == 64
    assert [m["epoch"] for m in meta["metrics"]] == [0, 1, 2, 3]
    assert {"ray", "torch", "python"} <= set(meta["versions"])
    g = pkg.build_model()
    with torch.no_grad():
        out = g(torch.randn(4, 16), torch.arange(4))
    assert out.shape == (4, 1, 32, 32) and out.abs().max() <= 1
    # Ray keeps the last `keep` checkpoints; every epoch's sample grid stays.
    run = root / "checkpoints" / "full"
    assert sorted(p.name for p in run.glob("epoch_*")) == ["epoch_0002", "epoch_0003"]
    assert sorted(p.name for p in (run / "samples").iterdir()) == [f"epoch_{i:04d}.png" for i in range(4)]
    assert existing_package(job(root, "full")) == res.package_uri


def test_checkpoint_contents(full_run):
    root = full_run["root"]
    ckpt = root / "checkpoints" / "full" / "epoch_0003"
    assert sorted(p.name for p in ckpt.iterdir()) == sorted(
        [MODELS_FILE, OPTIM_FILE, STATE_FILE, "samples.png", "rng-rank0.safetensors", "rng-rank1.safetensors"])
    ck = load_checkpoint(str(ckpt))
    st = ck.state
    assert st["epoch"] == 3 and st["global_step"] == EPOCHS * STEPS and st["world_size"] == 2
    assert st["spec"] == job(root, "full").masked()
    assert [h["epoch"] for h in st["history"]] == [0, 1, 2, 3]
    assert {k.split(".", 1)[0] for k in ck.models} == {"G", "D", "G_ema"}  # G_ema: train.ema's average of G
    assert ck.models["G_ema.embed.weight"].shape == ck.models["G.embed.weight"].shape
    assert not torch.equal(ck.models["G_ema.embed.weight"], ck.models["G.embed.weight"])
    assert any(k.endswith("running_mean") for k in ck.models)  # BN buffers too
    for name in ("G", "D"):
        opt = ck.optimizer_state(name)
        assert opt["state"] and all(s["step"].item() == EPOCHS * STEPS for s in opt["state"].values())
        assert {"exp_avg", "exp_avg_sq"} <= set(next(iter(opt["state"].values())))
        assert opt["param_groups"][0]["lr"] == 2e-4
    from safetensors.torch import load_file

    r0, r1 = load_file(str(ckpt / "rng-rank0.safetensors")), load_file(str(ckpt / "rng-rank1.safetensors"))
    assert set(r0) >= {"torch", "numpy", "python"} and not torch.equal(r0["torch"], r1["torch"])
    grid = Image.open(io.BytesIO((ckpt / "samples.png").read_bytes()))
    assert grid.size == (8 * 34 + 2, 8 * 34 + 2) and grid.mode == "L"
    assert ((root / "checkpoints" / "full" / "samples" / "epoch_0003.png").read_bytes()
            == (ckpt / "samples.png").read_bytes())


def test_rendezvous_and_gloo_listen_on_loopback_only(full_run):
    if shutil.which("ss") is None:
        pytest.skip("needs ss (iproute2) to list listening sockets")
    sockets = full_run["sockets"]
    assert sockets, "no listening socket of a training worker was seen"
    for addr in sockets:
        host = addr.rsplit(":", 1)[0].strip("[]")
        assert host in ("127.0.0.1", "::ffff:127.0.0.1", "::1"), f"a training worker listens on {addr}"


def test_same_spec_again_is_skipped(full_run):
    t0 = time.monotonic()
    res = train(job(full_run["root"], "full"))
    assert res.skipped and res.package_uri == full_run["result"].package_uri and res.epochs == EPOCHS
    assert time.monotonic() - t0 < 10  # no fit


def test_resume_continues_epochs_and_optimizer_and_matches_an_uninterrupted_run(full_run, tmp_path):
    """2 epochs through the CLI, then the same job to 4 epochs: epochs 2, 3 run, state continues.

    Tolerance: the weights and optimizer moments must equal the uninterrupted run's to 1e-6
    (every random draw is a function of (seed, epoch, rank) and the checkpoint round-trips fp32
    exactly, so on one machine they are bit-identical; the tolerance allows other BLAS builds).
    """
    path = write_job(tmp_path / "job.yaml", spec(tmp_path, "resumed", epochs=4))
    run = tmp_path / "checkpoints" / "resumed"
    out = CliRunner().invoke(app, ["train", str(path), "--set", "train.epochs=2"])
    assert out.exit_code == 0, out.output
    assert "starting: epoch 1/2 on 2 worker(s), 1 node(s)" in out.output
    assert re.search(r"epoch 2/2 done  loss_D \d\.\d{3}  loss_G \d\.\d{3}  D\(x\) .* images/s", out.output)
    assert "trained epochs 1-2 of 2" in out.output and f"model package: {tmp_path}/models/resumed/" in out.output
    half = load_checkpoint(str(run / "epoch_0001"))
    assert half.epoch == 1 and half.state["global_step"] == 2 * STEPS
    assert all(s["step"].item() == 2 * STEPS for s in half.optimizer_state("G")["state"].values())

    events = []
    res = train(job(tmp_path, "resumed", epochs=4), on_progress=events.append)
    assert res.resumed_from == 1 and res.epochs_run == [2, 3]
    assert events[0].kind == "start" and events[0].epoch == 2 and events[0].resumed_from == 1
    assert "resuming after epoch 2: epoch 3/4" in events[0].line()
    assert [e.epoch for e in events if e.kind == "epoch"] == [2, 3]
    assert [h["epoch"] for h in res.history] == [0, 1, 2, 3] and res.global_step == 4 * STEPS

    resumed = load_checkpoint(str(run / "epoch_0003"))
    straight = load_checkpoint(str(full_run["root"] / "checkpoints" / "full" / "epoch_0003"))
    assert resumed.state["global_step"] == straight.state["global_step"] == 4 * STEPS
    for a, b in ((resumed.models, straight.models), (resumed.optim, straight.optim)):
        assert a.keys() == b.keys()
        diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
        assert diff <= 1e-6, f"resumed run differs from the uninterrupted one by {diff}"
    assert [h["loss_D"] for h in res.history] == pytest.approx([h["loss_D"] for h in straight.state["history"]],
                                                               abs=1e-6)
    again = CliRunner().invoke(app, ["train", str(path)])
    assert again.exit_code == 0 and again.output.strip() == f"already trained from this spec: {res.package_uri}"


def _copy_run(full_run, root: Path, name: str) -> Path:
    dst = root / "checkpoints" / name
    shutil.copytree(full_run["root"] / "checkpoints" / "full", dst)
    return dst


def test_truncated_checkpoint_stops_the_resume_with_one_line(full_run, tmp_path):
    run = _copy_run(full_run, tmp_path, "broken")
    weights = run / "epoch_0003" / MODELS_FILE
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(PipelineError) as err:
        train(job(tmp_path, "broken", epochs=6))
    msg = str(err.value)
    assert msg.startswith(f"{run}/epoch_0003/{MODELS_FILE}: ") and "truncated or corrupt" in msg and "\n" not in msg


def test_resume_refuses_a_different_model_or_fewer_epochs(full_run, tmp_path):
    _copy_run(full_run, tmp_path, "other")
    with pytest.raises(PipelineError, match="different train.model; set train.checkpoint.resume=false"):
        train(job(tmp_path, "other", epochs=6, train={"model": {"g_width": 16}}))
    with pytest.raises(PipelineError, match="already trained 4 epochs, more than train.epochs=3"):
        train(job(tmp_path, "other", epochs=3))


def test_bad_input_is_one_line_before_any_training(ray_session, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PipelineError, match=rf"^{empty}: no PNG/JPEG images found"):
        train(job(tmp_path, train={"data": {"source": "images", "uri": str(empty), "limit": None}}))
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(40):
        buf = io.BytesIO()
        Image.new("L", (8, 8), i).save(buf, format="PNG")
        (flat / f"{i:02d}.png").write_bytes(buf.getvalue())
    with pytest.raises(PipelineError, match="conditional: needs class labels"):
        train(job(tmp_path, train={"data": {"source": "images", "uri": str(flat), "limit": None}}))
    (flat / "07.png").write_bytes(b"\x89PNG\r\n\x1a\ncorrupt")
    with pytest.raises(PipelineError, match=rf"^{flat}/07\.png: not a decodable PNG/JPEG image"):
        train(job(tmp_path, train={"data": {"source": "images", "uri": str(flat), "limit": None},
                                   "model": {"conditional": False}}))
    with pytest.raises(PipelineError, match="train.model.num_classes: 5, but digits has labels up to 9"):
        train(job(tmp_path, train={"model": {"num_classes": 5}}))
    with pytest.raises(PipelineError, match="train.batch_size: 200 per worker, but 256 examples over 2"):
        train(job(tmp_path, train={"batch_size": 200}))
    with pytest.raises(PipelineError, match="train.scaling: 3 worker"):
        train(job(tmp_path, train={"scaling": {"num_workers": 3}}))
    with pytest.raises(PipelineError, match="memory:// lives in one process"):
        train(job("memory://x"))


def test_explicit_version_taken_by_another_spec_is_refused(ray_session, tmp_path):
    from pipeline.families.dcgan.model import Generator
    from pipeline.package import export_package

    j = job(tmp_path, train={"version": "v1"})
    export_package(f"{tmp_path}/models/t/v1", Generator(j.train.model), j.train.model,
                   {"train_fingerprint": "someone else"})
    assert existing_package(j) is None
    with pytest.raises(PipelineError, match="version 'v1' already exists from a different train spec"):
        train(j)


def test_cli_train_error_is_one_line(ray_session, tmp_path):
    empty = tmp_path / "none"
    empty.mkdir()
    path = write_job(tmp_path / "job.yaml", spec(tmp_path, train={"data": {"source": "images", "uri": str(empty),
                                                                             "limit": None}}))
    out = CliRunner().invoke(app, ["train", str(path)])
    assert out.exit_code == 1
    assert out.output.strip().splitlines() == [f"error: {empty}: no PNG/JPEG images found (looked for .png, .jpg, "
                                               ".jpeg)"]
    out = CliRunner().invoke(app, ["train", str(path), "--set", "train.epochs=0"])
    assert out.exit_code == 2 and "train.epochs" in out.output


# --------------------------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_sigkill_a_training_worker_mid_run(ray_session, tmp_path):
    """Kill one worker's process (pid from the state API) mid-run; it restarts from the last checkpoint and
    ends at 6."""
    killed: list[int] = []
    run = tmp_path / "checkpoints" / "killed"

    def killer():
        deadline = time.time() + 240
        while time.time() < deadline and not killed:
            if (run / "epoch_0002" / STATE_FILE).exists():  # all ranks finished reporting epoch 1
                pids = train_worker_pids()
                if pids:
                    os.kill(pids[-1], signal.SIGKILL)
                    killed.append(pids[-1])
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    events = []
    res = train(job(tmp_path, "killed", epochs=6, train={"data": {"limit": 512}}), on_progress=events.append)
    thread.join(1)
    assert killed, "training finished before a worker could be killed"
    starts = [e for e in events if e.kind == "start"]
    # The restart continues after the newest complete checkpoint (at least epoch 1), whether or
    # not Ray's controller had registered it yet.
    assert len(starts) == 2 and starts[1].resumed_from >= 1 and starts[1].epoch == starts[1].resumed_from + 1
    assert res.epochs == 6 and [h["epoch"] for h in res.history] == list(range(6))
    assert res.global_step == 6 * steps_per_epoch(512, WORKERS, BATCH)
    assert load_package(res.package_uri).meta["epochs"] == 6


@pytest.mark.slow
def test_driver_killed_then_rerun_resumes(ray_session, tmp_path):
    import ray

    path = write_job(tmp_path / "job.yaml", spec(tmp_path, "drv", epochs=8, train={"data": {"limit": 512}}))
    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "train", str(path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    run = tmp_path / "checkpoints" / "drv"
    deadline = time.time() + 240
    while time.time() < deadline and not (run / "epoch_0003" / STATE_FILE).exists() and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    time.sleep(3)  # the dead driver's Train controller and workers go away with it
    from pipeline.specs import load_job

    res = train(load_job(path))
    # Epoch 2 was complete on storage (every rank reports epoch 2 before any starts epoch 3),
    # registered by Ray's controller or not: the rerun continues after it, with its state.
    assert res.resumed_from is not None and res.resumed_from >= 2 and res.epochs_run[0] == res.resumed_from + 1
    assert res.epochs == 8 and [h["epoch"] for h in res.history] == list(range(8))
    assert res.global_step == 8 * steps_per_epoch(512, WORKERS, BATCH)
    # Folders Ray never registered (the dead run's newest) are cleaned up; Ray keeps the last 2.
    assert sorted(p.name for p in run.glob("epoch_*")) == ["epoch_0006", "epoch_0007"]


@pytest.mark.slow
def test_train_with_checkpoints_on_s3(ray_session, s3_storage):
    storage = s3_storage.model_dump(mode="json", exclude_none=True)
    j = validate_job(deep_merge(spec("x", "s3job", epochs=2), {"storage": storage}), "test")
    res = train(j)
    assert res.run_uri == f"{s3_storage.root}/checkpoints/s3job" and res.epochs_run == [0, 1]
    store = Store(s3_storage.root, s3_storage)
    files = store.list("checkpoints/s3job")
    assert ("checkpoints/s3job/epoch_0001/models.safetensors" in files
            and "checkpoints/s3job/samples/epoch_0001.png" in files)
    assert load_package(res.package_uri, s3_storage).meta["epochs"] == 2
    more = train(validate_job(deep_merge(spec("x", "s3job", epochs=3), {"storage": storage}), "test"))
    assert more.resumed_from == 1 and more.epochs_run == [2]


MULTINODE = textwrap.dedent("""
    import os, sys
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    from ray.cluster_utils import Cluster
    from pipeline.runtime import quiet_ray_data
    from pipeline.specs import validate_job
    from pipeline.train.driver import train
    import json
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 300_000_000})
    cluster.add_node(num_cpus=1, object_store_memory=300_000_000)
    try:
        ray.init(address=cluster.address)
        quiet_ray_data()
        cluster.wait_for_nodes()
        events = []
        res = train(validate_job(json.loads(sys.argv[1]), "multinode"), on_progress=events.append)
        start = events[0]
        print("RESULT", json.dumps({"nodes": len(ray.nodes()), "world": start.world_size,
                                    "nodes_used": start.nodes, "epochs": res.epochs_run}))
    finally:
        ray.shutdown()
        cluster.shutdown()
""")


@pytest.mark.slow
def test_two_workers_on_a_two_node_cluster(tmp_path):
    """Its own Ray cluster (ray.cluster_utils.Cluster), in a subprocess: the session's Ray stays untouched."""
    data = spec(tmp_path, "multi", epochs=2)
    proc = subprocess.run([sys.executable, "-c", MULTINODE, json.dumps(data)], capture_output=True, text=True,
                          timeout=280, env=dict(os.environ, RAY_ADDRESS=""))
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, (proc.stdout + proc.stderr)[-4000:]
    got = json.loads(line[7:])
    assert got == {"nodes": 2, "world": 2, "nodes_used": 2, "epochs": [0, 1]}
    assert load_package(f"{tmp_path}/models/multi/"
                        f"{package_version(job(tmp_path, 'multi', epochs=2))}").meta["epochs"] == 2


@pytest.mark.slow
@pytest.mark.timeout(1500)  # it trains the demo model: 260-410 s here, 3x and more
def test_trained_generator_makes_recognisable_digits(ray_session, tmp_path):
    """The demo job's train stage (jobs/demo.yaml), against an untrained G, judged by a digits classifier."""
    from pipeline.families.dcgan.model import Generator
    from pipeline.image.features import digits_classifier
    from pipeline.models.classifier import classify
    from pipeline.specs import load_job

    j = load_job(Path(__file__).resolve().parents[1] / "jobs" / "demo.yaml", [f"storage.root={tmp_path}"])
    res = train(j)
    trained = load_package(res.package_uri).build_model()
    torch.manual_seed(123)
    untrained = Generator(j.train.model).eval()
    clf = digits_classifier(j.train.model.image_size)
    z = torch.randn(500, j.train.model.z_dim, generator=torch.Generator().manual_seed(7))
    labels = torch.arange(500) % 10

    def judge(g):
        with torch.no_grad():
            p = classify(clf, g(z, labels))
        confident = p.max(1).values > 0.9
        return confident.float().mean().item(), (confident & (p.argmax(1) == labels)).float().mean().item()

    trained_conf, trained_right = judge(trained)
    untrained_conf, _ = judge(untrained)
    print(f"confident share: trained {trained_conf:.2f} (right class {trained_right:.2f}), untrained "
          f"{untrained_conf:.2f}")
    assert trained_conf >= 0.6 and trained_conf >= untrained_conf + 0.4
    assert trained_right >= 0.5  # and mostly the digit it was asked for


def test_gloo_and_nccl_are_pinned_to_the_ray_node_interface_unless_the_user_set_them(monkeypatch):
    """Gloo would take its address from the hostname (127.0.1.1 on default Debian hosts); every worker binds
    it to the interface of its Ray node IP instead. A value the user set wins."""
    from pipeline.train.rendezvous import interface_of, pin_interfaces

    assert interface_of("127.0.0.1") == "lo" and interface_of("192.0.2.123") is None
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "ib0")
    assert pin_interfaces("127.0.0.1") == {"GLOO_SOCKET_IFNAME": "lo"}
    assert os.environ["GLOO_SOCKET_IFNAME"] == "lo" and os.environ["NCCL_SOCKET_IFNAME"] == "ib0"
    monkeypatch.delenv("GLOO_SOCKET_IFNAME")
    assert pin_interfaces("192.0.2.123") == {} and "GLOO_SOCKET_IFNAME" not in os.environ
