"""Build the spoken-digits corpus (SC09-style: "zero" to "nine", 1 s at 16 kHz) offline with espeak-ng.

    .venv/bin/python jobs/corpus/build_spoken_digits.py                  # writes outputs/corpus/spoken-digits
    .venv/bin/python jobs/corpus/build_spoken_digits.py --check          # rebuild in a temp folder, compare
    .venv/bin/python jobs/corpus/build_spoken_digits.py --per-class 2000 --out /data/sc09-espeak   # SC09's size
    .venv/bin/python jobs/corpus/build_spoken_digits.py --per-class 2000 --check  # ... rebuilt and compared

Each clip is one digit word spoken by Debian's ``espeak-ng`` (``apt-get install espeak-ng``) with a
voice, variant, speed and pitch drawn for that clip, then resampled from espeak's 22,050 Hz to
16 kHz, trimmed of silence, placed at a drawn offset in a 1 s window, scaled to a drawn peak level
and mixed with light white noise at a drawn SNR. Every draw comes from a generator seeded by
(class, index), so the corpus is the same bytes on every run with the same espeak-ng, numpy and
scipy. Layout: ``<out>/<digit>/<digit>_<index:05d>.wav`` (16-bit PCM mono, 16 kHz, 16,000 frames);
the class subfolders ``0`` .. ``9`` are the labels, and the text encoder captions them with the
digit's words ("say seven").

``--check`` rebuilds the default corpus into a temporary folder and compares the sha256 of every
clip with ``jobs/corpus/spoken-digits.json`` (checked in: the corpus itself is 32 MB and is built, not
stored). A different espeak-ng version speaks differently, so a mismatch names the version. With
``--per-class 2000`` it checks the SC09-sized corpus (20,000 clips, 640 MB, about 10 min on 2 cores)
against ``jobs/corpus/spoken-digits-2000.json``, which records one sha256 per class rather than per
clip. Every clip is a function of (seed, class, index) alone, so the first 100 clips of each class of
any corpus are the default corpus's.

Licence: espeak-ng is GPL-3.0-or-later (https://github.com/espeak-ng/espeak-ng, COPYING). The GPL
covers the program, not what it outputs: "the output from running a covered work is covered by this
License only if the output, given its content, constitutes a covered work" (GPL-3, section 2), and
synthesized speech of ten English words is not. The clips are data produced by the program; this
repository's licence (Apache-2.0) applies to the script, and the corpus carries no further terms.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import subprocess
import sys
import tempfile
import wave
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
DIGEST = HERE / "spoken-digits.json"
FILE_LIST_MAX = 2_000  # a recorded corpus of more clips keeps one sha256 per class, not per clip
DEFAULT_OUT = Path("outputs/corpus/spoken-digits")
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
RATE = 16_000
FRAMES = RATE  # 1 s
PER_CLASS = 100  # the demo corpus: 1,000 clips, built in about a minute on 2 cores
SEED = 0
# espeak-ng's own (formant) English voices and variants: no mbrola voice, which needs a separate package
LANGUAGES = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "croak", "klatt", "klatt2",
            "klatt3")


def espeak_version() -> str:
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True).stdout
    return out.split("text-to-speech:", 1)[-1].split("Data at", 1)[0].strip()


def draws(label: int, index: int, seed: int = SEED) -> dict:
    """The clip's voice and augmentation, a function of (seed, class, index) only."""
    r = random.Random(zlib.crc32(f"spoken-digits:{seed}:{label}:{index}".encode()))
    return {"voice": r.choice(LANGUAGES) + (("+" + v) if (v := r.choice(VARIANTS)) else ""),
            "speed": r.randint(120, 220), "pitch": r.randint(15, 85), "peak_db": round(r.uniform(-12.0, -1.0), 2),
            "snr_db": round(r.uniform(20.0, 40.0), 2), "offset": r.random(), "noise_seed": r.getrandbits(32)}


def speak(word: str, voice: str, speed: int, pitch: int) -> tuple[np.ndarray, int]:
    """espeak-ng's WAV on stdout → float64 samples and their rate."""
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", word],
                         capture_output=True, check=True).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate, n = w.getframerate(), w.getnframes()
        raw = w.readframes(n)
    if len(raw) < 2 * n:  # espeak-ng writes to a pipe without seeking back: the header's sizes are placeholders
        n = len(raw) // 2
    return np.frombuffer(raw[: 2 * n], "<i2").astype(np.float64) / 32768.0, rate


def clip(label: int, index: int, seed: int = SEED) -> bytes:
    """One corpus clip as WAV bytes (16-bit PCM mono, 16 kHz, 1 s)."""
    from scipy.signal import resample_poly

    d = draws(label, index, seed)
    x, rate = speak(WORDS[label], d["voice"], d["speed"], d["pitch"])
    if rate != RATE:
        g = np.gcd(rate, RATE)
        x = resample_poly(x, RATE // g, rate // g)
    loud = np.flatnonzero(np.abs(x) > 0.02 * np.abs(x).max(initial=1e-9))  # trim espeak's silence
    x = x[loud[0]: loud[-1] + 1] if len(loud) else x
    x = x[:FRAMES]
    out = np.zeros(FRAMES)
    start = int(d["offset"] * (FRAMES - len(x)))
    out[start: start + len(x)] = x * (10 ** (d["peak_db"] / 20) / max(np.abs(x).max(initial=0.0), 1e-9))
    speech_rms = np.sqrt(np.mean(out[start: start + len(x)] ** 2)) if len(x) else 0.0
    noise = np.random.Generator(np.random.PCG64(d["noise_seed"])).standard_normal(FRAMES)
    out += noise * speech_rms * 10 ** (-d["snr_db"] / 20)
    pcm = np.clip(np.round(out * 32767), -32768, 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def build(out: Path, per_class: int = PER_CLASS, seed: int = SEED, workers: int = 2) -> dict[str, str]:
    """Write every clip under ``out``; returns {relative path: sha256}."""
    jobs = [(label, i) for label in range(len(WORDS)) for i in range(per_class)]

    def one(job: tuple[int, int]) -> tuple[str, str]:
        label, i = job
        data = clip(label, i, seed)
        rel = f"{label}/{label}_{i:05d}.wav"
        (out / str(label)).mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
        return rel, hashlib.sha256(data).hexdigest()

    with ThreadPoolExecutor(workers) as pool:  # each clip is an espeak-ng process: threads suffice
        return dict(sorted(pool.map(one, jobs)))


def digest(files: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{rel}\t{sha}\n" for rel, sha in sorted(files.items())).encode()).hexdigest()


def class_digests(files: dict[str, str]) -> dict[str, str]:
    """One sha256 per class folder, over its clips' paths and sha256s."""
    labels = sorted({rel.split("/", 1)[0] for rel in files}, key=int)
    return {label: digest({rel: sha for rel, sha in files.items() if rel.split("/", 1)[0] == label})
            for label in labels}


def digest_file(per_class: int) -> Path:
    return DIGEST if per_class == PER_CLASS else HERE / f"spoken-digits-{per_class}.json"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="rebuild the corpus of --per-class clips in a temp folder "
                                                         f"and compare with its record ({DIGEST.name} for the "
                                                         "default)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--per-class", type=int, default=PER_CLASS)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--write-digest", action="store_true", help="record the built corpus in jobs/corpus/ "
                                                                f"({DIGEST.name} for the default)")
    args = ap.parse_args()
    version = espeak_version()
    if args.check:
        record = digest_file(args.per_class)
        if not record.exists():
            print(f"error: no recorded corpus of {args.per_class} clips per class ({record} is missing)",
                  file=sys.stderr)
            return 2
        want = json.loads(record.read_text())
        with tempfile.TemporaryDirectory() as tmp:
            files = build(Path(tmp), want["per_class"], want["seed"])
        got = digest(files)
        if "files" in want:
            differ = sorted(rel for rel, sha in files.items() if want["files"].get(rel) != sha)
        else:
            differ = [f"class {c}" for c, sha in class_digests(files).items() if want["classes"].get(c) != sha]
        same = got == want["sha256"]
        print(f"spoken digits: {'identical' if same else 'DIFFERS'} ({len(files):,} clips, sha256 {got[:12]}; "
              f"espeak-ng {version}, recorded with {want['espeak_ng']})"
              + ("" if same else f"; {len(differ):,} clips differ, first {differ[:3]}"))
        return 0 if same else 1
    files = build(args.out, args.per_class, args.seed)
    record = {"per_class": args.per_class, "seed": args.seed, "clips": len(files), "rate": RATE, "frames": FRAMES,
              "espeak_ng": version, "numpy": np.__version__, "sha256": digest(files)}
    record.update({"files": files} if len(files) <= FILE_LIST_MAX else {"classes": class_digests(files)})
    if args.write_digest:
        digest_file(args.per_class).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(f"{args.out}: {len(files):,} clips ({args.per_class} per class), sha256 {record['sha256']}, "
          f"espeak-ng {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
