"""Small helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import select
import socket
import threading
from pathlib import Path

import torch

from pipeline.families.dcgan.model import Generator
from pipeline.localcluster import free_port  # noqa: F401 - the tests' free port
from pipeline.package import export_package
from pipeline.specs import ModelSpec
from pipeline.storage import Store

S3_KEY, S3_SECRET = "testing-key-id", "testing-secret-key-do-not-leak"


def require_system(path: str, package: str) -> None:
    """A test that needs a Debian package: skipped with the reason on a user's machine, failed under
    CI=true (where .ci/run installs it), so CI always runs it."""
    import os

    import pytest

    if os.path.exists(path):
        return
    why = f"needs Debian's {package} ({path}); apt-get install {package}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{why}: CI must run this test (.ci/run installs it)")
    pytest.skip(why)


def files_of(out: str, storage=None) -> dict[str, str]:
    """Every file the manifest lists (via shard indexes) → sha256."""
    store = Store(out, storage)
    manifest = store.read_json("manifest.json")
    files = {k: v["sha256"] for k, v in manifest["files"].items()}
    for rec in manifest["shards"].values():
        files.update({k: v["sha256"] for k, v in store.read_json(rec["index"])["files"].items()})
    return files


def make_package(path: Path, *, width: int = 8, conditional: bool = True) -> str:
    """An untrained but non-trivial model package (speed and bytes tests need no training)."""
    cfg = ModelSpec(image_size=32, channels=1, z_dim=16, g_width=width, d_width=8, conditional=conditional)
    torch.manual_seed(1)
    g = Generator(cfg)
    for m in g.modules():  # non-trivial BN statistics, so images are not flat
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.2, 0.5)
    export_package(str(path), g, cfg, {"note": "test package, untrained"})
    return str(path)


class CutProxy:
    """A TCP proxy on 127.0.0.1 in front of the moto server whose link can be cut and restored.

    Cutting it looks to the client exactly like a server that died (connections reset, then refused),
    while moto keeps its state, so the test can look at what a crash mid-write left behind.
    """

    def __init__(self, target_port: int):
        self.target = target_port
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None

    def start(self) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(64)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 1.0)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        raise OSError("closed")
                    (b if s is a else a).sendall(data)
        except (OSError, ValueError):
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass

    def cut(self) -> None:
        if self.listener:
            self.listener.close()
            self.listener = None
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass


def require_watermark() -> None:
    """invisible-watermark imports OpenCV, which needs libGL.so.1 (Debian's libgl1): skipped with the reason
    on a machine without it, failed under CI=true (where .ci/run installs it)."""
    import os

    import pytest

    try:
        import imwatermark  # noqa: F401
    except ImportError as exc:
        why = f"needs invisible-watermark with OpenCV's libGL.so.1 (apt-get install libgl1): {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{why}: CI must run this test (.ci/run installs it)")
        pytest.skip(why)
