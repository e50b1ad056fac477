"""Checkpoints that survive a bad write and never run code from a file.

- Atomic: written to a temporary file, fsync'ed, then renamed; a crash or kill at any moment leaves whole files.
- Two generations: the file being replaced is kept as `<name>.prev.pt`. A node crash, a full disk or a bit flip
  that spoils the newest one costs one epoch, not the cell (`load` falls back with one line that says so).
- Verified: the file holds a SHA-256 of its payload; a truncated or altered file is detected, not half-read.
- Safe: every read is `torch.load(weights_only=True)`. A checkpoint holds tensors and plain Python values only
  (numpy arrays and scalars, e.g. numpy's RNG state, are converted on save and back on load), so a crafted pickle
  (a `__reduce__` payload) is refused before anything of it runs. Checkpoints come from MLflow servers shared by a
  whole lab: a file must never be able to run code.
"""
from __future__ import annotations

import hashlib
import io
import os
import sys
from pathlib import Path

import numpy as np
import torch

from fcn.errors import UserError

MAGIC = "fcn-checkpoint"
VERSION = 1


class CheckpointError(UserError):
    """A file that is not a usable checkpoint: missing parts, truncated, altered, or not ours."""


def previous(path: str | Path) -> Path:
    """The older generation kept beside `path`: ckpt/last.pt → ckpt/last.prev.pt."""
    path = Path(path)
    return path.with_name(path.stem + ".prev" + path.suffix)


# --- plain values only: what weights_only=True can read --------------------------------------------------------

def _plain(obj):
    """`obj` with numpy values turned into tensors / Python numbers (the types a weights_only load accepts)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.array(obj, dtype=np.int64 if obj.dtype == np.uint32 else obj.dtype))
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def encode_rng(s: dict) -> dict:
    """An RNG state dict (torch / numpy / python / cuda ...) as plain values. numpy's MT19937 keys (uint32) become
    an int64 tensor; everything else is already tensors, ints, floats, strings and tuples."""
    return _plain(s)


def decode_rng(s: dict) -> dict:
    """The inverse of `encode_rng` for what needs it: numpy's state tuple takes a uint32 array back."""
    s = dict(s)
    n = s.get("numpy")
    if isinstance(n, (list, tuple)) and len(n) >= 2 and isinstance(n[1], torch.Tensor):
        s["numpy"] = (n[0], n[1].numpy().astype(np.uint32), *n[2:])
    p = s.get("python")
    if isinstance(p, list):  # random.setstate wants tuples
        s["python"] = tuple(tuple(x) if isinstance(x, list) else x for x in p)
    return s


def _encode(state: dict) -> dict:
    state = dict(state)
    if isinstance(state.get("rng"), (list, tuple)):
        state["rng"] = [encode_rng(r) for r in state["rng"]]
    return _plain(state)


def _decode(state: dict) -> dict:
    if isinstance(state.get("rng"), (list, tuple)):
        state["rng"] = [decode_rng(r) for r in state["rng"]]
    return state


# --- write --------------------------------------------------------------------------------------------------------

def save(state: dict, path: str | Path) -> None:
    """Write `state` atomically, keeping the file it replaces as the previous generation.

    A failed write (e.g. ENOSPC) removes its temporary file and raises one line; the checkpoints already on disk are
    untouched, so rerunning the command resumes from them.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(_encode(state), buf)
    payload = buf.getbuffer()
    wrapped = {"format": MAGIC, "version": VERSION, "sha256": hashlib.sha256(payload).hexdigest(),
               "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8)}
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(wrapped, f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as e:  # torch wraps a failed write of its zip writer in a RuntimeError
        tmp.unlink(missing_ok=True)
        reason = os.strerror(e.errno) if isinstance(e, OSError) and e.errno else str(e).splitlines()[0][:200]
        raise UserError(f"cannot write checkpoint {path} ({reason}); the previous checkpoint is intact: free the "
                        f"space (or fix the folder) and rerun the same command to resume") from None
    if path.exists():
        os.replace(path, previous(path))  # a crash right here leaves .prev and .tmp: load falls back to .prev
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- read ---------------------------------------------------------------------------------------------------------

def _torch_load(src, name: str):
    import pickle

    try:
        return torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        hint = next((ln.strip() for ln in first if "global" in ln.lower()), "")
        if not hint:  # not a pickle of objects at all: garbage, text, another format
            raise CheckpointError(f"{name} is not a readable checkpoint (not a torch file)") from None
        raise CheckpointError(f"{name} holds Python objects other than tensors and plain values ({hint[:160]}); "
                              f"refused without running any of it: loading it could run code") from None
    except (RuntimeError, EOFError, ValueError, OSError, IndexError, KeyError, AttributeError) as e:
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        msg = msg.split(". This is an internal")[0].replace("PytorchStreamReader failed reading zip archive: ", "")
        raise CheckpointError(f"{name} is not a readable checkpoint (truncated or not a torch file: {msg[:120]})") \
            from None


def read(path: str | Path, required: tuple[str, ...] = ()) -> dict:
    """One checkpoint file, verified; CheckpointError (one line) if it is not a whole fcn checkpoint."""
    path = Path(path)
    outer = _torch_load(path, str(path))
    if isinstance(outer, dict) and outer.get("format") == MAGIC:
        payload = outer.get("payload")
        if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8:
            raise CheckpointError(f"{path} is damaged (no payload)")
        data = payload.numpy().tobytes()
        if hashlib.sha256(data).hexdigest() != outer.get("sha256"):
            raise CheckpointError(f"{path} is damaged (its checksum does not match its contents)")
        state = _torch_load(io.BytesIO(data), str(path))
    elif isinstance(outer, dict) and "model" in outer:
        state = outer  # an older, unwrapped checkpoint: readable only if it holds plain values (weights_only)
    else:
        raise CheckpointError(f"{path} is not a checkpoint of fcn.train")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a checkpoint of fcn.train")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a checkpoint of the expected kind (no {', '.join(missing)})")
    return _decode(state)


def load(path: str | Path, required: tuple[str, ...] = ("model",), warn=None) -> dict | None:
    """The newest usable generation of `path`, or None when there is none.

    Falls back to `<name>.prev.pt` with one line on stderr when the newest is missing or damaged; when checkpoints
    exist but none is usable, says so (the caller starts the cell again from scratch).
    """
    warn = warn or (lambda msg: print(msg, file=sys.stderr, flush=True))
    path = Path(path)
    problems = []
    for i, p in enumerate((path, previous(path))):
        if not p.exists():
            continue
        try:
            state = read(p, required)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        if i == 1:
            why = problems[0] if problems else f"{path.name} is missing"
            warn(f"warning: {why}; using the previous checkpoint {p.name} instead")
        return state
    if problems:
        warn(f"warning: no usable checkpoint at {path} ({'; '.join(problems)}); starting from scratch")
    return None
