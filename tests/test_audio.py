"""Audio, the third modality (issue 19): the espeak-ng corpus, the log-mel picture and its fixed inverse,
WAV files with LIST/INFO and XMP, and jobs/audio-demo.yaml at tiny size through `aigc run` on a real
Ray: WAVs that Python's wave, soundfile, sox and exiftool read, a Parquet table that Hugging Face
datasets reads as an Audio column, and the same bytes from 1 actor as from 2."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from pipeline.audio import spectrum
from pipeline.audio.wav import SCHEMA, chunks, encode_wav, info_fields
from pipeline.catalog.registry import family, parse_config
from pipeline.cli import app
from pipeline.specs import SpecError, validate_job
from pipeline.storage import verify

from helpers import files_of, require_system

ROOT = Path(__file__).resolve().parents[1]
DATE = "2026-12-01"
JOB = ROOT / "jobs" / "audio-demo.yaml"


def corpus_module():
    spec = importlib.util.spec_from_file_location("build_spoken_digits", ROOT / "jobs/corpus/build_spoken_digits.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_corpus_is_the_same_bytes_twice_and_one_second_at_16_khz(tmp_path):
    require_system("/usr/bin/espeak-ng", "espeak-ng")
    build = corpus_module().build
    a, b = build(tmp_path / "a", per_class=1), build(tmp_path / "b", per_class=1)
    assert a == b and len(a) == 10 and sorted({rel.split("/")[0] for rel in a}) == [str(i) for i in range(10)]
    # a clip depends on (seed, class, index) alone: any corpus starts with the recorded demo corpus's clips
    record = json.loads((ROOT / "jobs/corpus/spoken-digits.json").read_text())
    if corpus_module().espeak_version() == record["espeak_ng"]:  # another espeak-ng speaks otherwise
        assert a == {rel: record["files"][rel] for rel in a}
    with wave.open(str(tmp_path / "a" / "7" / "7_00000.wav")) as w:
        assert (w.getframerate(), w.getnframes(), w.getsampwidth(), w.getnchannels()) == (16000, 16000, 2, 1)


def test_the_log_mel_inverse_is_deterministic_and_keeps_the_picture(tmp_path):
    t = torch.arange(spectrum.CLIP) / spectrum.RATE
    x = (0.3 * torch.sin(2 * torch.pi * 440 * t) * (t < 0.5)).unsqueeze(0).repeat(3, 1)
    img = spectrum.to_image(x)
    assert img.shape == (3, 1, 64, 64) and img.min() >= -1 and img.max() <= 1
    w1, w2 = spectrum.to_wave(img), spectrum.to_wave(img[:1])
    assert torch.equal(w1[:1], w2) and w1.shape == (3, 16000)  # an item's samples do not depend on its batch
    # on speech, a WAV's own log-mel picture is the one it came from, within 0.6 dB on average
    require_system("/usr/bin/espeak-ng", "espeak-ng")
    import soundfile as sf

    corpus_module().build(tmp_path, per_class=1)
    clips = sorted(tmp_path.rglob("*.wav"))
    speech = torch.stack([torch.from_numpy(sf.read(str(p), dtype="float32")[0]) for p in clips])
    img = spectrum.to_image(speech)
    back = spectrum.to_image(spectrum.from_pcm16(spectrum.to_pcm16(spectrum.to_wave(img))))
    assert (back - img).abs().mean() < 0.03


def test_a_wav_carries_info_and_xmp_and_every_reader_opens_it(tmp_path):
    import soundfile as sf

    from pipeline.provenance.xmp import XmpFields, xmp_packet

    pcm = (np.sin(np.arange(16000) / 10) * 8000).astype(np.int16)
    xmp = xmp_packet(XmpFields(job="j", item_id="s1", seed=3, model_sha256="ab" * 32, system="aigc specgan",
                               system_version="0", created="2026-12-01T00:00:00Z", prompt="say seven",
                               medium="audio clip"))
    data = encode_wav(pcm, 16000, info_fields(job="j", item_id="s1", seed=3, model_sha256="ab" * 32,
                                              created="2026-12-01", prompt="say seven"), xmp)
    found = chunks(data)
    assert found["INFO/IKEY"] == b"trainedAlgorithmicMedia" and b"trainedAlgorithmicMedia" in found["_PMX"]
    with wave.open(io.BytesIO(data)) as w:
        assert np.array_equal(np.frombuffer(w.readframes(w.getnframes()), "<i2"), pcm)
    x, rate = sf.read(io.BytesIO(data), dtype="int16")
    assert rate == 16000 and np.array_equal(x, pcm)
    path = tmp_path / "a.wav"
    path.write_bytes(data)
    require_system("/usr/bin/sox", "sox")
    assert subprocess.run(["sox", "--i", "-r", str(path)], capture_output=True, text=True).stdout.strip() == "16000"
    require_system("/usr/bin/exiftool", "libimage-exiftool-perl")
    meta = json.loads(subprocess.run(["exiftool", "-j", "-XMP:all", "-RIFF:all", str(path)], capture_output=True,
                                     text=True).stdout)[0]
    assert meta["DigitalSourceType"].endswith("/trainedAlgorithmicMedia") and meta["AIPromptInformation"] == "say seven"
    assert meta["Keywords"] == "trainedAlgorithmicMedia"


def test_the_family_is_registered_and_refuses_the_image_watermark():
    fam = family("specgan")
    cfg = parse_config({"arch": "specgan", "conditional": True})
    assert cfg.image_size == 64 and cfg.phrasing == "speech" and fam.formats == ("wav", "parquet", "webdataset")
    spec = {"name": "a", "train": {"data": {"source": "audio", "uri": "x"}, "model": {"arch": "specgan"}},
            "generate": {"seeds": {"count": 1}, "provenance": {"watermark": {}}}}
    with pytest.raises(SpecError, match="watermark"):
        validate_job(spec)
    with pytest.raises(SpecError, match="audio"):
        validate_job({"name": "a", "train": {"data": {"source": "digits"}, "model": {"arch": "specgan"}}})


def test_user_audio_from_a_folder_of_wav_and_flac_or_from_parquet_reads_as_the_same_pictures(ray_session, tmp_path):
    """Classes from subfolders, FLAC at 22.05 kHz resampled, stereo mixed down; Parquet's {bytes, path} column
    (the Hugging Face layout) gives the same pictures and labels; a bad file is one line naming it."""
    import pyarrow as pa
    import soundfile as sf

    from pipeline.audio.data import audio_dataset, decode_clip
    from pipeline.errors import PipelineError
    from pipeline.image.trainset import load_data, read_all
    from pipeline.specs import DataSpec

    t = np.arange(22050) / 22050
    clips = {"hum": np.sin(2 * np.pi * 220 * t), "hiss": np.random.default_rng(0).standard_normal(22050) * 0.1}
    rows = []
    for label, (name, x) in enumerate(sorted(clips.items())):
        (tmp_path / "folder" / name).mkdir(parents=True)
        sf.write(tmp_path / "folder" / name / "a.flac", np.stack([x, x], 1) * 0.5, 22050)
        buf = io.BytesIO()
        sf.write(buf, np.stack([x, x], 1) * 0.5, 22050, format="FLAC")
        rows.append({"audio": {"bytes": buf.getvalue(), "path": f"{name}.flac"}, "label": label})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "clips.parquet")
    model = parse_config({"arch": "specgan", "conditional": True, "num_classes": 2})
    folder = load_data(DataSpec(source="audio", uri=str(tmp_path / "folder")), model, reader=audio_dataset)
    table = load_data(DataSpec(source="audio", uri=str(tmp_path / "clips.parquet")), model, reader=audio_dataset)
    assert folder.classes == ["hiss", "hum"] and folder.count == table.count == 2
    (xa, ya), (xb, yb) = read_all(folder), read_all(table)
    assert xa.shape == (2, 1, 64, 64) and sorted(ya.tolist()) == sorted(yb.tolist()) == [0, 1]
    assert sorted(map(bytes, xa.numpy())) == sorted(map(bytes, xb.numpy()))  # same pictures either way
    with pytest.raises(PipelineError, match=r"^folder/hum/b.wav: not a decodable WAV/FLAC file"):
        decode_clip(b"RIFF....WAVEnot audio", "folder/hum/b.wav")  # what a Ray Data task raises, as one line


# --------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def demo(ray_session, tmp_path_factory):
    """jobs/audio-demo.yaml at tiny size: 60 clips, 1 epoch, N=24, 30 items in shards of 10, 2 actors."""
    require_system("/usr/bin/espeak-ng", "espeak-ng")
    root = tmp_path_factory.mktemp("audio")
    corpus_module().build(root / "corpus", per_class=6)
    sets = {"storage.root": str(root), "train.data.uri": str(root / "corpus"), "train.epochs": "1",
            "train.batch_size": "8", "evaluate.samples": "24", "evaluate.gate.max_fld_ratio": "1000000",
            "generate.seeds.count": "20", "generate.prompts.samples_per_prompt": "1", "generate.shard_size": "10",
            "generate.scaling.batch_size": "4"}
    args = ["run", str(JOB), "--date", DATE, "--verify"] + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    return {"root": root, "out": root / "generated" / "audio-demo" / DATE, "output": r.output, "sets": sets}


@pytest.mark.timeout(450)  # the module's demo run: 48-57 s on a quiet box, 136 s on a busy one
def test_the_demo_trains_evaluates_generates_and_verifies(demo):
    out = demo["output"]
    assert "train     done" in out and "60 clips" in out and "FLD" in out and "prompt accuracy" in out
    assert "verify    ok" in out and verify(str(demo["out"])).ok


@pytest.mark.timeout(450)  # the module's demo run: 48-57 s on a quiet box, 136 s on a busy one
def test_every_wav_opens_in_wave_soundfile_and_sox_with_its_provenance(demo):
    import soundfile as sf

    wavs = sorted((demo["out"] / "images").rglob("*.wav"))
    assert len(wavs) == 30
    for path in wavs[:: 7]:
        with wave.open(str(path)) as w:
            assert (w.getframerate(), w.getnframes(), w.getsampwidth()) == (16000, 16000, 2)
        info = sf.info(str(path))
        assert info.samplerate == 16000 and info.frames == 16000 and info.subtype == "PCM_16"
        assert b"trainedAlgorithmicMedia" in chunks(path.read_bytes())["_PMX"]
    require_system("/usr/bin/sox", "sox")
    said = [subprocess.run(["sox", "--i", flag, str(wavs[0])], capture_output=True, text=True).stdout.strip()
            for flag in ("-r", "-s", "-b")]  # rate, samples, bits
    assert said == ["16000", "16000", "16"]


@pytest.mark.timeout(450)  # the module's demo run: 48-57 s on a quiet box, 136 s on a busy one
def test_hugging_face_datasets_reads_the_audio_column(demo, tmp_path):
    import soundfile as sf
    from datasets import Audio, Dataset

    parts = sorted(str(p) for p in (demo["out"] / "data").glob("*.parquet"))
    ds = Dataset.from_parquet(parts, cache_dir=str(tmp_path))
    assert ds.num_rows == 30 and ds.features["audio"] == Audio(sampling_rate=16000)
    row = ds.cast_column("audio", Audio(decode=False))[0]  # decoding itself needs torchcodec (see docs/audio.md)
    x, rate = sf.read(io.BytesIO(row["audio"]["bytes"]))
    assert rate == 16000 and len(x) == 16000 and row["audio"]["path"].endswith(".wav")
    table = pq.read_table(parts[0])
    assert table.schema.names == SCHEMA.names and set(table.column("duration").to_pylist()) == {1.0}
    prompts = [r for r in pq.read_table(parts).to_pylist() if r["prompt"]]
    assert sorted(r["prompt"] for r in prompts)[:2] == ["say eight", "say five"]


@pytest.mark.timeout(450)  # the module's demo run: 48-57 s on a quiet box, 136 s on a busy one
def test_one_actor_writes_the_same_bytes_as_two(demo):
    pkg = next(p for p in (demo["root"] / "models" / "audio-demo").iterdir() if not p.name.endswith(".eval"))
    spec = {"name": "audio-demo", "storage": {"root": str(demo["root"])},  # the same job: its name is in every WAV
            "generate": {"model": str(pkg), "seed": 0, "seeds": {"count": 20},
                         "output": "{root}/generated/one-actor/{date}",
                         "prompts": {"uri": str(ROOT / "jobs/prompts/say.jsonl"), "samples_per_prompt": 1},
                         "formats": ["wav", "parquet", "webdataset"], "shard_size": 10,
                         "scaling": {"num_actors": 1, "batch_size": 4}}}
    job = demo["root"] / "one.yaml"
    job.write_text(json.dumps(spec))
    r = CliRunner().invoke(app, ["generate", str(job), "--date", DATE])
    assert r.exit_code == 0, r.output
    one = demo["root"] / "generated" / "one-actor" / DATE

    def files(base: Path) -> dict[str, bytes]:
        return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*.wav"))}

    a, b = files(demo["out"]), files(one)
    assert len(a) == 30 and a == b
    import tarfile  # ... and with webdataset, each shard's tar holds every item's WAV and JSON row

    with tarfile.open(one / "images" / "s000000.tar") as tar:
        names = tar.getnames()
        assert names[:2] == ["s000000000000.wav", "s000000000000.json"] and len(names) == 20
        assert tar.extractfile(names[0]).read() == b["images/s000000/s000000000000.wav"]
    assert verify(str(one)).ok


@pytest.mark.timeout(450)  # the module's demo run: 48-57 s on a quiet box, 136 s on a busy one
def test_the_report_has_a_player_and_a_spectrogram_per_card_and_renders_in_chromium(demo, tmp_path):
    import re

    from pipeline.report.build import build_report

    folder = tmp_path / "r"
    res = build_report(str(demo["out"]), str(folder), page_size=30, log=lambda s: None)
    assert res.assets == 30 and res.evals == 1
    page = (folder / "gallery" / "page-0001.html").read_text()
    players = re.findall(r"<audio controls preload='none' style='width:100%' src='([^']+)'>", page)
    assert len(players) == 30 and page.count("src='data:image/png;base64,") == 30
    assert all((folder / "gallery" / p).read_bytes()[:4] == b"RIFF" for p in players)
    assert "loss.png" in (folder / "index.html").read_text()  # the training curves
    require_system("/usr/bin/chromium", "chromium")
    dom = subprocess.run(["/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
                          (folder / "gallery" / "page-0001.html").as_uri()], check=True, timeout=120,
                         capture_output=True, text=True).stdout
    assert 'data-images-broken="0"' in dom and dom.count("<audio") == 30, dom[:300]


def gen_job(demo: dict, output: str, count: int, actors: int) -> Path:
    pkg = next(p for p in (demo["root"] / "models" / "audio-demo").iterdir() if not p.name.endswith(".eval"))
    spec = {"name": "audio-demo", "storage": {"root": str(demo["root"])},  # the same job: its name is in every WAV
            "generate": {"model": str(pkg), "seed": 0, "seeds": {"count": count}, "output": output,
                         "formats": ["wav", "parquet"], "shard_size": 10,
                         "scaling": {"num_actors": actors, "batch_size": 4}}}
    job = demo["root"] / f"{output.split('/')[-2]}.yaml"
    job.write_text(json.dumps(spec))
    return job


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_killed_audio_run_resumes_to_the_same_bytes(demo):
    """SIGKILL the `aigc generate` driver after 2 of 12 shards; the rerun resumes and equals a clean run."""
    import os
    import signal
    import time

    import ray

    from pipeline.generate import run_generate
    from pipeline.specs import load_job

    killed = gen_job(demo, "{root}/generated/killed/{date}", 120, 2)
    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address)  # the driver joins this cluster
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "generate", str(killed), "--date", DATE], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = demo["root"] / "generated" / "killed" / DATE
    deadline = time.time() + 240
    while time.time() < deadline and len(list((out / "_shards").glob("*.json"))) < 2 and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    committed = len(list((out / "_shards").glob("*.json")))
    assert not (out / "_SUCCESS").exists() and 2 <= committed < 12
    said: list[str] = []
    res = run_generate(load_job(killed), date=DATE, progress=False, log=said.append)
    assert res.shards_skipped >= committed and "already committed" in said[0] and verify(res.output).ok
    clean = run_generate(load_job(gen_job(demo, "{root}/generated/clean/{date}", 120, 1)), date=DATE, progress=False)
    resumed, straight = files_of(res.output), files_of(clean.output)
    for files in (resumed, straight):
        del files["_job.json"]  # the run's own settings (its output, 2 actors vs 1), not an item's bytes
    assert len(list(out.rglob("*.wav"))) == 120 and len(resumed) == 132 and resumed == straight


def test_checking_a_corpus_size_nobody_recorded_is_one_line_and_exit_2():
    require_system("/usr/bin/espeak-ng", "espeak-ng")
    r = subprocess.run([sys.executable, str(ROOT / "jobs/corpus/build_spoken_digits.py"), "--check", "--per-class",
                        "7"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert r.stderr.strip() == (f"error: no recorded corpus of 7 clips per class "
                                f"({ROOT / 'jobs/corpus/spoken-digits-7.json'} is missing)")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_corpus_check_rebuilds_the_recorded_corpus():
    require_system("/usr/bin/espeak-ng", "espeak-ng")
    r = subprocess.run([sys.executable, str(ROOT / "jobs/corpus/build_spoken_digits.py"), "--check"],
                       capture_output=True, text=True, timeout=500)
    assert r.returncode == 0 and "identical (1,000 clips" in r.stdout, r.stdout + r.stderr


def specgan_spec(root: Path, corpus: Path, name: str, epochs: int) -> dict:
    return {"name": name, "storage": {"root": str(root)},
            "train": {"data": {"source": "audio", "uri": str(corpus)},
                      "model": {"arch": "specgan", "z_dim": 8, "g_width": 8, "d_width": 8, "conditional": True,
                                "g_upsample": "nearest", "d_minibatch_std": True, "text_encoder": {"buckets": 1024}},
                      "ema": 0.99, "r1": 1.0, "r1_every": 2, "epochs": epochs, "batch_size": 8, "seed": 3,
                      "scaling": {"num_workers": 2}}}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_specgan_resume_2_plus_2_epochs_is_bit_identical_to_4(ray_session, tmp_path):
    """The DCGAN loop's exact resume holds for the audio family: DDP on 2 workers, EMA, R1, speech captions."""
    import shutil

    from pipeline.families.dcgan.loop import PARTS
    from pipeline.train.checkpoint import load_checkpoint
    from pipeline.train.driver import train

    require_system("/usr/bin/espeak-ng", "espeak-ng")
    corpus_module().build(tmp_path / "corpus", per_class=4)
    full = train(validate_job(specgan_spec(tmp_path, tmp_path / "corpus", "full", 4)))
    assert full.epochs == 4 and "40 clips" in full.detail
    train(validate_job(specgan_spec(tmp_path, tmp_path / "corpus", "half", 2)))
    shutil.rmtree(tmp_path / "models" / "half")  # the 2-epoch spec's package; the 4-epoch one differs anyway
    res = train(validate_job(specgan_spec(tmp_path, tmp_path / "corpus", "half", 4)))
    assert res.resumed_from == 1 and res.epochs_run == [2, 3]
    resumed = load_checkpoint(str(tmp_path / "checkpoints" / "half" / "epoch_0003"), parts=PARTS)
    straight = load_checkpoint(str(tmp_path / "checkpoints" / "full" / "epoch_0003"), parts=PARTS)
    for a, b in ((resumed.models, straight.models), (resumed.optim, straight.optim)):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss_G"] for h in resumed.state["history"]] == [h["loss_G"] for h in straight.state["history"]]


@pytest.mark.timeout(450)  # the module's demo run, then two generations of 10 clips: about 20 s more
def test_signed_wavs_validate_are_reproducible_and_a_changed_sample_fails_by_name(demo, monkeypatch):
    """generate.provenance.c2pa on the audio family: each WAV gets a C2PA chunk that the c2pa reader
    validates against the test CA, the same bytes from 1 actor as from 2, and without it the very WAV the
    unsigned run wrote; `aigc verify --c2pa` names a WAV whose samples changed."""
    import soundfile as sf

    from pipeline.provenance import devcert
    from pipeline.provenance.c2pa import Validator, strip_manifest
    from pipeline.provenance.container import riff_chunks

    chain = devcert.make_chain("ed25519")
    monkeypatch.setenv("AIGC_TEST_WAV_CHAIN", chain.chain)
    monkeypatch.setenv("AIGC_TEST_WAV_KEY", chain.key)
    outs = []
    for actors in (1, 2):
        job = gen_job(demo, f"{{root}}/generated/signed-{actors}/{{date}}", 10, actors)
        spec = json.loads(job.read_text())
        spec["generate"]["provenance"] = {"c2pa": {"cert_chain_env": "AIGC_TEST_WAV_CHAIN",
                                                   "private_key_env": "AIGC_TEST_WAV_KEY"}}
        job.write_text(json.dumps(spec))
        r = CliRunner().invoke(app, ["generate", str(job), "--date", DATE])
        assert r.exit_code == 0, r.output
        outs.append(demo["root"] / "generated" / f"signed-{actors}" / DATE)
    one, two = ({str(p.relative_to(o)): p.read_bytes() for p in sorted(o.rglob("*.wav"))} for o in outs)
    assert len(one) == 10 and one == two
    anchors = demo["root"] / "ca.pem"
    anchors.write_text(chain.ca)
    reader = Validator(chain.ca)
    for rel, data in one.items():
        assert [kind for kind, _, _ in riff_chunks(data)] == [b"fmt ", b"LIST", b"_PMX", b"data", b"C2PA"]
        assert reader.check(data).state == "Trusted"
        action = reader.manifest(data)["assertions"]
        created = next(a for a in action if a["label"].startswith("c2pa.actions"))["data"]["actions"][0]
        assert created["digitalSourceType"].endswith("/trainedAlgorithmicMedia")
        assert strip_manifest(data) == (demo["out"] / rel).read_bytes()  # the unsigned demo run's file
        x, rate = sf.read(io.BytesIO(data))
        assert rate == 16000 and len(x) == 16000
    r = CliRunner().invoke(app, ["verify", str(outs[0]), "--c2pa", "--trust-anchors", str(anchors)])
    assert r.exit_code == 0 and "10 C2PA manifests checked (trust anchors)" in r.output, r.output
    victim = outs[0] / sorted(one)[3]
    data = bytearray(victim.read_bytes())
    data[2000] ^= 0x01  # one sample's low bit, inside the data chunk
    victim.write_bytes(bytes(data))
    r = CliRunner().invoke(app, ["verify", str(outs[0]), "--c2pa", "--trust-anchors", str(anchors)])
    assert r.exit_code == 1 and sorted(one)[3] in r.output and "Invalid" in r.output, r.output
