"""Small helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import torch

from pipeline.models import build_generator
from pipeline.package import export_package
from pipeline.specs import ModelSpec


S3_KEY, S3_SECRET = "testing-key-id", "testing-secret-key-do-not-leak"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_package(path: Path, *, width: int = 8, conditional: bool = True) -> str:
    """An untrained but non-trivial model package (speed and bytes tests need no training)."""
    cfg = ModelSpec(image_size=32, channels=1, z_dim=16, g_width=width, d_width=8, conditional=conditional)
    torch.manual_seed(1)
    g = build_generator(cfg)
    for m in g.modules():  # non-trivial BN statistics, so images are not flat
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.2, 0.5)
    export_package(str(path), g, cfg, {"note": "test package, untrained"})
    return str(path)
