"""A quiet terminal: `aigc run` shows only our lines (Ray's go to the run's log file unless --verbose),
progress without a terminal is a line every N seconds plus one summary per stage, and a failing run
is one line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from pipeline import terminal
from pipeline.terminal import StageProgress, log_path

from helpers import make_package

ROOT = Path(__file__).resolve().parents[1]
DATE = "2026-11-28"
# What our lines look like: a stage's name or one of the CLI's prefixes, or the run summary's indented rows.
OURS = re.compile(r"^(run \S+ for \d{4}-\d\d-\d\d:|(train|evaluate|generate|verify): |output: |log: |error: |  )")
RAY_MARKERS = ("INFO", "WARNING", "core_worker", "pid=", "Token authentication", "streaming_executor",
               "Traceback", "Deprecat")


def aigc(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", AIGC_PROGRESS_INTERVAL="1")
    env.pop("RAY_ADDRESS", None)  # an embedded Ray of its own, as a user's first run
    env.pop(terminal.LOG_DIR_ENV, None)
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_job(tmp_path_factory):
    """A generate-only job on an already exported package: 40 items in 2 shards, 1 actor."""
    tmp = tmp_path_factory.mktemp("quiet")
    pkg = make_package(tmp / "pkg")
    spec = {"name": "quiet", "storage": {"root": str(tmp / "out")},
            "generate": {"model": pkg, "seeds": {"count": 40}, "shard_size": 20,
                         "scaling": {"num_actors": 1, "num_cpus": 0.5, "batch_size": 20}}}
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, tmp / "out"


def test_run_prints_only_our_lines_and_logs_rays(tiny_job):
    job, out = tiny_job
    t0 = time.monotonic()
    proc = aigc("run", str(job), "--date", DATE)
    took = time.monotonic() - t0
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert [line for line in lines if not OURS.match(line)] == [], text
    assert [line for line in lines if any(m in line for m in RAY_MARKERS)] == [], text
    # one summary line for the stage, the run's summary, the log's place
    assert sum(line.startswith("generate: done 40/40 items") for line in lines) == 1, text
    assert "run quiet for 2026-11-28:" in proc.stdout
    log = out / "runs" / "quiet" / f"{DATE}.log"
    assert f"log: {log}" in proc.stderr
    held = log.read_text()
    assert "Started a local Ray instance" in held and "\tINFO " in held  # Ray's own lines, in the log only
    assert (out / "runs" / "quiet" / f"{DATE}.json").exists()
    print(f"quiet run: {took:.1f}s")


def test_verbose_shows_rays_lines(tiny_job):
    job, _ = tiny_job
    proc = aigc("run", str(job), "--date", DATE, "--verbose")  # already complete: Ray starts, nothing to do
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    assert "Started a local Ray instance" in text and "already complete" in text
    assert "log: " not in text


def test_a_failing_run_is_one_line(tiny_job, tmp_path):
    job, out = tiny_job
    proc = aigc("run", str(job), "--date", "2026-11-29", "--set", f"generate.model={tmp_path}/nope")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "no published model package" in lines[0] and "Ray's log: " in lines[0]
    assert proc.stdout == ""
    assert (out / "runs" / "quiet" / "2026-11-29.log").exists()


def test_log_places(tmp_path, monkeypatch):
    monkeypatch.delenv(terminal.LOG_DIR_ENV, raising=False)
    assert log_path(str(tmp_path), "j", "run", DATE) == f"{tmp_path}/runs/j/{DATE}.log"
    assert log_path(str(tmp_path), "j", "generate", "r1") == f"{tmp_path}/runs/j/generate-r1.log"
    assert "/aigc-logs/j/train-" in log_path("s3://bucket/root", "j", "train")
    monkeypatch.setenv(terminal.LOG_DIR_ENV, str(tmp_path / "logs"))
    assert log_path("s3://bucket/root", "j", "run", DATE) == f"{tmp_path}/logs/{DATE}.log"


@dataclass
class Event:  # the shape of pipeline.train.worker.Progress, without torch
    kind: str
    epoch: int
    epochs: int
    step: int = 0
    steps: int = 0
    metrics: dict = field(default_factory=dict)

    def line(self) -> str:
        return f"epoch {self.epoch + 1}/{self.epochs}" + (" done" if self.kind == "epoch" else f" step {self.step}")


def test_training_events_collapse_to_interval_lines_and_a_summary(capsys, monkeypatch):
    monkeypatch.setenv(terminal.INTERVAL_ENV, "3600")
    with StageProgress("train", unit="steps", tty=False) as bar:
        bar.train_event(Event("start", 0, 5, steps=30))
        for epoch in range(5):
            for step in range(1, 31):
                bar.train_event(Event("step", epoch, 5, step, 30))
            bar.train_event(Event("epoch", epoch, 5, 30, 30))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines  # 155 events: the start line and the summary
    assert lines[0].startswith("train: ") and lines[1].startswith("train: done 150/150 steps in ")


def test_progress_lines_every_interval(capsys, monkeypatch):
    monkeypatch.setenv(terminal.INTERVAL_ENV, "0.05")
    with StageProgress("generate", 4, tty=False) as bar:
        for _ in range(3):
            time.sleep(0.06)
            bar.update(1)
        bar.update(1)
    lines = capsys.readouterr().err.splitlines()
    assert lines[:3] == [line for line in lines if re.match(r"generate: \d/4 items \(\d+%\), [\d.]+ items/s", line)]
    assert len(lines) == 4 and lines[-1].startswith("generate: done 4/4 items")
    assert "ETA" in lines[0]


def test_progress_on_a_terminal_is_one_live_bar(monkeypatch):
    import io

    screen = io.StringIO()
    monkeypatch.setattr(terminal, "terminal", lambda: screen)
    with StageProgress("generate", 10, tty=True) as bar:
        bar.update(10)
    assert "generate" in screen.getvalue() and "10/10" in screen.getvalue()
