"""Which feature store a run uses, and the data set it is built from.

`store_path` derives a store's name from the config (data set, source, split, clip length, mel variant); `read_items`
reads the run's data set (generating the built-in synthetic one on first use, `synth_root`); `is_current` tells a
usable store from a missing, damaged or older-format one, and `wait_for_store` waits for the rank that builds it.
Building one on first use is fcn.preprocess's (`ensure_feature_store`).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shlex
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from fcn import locks, melspecs
from fcn.data import jamendo, msd, mtat, synth, synth_jamendo
from fcn.errors import UserError
from fcn.store import FORMAT_VERSION, read_meta


def store_path(config) -> Path:
    """Where the store of `config` lives: its --store, or a name derived from data set, source, split and length."""
    if config.store:
        return Path(config.store)
    if config.data_root:
        # the MSD's own db / audio / id map, when named, make another data set from the same root
        named = [k for k in ("tags_db", "audio_root", "id_map") if getattr(config, k)]
        where = [str(Path(config.data_root).resolve())] + [f"{k}={Path(getattr(config, k)).resolve()}" for k in named]
        source = "d" + hashlib.sha256("\n".join(where).encode()).hexdigest()[:8]
    else:
        source = f"synth{config.synth_clips}"
    split = config.split if config.dataset == "mtat" else "choi"
    if config.dataset == "jamendo":  # which download, and which lists (split-0 unless --splits-dir names others)
        lists = "split0" if not config.splits_dir else "s" + hashlib.sha256(config.splits_dir.encode()).hexdigest()[:8]
        split = f"{lists}-{config.jamendo_type}"
    # the mel variant in the name: stores of both variants live side by side; so do the MFCC's Δ/ΔΔ when they are not
    # today's librosa (the paper preset's 2016 ones), leaving every earlier store's name as it was
    deltas = "" if config.deltas == "librosa" else f"-deltas-{config.deltas}"
    name = f"{config.dataset}-{source}-{split}-{config.clip_seconds:g}s-{config.frontend_variant}{deltas}.h5"
    return Path(config.data_dir) / name


def build_command(config) -> str:
    """The command that builds `config`'s store on its own (a CPU job's command line): every flag that decides it."""
    args = ["python", "-m", "fcn.preprocess", "--dataset", config.dataset]
    for name in ("data_root", "splits_dir", "tags_db", "audio_root", "id_map"):
        if getattr(config, name):
            args += ["--" + name.replace("_", "-"), str(Path(getattr(config, name)).resolve())]
    if config.dataset == "mtat":
        args += ["--split", config.split]
    if not config.data_root:
        args += ["--synth-clips", str(config.synth_clips)]
    args += ["--clip-seconds", f"{config.clip_seconds:g}", "--frontend-variant", config.frontend_variant]
    args += ["--data-dir", str(Path(config.data_dir).resolve())]
    return shlex.join(args)


def may_build_here(config, env: dict | None = None) -> bool:
    """Whether a missing store may be built by this process (config.build_store): `auto` builds, except in a Slurm
    job on real data, where a build is hours of CPU decoding on a GPU allocation while the other ranks wait."""
    env = os.environ if env is None else env
    if config.build_store != "auto":
        return config.build_store == "here"
    return not (config.data_root and env.get("SLURM_JOB_ID"))


def check_buildable(config, env: dict | None = None) -> None:
    """Stop with one line naming the build command when the run's store is missing and may not be built here."""
    path = store_path(config)
    if config.store or is_current(path) or may_build_here(config, env):
        return
    where = "in a Slurm job on real data" if config.build_store == "auto" else "with --build-store never"
    raise UserError(
        f"feature store {path} does not exist and is not built {where}: build it first as a CPU job "
        f"(`{build_command(config)}`, or `python -m harness.grid --cluster slurm` does it), or pass "
        "--build-store here to build it in this job"
    )


def read_items(config):
    """(tags, items, problems) of the run's data set; the built-in synthetic set is generated on first use."""
    root = Path(config.data_root) if config.data_root else synth_root(config)
    if not root.exists():
        raise UserError(f"data root {root} does not exist: pass --data-root of your {config.dataset.upper()} copy")
    if config.dataset == "mtat":
        return mtat.read(root, split=config.split, splits_dir=config.splits_dir or None)
    if config.dataset == "jamendo":
        return jamendo.read(root, splits_dir=config.splits_dir or None, kind=config.jamendo_type)

    splits_dir = Path(config.splits_dir) if config.splits_dir else msd.default_splits_dir(root)
    tags_db = Path(config.tags_db) if config.tags_db else root / msd.TAGS_DB
    tags, items, problems = msd.read(
        root,
        splits_dir=splits_dir,
        audio_root=config.audio_root or None,
        id_map_csv=config.id_map or None,
        tags_db=tags_db,
    )
    if tags_db.is_file():  # labels rebuilt from the db: compare them with Choi's own y files where present
        checks = msd.check_labels_against(items, tags, splits_dir)
        line, mismatches = msd.label_check_report(checks, splits_dir)
        print(line, file=sys.stderr)
        problems = [*problems, *mismatches]
    return tags, items, problems


def build_source(config, decoder: str | None = None) -> dict:
    """build()'s `decoder` and `inputs` for the run's data: a store from MTG-Jamendo's own mel-spectrograms reads
    NPYs, not audio, and holds the mel input only (fcn/melspecs.py); any other store decodes audio with `decoder`."""
    if config.dataset == "jamendo" and config.jamendo_type == "melspecs":
        melspecs.check_params(config.frontend)
        return dict(decoder=melspecs.NPY_DECODER, inputs=melspecs.INPUTS)
    return {} if decoder is None else dict(decoder=decoder)


def synth_root(config) -> Path:
    root = Path(config.data_dir) / f"synth-{config.dataset}-{config.synth_clips}-{config.clip_seconds:g}s"
    if not (root / ".complete").exists():
        with lock(root.with_name(root.name + ".lock")):
            if not (root / ".complete").exists():
                maker = {"mtat": synth.make_mtat, "msd": synth.make_msd, "jamendo": synth_jamendo.make_jamendo}[
                    config.dataset
                ]
                print(f"generating the built-in synthetic {config.dataset.upper()} set in {root}", file=sys.stderr)
                maker(root, config.synth_clips, seconds=config.clip_seconds, seed=0, workers=os.cpu_count() or 1)
                (root / ".complete").touch()
    return root


@contextmanager
def lock(path: Path):
    """An exclusive file lock, so that concurrent jobs of a sweep build a shared store or data set once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(locks.lock_path(path), "w") as f:
        locks.lock(f, path)  # where flock cannot lock across nodes: one line, not two nodes building one store
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def is_current(path: Path) -> bool:
    """Whether `path` is a store of this fcn's format (False when absent, older or unreadable)."""
    if not path.exists():
        return False
    try:
        return read_meta(path)["format_version"] == FORMAT_VERSION
    except UserError:
        return False


def why_stale(path: Path) -> str:
    """Why an existing store is rebuilt: damaged (a killed write, a full disk) or of an older format."""
    try:
        return f"is of an older format ({read_meta(path)['format_version']})"
    except UserError:
        return "is damaged or truncated (it cannot be read as a feature store)"


def wait_for_store(path: Path, wait_s: float) -> Path:
    """`path` once another process (DDP rank 0) has built it; one line after `wait_s` seconds without it."""
    deadline = time.monotonic() + wait_s
    while not is_current(path):
        if time.monotonic() > deadline:
            raise UserError(
                f"waited {wait_s:.0f} s for rank 0 to build the feature store {path}, and it is not "
                f"there: build it first with `python -m fcn.preprocess` (same flags), or set "
                f"FCN_STORE_WAIT_S longer"
            )
        time.sleep(min(5.0, max(0.1, wait_s / 20)))
    return path
