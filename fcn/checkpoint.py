"""Atomic checkpoints: a crash or kill at any moment leaves either the old file or the new one, never half of one."""
from __future__ import annotations

import os
from pathlib import Path

import torch


def save(state: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: str | Path) -> dict | None:
    path = Path(path)
    if not path.exists():
        return None
    # Our own files: they hold numpy RNG state and the config dict besides tensors.
    return torch.load(path, map_location="cpu", weights_only=False)
