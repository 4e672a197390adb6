"""Model packages load without pickle; truncated, mismatched or booby-trapped ones give one line."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.package import PackageError, load_package

from helpers import make_package


class Payload:
    """Unpickling this runs os.system: the test proves no loader ever unpickles."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_round_trip_rebuilds_the_generator(tmp_path):
    uri = make_package(tmp_path / "m")
    pkg = load_package(uri)
    g = pkg.build_model()
    assert not g.training and pkg.config.z_dim == 16
    assert pkg.model_sha256 == json.loads((tmp_path / "m" / "model.json").read_text())["model_sha256"]
    with torch.inference_mode():
        assert g(torch.zeros(2, 16), labels=torch.tensor([1, 2])).shape == (2, 1, 32, 32)


def test_truncated_weights(tmp_path):
    uri = make_package(tmp_path / "m")
    w = Path(uri) / "generator.safetensors"
    w.write_bytes(w.read_bytes()[:500])
    with pytest.raises(PackageError, match="does not match model.json|not a readable safetensors"):
        load_package(uri)


def test_wrong_architecture(tmp_path):
    uri = make_package(tmp_path / "m")
    meta_path = Path(uri) / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["model"]["g_width"] = 16
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(PackageError, match="weights do not fit the architecture"):
        load_package(uri).build_model()


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_pickle_payload_never_executes(tmp_path, how):
    uri = make_package(tmp_path / "m")
    marker = tmp_path / "PWNED"
    w = Path(uri) / "generator.safetensors"
    if how == "pickle":
        w.write_bytes(pickle.dumps(Payload(str(marker))))
    else:
        torch.save({"weight": Payload(str(marker))}, w)
    meta_path = Path(uri) / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["model_sha256"] = hashlib.sha256(w.read_bytes()).hexdigest()  # so the loader gets as far as parsing it
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(PackageError, match="not a readable safetensors file"):
        load_package(uri)
    r = CliRunner().invoke(app, ["verify", uri])
    assert r.exit_code == 1  # the tampered package no longer matches its manifest
    assert not marker.exists()


def test_unpublished_or_missing_package(tmp_path):
    uri = make_package(tmp_path / "m")
    (Path(uri) / "_SUCCESS").unlink()
    with pytest.raises(PackageError, match="no published model package"):
        load_package(uri)
    with pytest.raises(PackageError, match="no published model package"):
        load_package(str(tmp_path / "nope"))
