"""Checkpoints that survive a bad write and never run code from a file.

- Atomic: written to a temporary file, fsync'ed, then renamed; a crash or kill at any moment leaves whole files.
- Two generations: the file being replaced is kept as `<name>.prev.pt`. A node crash, a full disk or a bit flip
  that spoils the newest one costs one epoch, not the cell (`load` falls back with one line that says so).
- Verified: the file holds a SHA-256 of its payload; a truncated or altered file is detected, not half-read.
- Safe: every read is `torch.load(weights_only=True)`. A checkpoint holds tensors and plain Python values only
  (numpy arrays and scalars, e.g. numpy's RNG state, are converted on save and back on load), so a crafted pickle
  (a `__reduce__` payload) is refused before anything of it runs. Checkpoints come from MLflow servers shared by a
  whole lab: a file must never be able to run code.
- One schema: what ckpt/last.pt (`Last`: everything a resume needs) and ckpt/best.pt (`Best`: the model that is tested
  and shipped, with what fcn.predict needs to use it) hold is written down here, built here (`last`, `best`) and read
  here (`load_last`, `load_best`, `read_best`); training only fills it. `CHECKPOINT_VERSION` is stamped on every file.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import random
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import NotRequired, TypedDict

import numpy as np
import torch

from fcn.config import RunConfig
from fcn.errors import UserError

MAGIC = "fcn-checkpoint"
# The version of the schema below, stamped on every file (in the wrapper, beside the checksum). Raise it when a key
# changes meaning; `read` refuses a file of a newer version with one line. 1: the keys of Last and Best below. Files
# with no version (older, unwrapped ones) hold the same keys and load as version 1.
CHECKPOINT_VERSION = 1


# --- the schema -------------------------------------------------------------------------------------------------------


@dataclass
class Progress:
    """Where a run stands after its last whole epoch: saved in last.pt, so a resume continues the same run."""

    epoch: int = 0  # epochs done
    best: float = -1.0  # best validation ROC-AUC so far; -1 until an epoch has one (a NaN never beats it)
    best_epoch: int = -1
    bad: int = 0  # epochs since the best: early stopping's patience counter
    train_time: float = 0.0  # seconds of training and validation, summed over every launch
    history: list = field(default_factory=list)  # one row per epoch: losses, validation ROC/PR-AUC, epoch time
    global_batch: int = 0  # clips per step over all processes, fixed when the run starts and kept on resume
    world: int = 1  # processes of the launch that wrote it

    @classmethod
    def from_dict(cls, saved: dict, defaults: Progress) -> Progress:
        """A checkpoint's progress; a key an older checkpoint lacks keeps its value in `defaults`."""
        known = {f.name for f in fields(cls)}
        return cls(**{**asdict(defaults), **{k: v for k, v in saved.items() if k in known}})


class Last(TypedDict):
    """ckpt/last.pt, written after every epoch: everything a resume needs."""

    model: dict  # the bare model's state_dict (never DDP's)
    optimizer: dict  # Adam's state_dict
    rng: list  # one RNG state per rank (`rng_state`), gathered by rank 0
    progress: dict  # Progress as a dict
    config: dict  # RunConfig.to_dict(): a resume checks it against its own (`config_changes`)
    run_id: str | None  # the cell's MLflow run, continued by the resume


class Best(TypedDict):
    """ckpt/best.pt, written when validation ROC-AUC improves: the model that is tested, logged and tagged with."""

    model: dict
    config: dict
    epoch: int
    tags: list  # the store's tag names, in the order of the model's outputs
    frontend: dict  # FrontEndParams.to_dict() of the store the model was trained on
    norm: tuple  # (mean, std) of the training split: the input standardisation
    valid_roc_auc: float
    run_id: str | None
    fallback: NotRequired[str]  # "last epoch" when no epoch had a validation ROC-AUC (fcn/train.py says why)


LAST_KEYS = ("model", "optimizer", "progress", "config", "rng")  # run_id is absent from the oldest files
BEST_KEYS = ("model", "config", "tags", "frontend", "norm")  # what fcn.predict needs


def last(model, opt, rngs: list, progress: Progress, config, run_id: str | None) -> Last:
    return Last(
        model=model.state_dict(),
        optimizer=opt.state_dict(),
        rng=rngs,
        progress=asdict(progress),
        config=config.to_dict(),
        run_id=run_id,
    )


def best(
    model, config, *, epoch: int, meta: dict, norm: tuple, valid_roc_auc: float, run_id: str | None, fallback: str = ""
) -> Best:
    """`meta`: the feature store's (fcn.store.check_store): its tags and front end."""
    b = Best(
        model=model.state_dict(),
        config=config.to_dict(),
        epoch=epoch,
        tags=meta["tags"],
        frontend=meta["frontend"].to_dict(),
        norm=norm,
        valid_roc_auc=valid_roc_auc,
        run_id=run_id,
    )
    if fallback:
        b["fallback"] = fallback
    return b


def load_last(path: str | Path, warn=None) -> Last | None:
    return load(path, LAST_KEYS, warn)


def load_best(path: str | Path, warn=None) -> Best | None:
    return load(path, BEST_KEYS, warn)


def read_best(path: str | Path) -> Best:
    """One best.pt, verified, with what fcn.predict needs (no fallback to the previous generation: a path names a
    file)."""
    return read(path, BEST_KEYS)


def config_changes(saved: dict, config) -> list[str]:
    """How `config` differs from the config a checkpoint was made with, in the fields a resume may not change (those
    not marked `resume=True` in RunConfig's field metadata); a field added since counts as its default."""
    out = []
    for f in fields(RunConfig):
        if f.metadata.get("resume"):
            continue
        was, now = saved.get(f.name, f.default), getattr(config, f.name)
        if was != now:
            out.append(f"{f.name}={was!r}→{now!r}")
    return out


# --- RNG states -------------------------------------------------------------------------------------------------------


def rng_state(device: torch.device) -> dict:
    """This rank's RNG states. CUDA: only its own device's generator (one per rank, gathered by rank 0), so a
    checkpoint resumes with any number of visible GPUs; all devices' states would not fit a machine with fewer."""
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def set_rng_state(s: dict, device: torch.device) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    cuda = s.get("cuda")
    if cuda is None or device.type != "cuda":
        return
    if isinstance(cuda, (list, tuple)):  # an older checkpoint: every device's state; take this rank's, if there
        cuda = cuda[device.index] if device.index < len(cuda) else None
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


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
    wrapped = {
        "format": MAGIC,
        "version": CHECKPOINT_VERSION,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8),
    }
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(wrapped, f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as e:  # torch wraps a failed write of its zip writer in a RuntimeError
        tmp.unlink(missing_ok=True)
        reason = os.strerror(e.errno) if isinstance(e, OSError) and e.errno else str(e).splitlines()[0][:200]
        raise UserError(
            f"cannot write checkpoint {path} ({reason}); the previous checkpoint is intact: free the "
            f"space (or fix the folder) and rerun the same command to resume"
        ) from None
    if path.exists():
        os.replace(path, previous(path))  # a crash right here leaves .prev and .tmp: load falls back to .prev
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def snapshot(obj):
    """A copy of a checkpoint's state that training can no longer change: every tensor copied to the CPU now (the
    model's and optimiser's state_dict hold the live tensors the next step updates in place), containers rebuilt."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return type(obj)((k, snapshot(v)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return type(obj)(snapshot(v) for v in obj)
    return obj


class Writer:
    """Rank 0's checkpoint files written on a background thread while training goes on.

    Measured (issue 24, docs/MEASURED.md): FCN-4 at paper width, last.pt (208 MB: model + Adam state) and best.pt
    (70 MB) took 2.4-4.4 s to serialise, hash, write and fsync here (local disk; a shared filesystem is slower),
    while every rank waited at the epoch's barrier. A paper-scale MSD epoch is 201,680 clips: at 7,413 clips/s per
    H100 (FCN-4 at 45 % MFU, bench/loading.py) 27 s on one GPU, 6.8 s on a 4-GPU node, so the write cost 9-65 % of
    an epoch; here it costs the
    snapshot (a copy to host memory: 0.2-0.4 s for last.pt on this busy CPU; a GPU's device-to-host copy of 208 MB at
    ~20 GB/s is ~10 ms) and the files land during the next epoch.

    At most one epoch's files are in flight: `submit` and `wait` first wait for the previous ones (and raise its
    error, e.g. a full disk's one line), so a crash loses at most the epoch being written, as a crash during that
    epoch's training would, and `then` (the epoch's log line and MLflow metrics) runs only once its files are whole:
    a resumed run never finds an epoch in MLflow or train.log that its checkpoint lacks.
    """

    def __init__(self, background: bool = True):
        self.background = background
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, files: list[tuple[dict, Path]], then: Callable[[], None] | None = None) -> None:
        self.wait()
        files = [(snapshot(state), path) for state, path in files]  # now: the next step changes the live tensors
        if not self.background:
            self._write(files, then)
            self.wait()
            return
        self._thread = threading.Thread(target=self._write, args=(files, then), name="checkpoint-writer")
        self._thread.start()

    def _write(self, files: list, then) -> None:
        try:
            for state, path in files:
                save(state, path)
            if then is not None:
                then()
        except BaseException as e:  # noqa: BLE001 - raised in the training thread by the next wait()
            self._error = e

    def wait(self) -> None:
        """Until the files in flight are whole on disk; their write's error, if any, is raised here."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            e, self._error = self._error, None
            raise e

    def close(self) -> None:
        """Wait for the files in flight, dropping their error: for an exit on another error, which is the one told."""
        try:
            self.wait()
        except BaseException:  # noqa: BLE001, S110 - the error already on its way out is the one to report
            pass


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
    try:
        return torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        hint = next((ln.strip() for ln in first if "global" in ln.lower()), "")
        if not hint:  # not a pickle of objects at all: garbage, text, another format
            raise CheckpointError(f"{name} is not a readable checkpoint (not a torch file)") from None
        raise CheckpointError(
            f"{name} holds Python objects other than tensors and plain values ({hint[:160]}); "
            f"refused without running any of it: loading it could run code"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, IndexError, KeyError, AttributeError) as e:
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        msg = msg.split(". This is an internal")[0].replace("PytorchStreamReader failed reading zip archive: ", "")
        raise CheckpointError(
            f"{name} is not a readable checkpoint (truncated or not a torch file: {msg[:120]})"
        ) from None


def read(path: str | Path, required: tuple[str, ...] = ()) -> dict:
    """One checkpoint file, verified; CheckpointError (one line) if it is not a whole fcn checkpoint."""
    path = Path(path)
    outer = _torch_load(path, str(path))
    if isinstance(outer, dict) and outer.get("format") == MAGIC:
        version = outer.get("version", 1)
        if not isinstance(version, int) or version > CHECKPOINT_VERSION:
            raise CheckpointError(
                f"{path} is a checkpoint of version {version!r}, newer than this fcn reads "
                f"({CHECKPOINT_VERSION}): update fcn-sweep to resume or use it"
            )
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
