"""The `aigc` command line: help, `python -m pipeline`, and `validate` printing a masked spec."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from pipeline.cli import app

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_commands():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    for command in ("validate", "verify"):
        assert command in result.output


def test_command_help():
    result = CliRunner().invoke(app, ["validate", "--help"])
    assert result.exit_code == 0
    assert "--set" in result.output


def test_python_dash_m_pipeline():
    proc = subprocess.run([sys.executable, "-m", "pipeline", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "validate" in proc.stdout and "verify" in proc.stdout
    assert "Usage: aigc" in proc.stdout


def test_console_script_validates_demo():
    exe = Path(sys.executable).with_name("aigc")
    proc = subprocess.run([str(exe), "validate", "jobs/demo.yaml"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("# jobs/demo.yaml: valid")


def test_console_script_bad_spec_exit_2_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\ngenerate:\n  model: m/1\n  seeds: {count: -3}\n")
    proc = subprocess.run([str(Path(sys.executable).with_name("aigc")), "validate", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"{bad}: generate.seeds.count: must be greater than 0"
    assert "Traceback" not in proc.stdout + proc.stderr


def test_validate_prints_masked_spec(tmp_path, monkeypatch):
    secret, key_id = "s3cr3t-value-that-must-never-print", "AKIAABCDEFGHIJKLMNOP"
    monkeypatch.setenv("AIGC_TEST_SECRET", secret)
    monkeypatch.setenv("AIGC_TEST_KEY", key_id)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "name": "masked",
        "include": [str(ROOT / "configs" / "storage" / "s3.yaml")],
        "storage": {"endpoint": "http://127.0.0.1:9000",
                    "credentials": {"access_key_env": "AIGC_TEST_KEY", "secret_key_env": "AIGC_TEST_SECRET"}},
        "env": ["AIGC_TEST_KEY", "AIGC_TEST_SECRET"],
        "generate": {"model": "s3://aigc-assets/models/x/1", "seeds": {"count": 4}},
    }))
    result = CliRunner().invoke(app, ["validate", str(job)])
    assert result.exit_code == 0, result.output
    assert secret not in result.output and key_id not in result.output
    printed = yaml.safe_load(result.output)
    assert printed["storage"]["credentials"]["secret_key_env"] == "AIGC_TEST_SECRET"
    assert printed["storage"]["root"] == "s3://aigc-assets/nightly"
    assert printed["generate"]["seeds"] == {"start": 0, "count": 4}


def test_verify_of_nothing_is_exit_1(tmp_path):
    result = CliRunner().invoke(app, ["verify", str(tmp_path / "never-written")])
    assert result.exit_code == 1
    assert "no manifest.json" in result.output and "Traceback" not in result.output
