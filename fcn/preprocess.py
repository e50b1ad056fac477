"""Audio → feature store, in parallel over all cores, resumable, with a progress bar and a report.

    python -m fcn.preprocess                                   # the built-in synthetic MTAT set (demo scale)
    python -m fcn.preprocess --dataset mtat --data-root /data/mtat --split clean --preset paper --workers 16
    python -m fcn.preprocess --dataset msd --data-root /data/msd --preset paper

Every input type (mel, STFT, MFCC) is computed in one pass over the audio. Work is cut into shards of clips; each
finished shard is written atomically under `<store>.parts/`, so a rerun after a kill does only the missing shards and
ends with the identical store. The store itself is assembled into a temporary file and renamed on success.
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fcn.errors import UserError, run_cli
from fcn.frontends import INPUTS, FrontEndParams

SHARD_SIZE = 32  # clips per shard: small enough that a kill loses little, large enough to batch the front ends


@dataclass
class Report:
    written: int = 0
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (clip_id, path, reason)
    warnings: list[tuple[str, str, str]] = field(default_factory=list)  # kept, but worth knowing
    reader_problems: list[str] = field(default_factory=list)  # from the data set's index files
    seconds: float = 0.0

    def text(self) -> str:
        lines = [f"clips written: {self.written}", f"clips skipped: {len(self.skipped)}",
                 f"warnings: {len(self.warnings)}", f"index problems: {len(self.reader_problems)}",
                 f"time: {self.seconds:.1f} s"]
        lines += [f"skipped {cid} ({path}): {why}" for cid, path, why in self.skipped]
        lines += [f"warning {cid} ({path}): {why}" for cid, path, why in self.warnings]
        lines += [f"index: {p}" for p in self.reader_problems]
        return "\n".join(lines)


# ---------------------------------------------------------------- one shard (runs in a worker process)

def _process_shard(args) -> tuple[int, str]:
    shard_items, params, inputs, dest = args
    import torch

    from fcn.audio import AudioError, fix_length, load
    from fcn.frontends import compute

    torch.set_num_threads(1)  # one process per core; threads inside would only fight each other
    waves, status = [], []
    for cid, path in shard_items:
        try:
            x = load(path, sr=params.sample_rate)
        except AudioError as e:
            status.append(("skip", str(e)))
            continue
        except Exception as e:  # a decoder crash on one file must not cost the others
            status.append(("skip", f"could not decode {path}: {type(e).__name__}: {e}"))
            continue
        note = []
        if not np.any(x):
            note.append("silent")
        if len(x) < params.n_samples // 2:
            note.append(f"short: {len(x) / params.sample_rate:.2f} s zero-padded to {params.seconds:.2f} s")
        waves.append(fix_length(x, params.n_samples))
        status.append(("ok", "; ".join(note)))
    feats = {}
    if waves:
        out = compute(torch.from_numpy(np.stack(waves)), tuple(inputs), params)
        feats = {k: v.numpy().astype(np.float16) for k, v in out.items()}
    tmp = Path(str(dest) + ".tmp.npz")
    np.savez(tmp, status=np.array(json.dumps(status)), **feats)
    os.replace(tmp, dest)
    return len(shard_items), str(dest)


# ---------------------------------------------------------------- the whole build

def _manifest(items, params: FrontEndParams, inputs) -> str:
    h = hashlib.sha256()
    h.update(params.to_json().encode())
    h.update(json.dumps(list(inputs)).encode())
    for it in items:
        h.update(f"{it.clip_id}\t{it.path}\t{it.split}\t{''.join(map(str, it.labels))}\n".encode())
    return h.hexdigest()


def build(items, tags, *, dataset: str, out: str | Path, params: FrontEndParams = FrontEndParams(),
          inputs=INPUTS, workers: int = 0, progress: bool = True, reader_problems=()) -> Report:
    """Build the store at `out` from data set items (fcn.data.Item); returns the report (also saved beside it)."""
    from tqdm import tqdm

    from fcn.store import write_store

    t0 = time.time()
    out = Path(out)
    report = Report(reader_problems=list(reader_problems))
    seen, unique = set(), []
    for it in items:
        if it.clip_id in seen:
            report.skipped.append((it.clip_id, it.path, "duplicate clip id (the first one was kept)"))
            continue
        seen.add(it.clip_id)
        unique.append(it)
    if not unique:
        raise UserError(f"no clips to preprocess for {out}: check the data root and split lists")
    parts = out.with_name(out.name + ".parts")
    manifest = _manifest(unique, params, inputs)
    old = (parts / "manifest").read_text() if (parts / "manifest").exists() else ""
    if parts.exists() and old != manifest:
        shutil.rmtree(parts)  # left by a build of other clips or parameters: not ours to resume
    parts.mkdir(parents=True, exist_ok=True)
    (parts / "manifest").write_text(manifest)

    shards = [unique[i:i + SHARD_SIZE] for i in range(0, len(unique), SHARD_SIZE)]
    dests = [parts / f"shard-{i:06d}.npz" for i in range(len(shards))]
    todo = [((tuple((it.clip_id, it.path) for it in s)), params, tuple(inputs), d)
            for s, d in zip(shards, dests) if not d.exists()]
    workers = workers or os.cpu_count() or 1
    done = len(unique) - sum(len(t[0]) for t in todo)
    bar = tqdm(total=len(unique), initial=done, unit="clip", desc=f"preprocess {out.name}", disable=not progress,
               file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
    if workers == 1 or len(todo) <= 1:
        for t in todo:
            bar.update(_process_shard(t)[0])
    else:
        import multiprocessing as mp

        # spawn, not fork: torch's OpenMP pool does not survive fork, and a hung worker would stall the whole build
        with mp.get_context("spawn").Pool(min(workers, len(todo))) as pool:
            for n, _ in pool.imap_unordered(_process_shard, todo):
                bar.update(n)
    bar.close()

    keep = []
    for si, (s, d) in enumerate(zip(shards, dests)):
        with np.load(d) as z:
            status = json.loads(str(z["status"]))
        for it, (state, msg) in zip(s, status):
            if state == "ok":
                keep.append(it)
                if msg:
                    report.warnings.append((it.clip_id, it.path, msg))
            else:
                report.skipped.append((it.clip_id, it.path, msg))
    if not keep:
        raise UserError(f"none of the {len(unique)} clips could be decoded; see the first reason: "
                        f"{report.skipped[0][2]}")

    def chunks():
        for d in dests:
            with np.load(d) as z:
                if inputs[0] in z.files:
                    yield {k: z[k] for k in inputs}

    write_store(out, dataset=dataset, tags=tags, params=params, inputs=list(inputs),
                clip_ids=[it.clip_id for it in keep], paths=[it.path for it in keep],
                splits=[it.split for it in keep], labels=np.stack([it.labels for it in keep]),
                feature_chunks=chunks())
    shutil.rmtree(parts, ignore_errors=True)
    report.written = len(keep)
    report.seconds = time.time() - t0
    out.with_name(out.name + ".report.txt").write_text(report.text() + "\n")
    return report


# ---------------------------------------------------------------- which store a run uses, built on first use

def store_path(config) -> Path:
    """Where the store of `config` lives: its --store, or a name derived from data set, source, split and length."""
    if config.store:
        return Path(config.store)
    if config.data_root:
        source = "d" + hashlib.sha256(str(Path(config.data_root).resolve()).encode()).hexdigest()[:8]
    else:
        source = f"synth{config.synth_clips}"
    split = config.split if config.dataset == "mtat" else "choi"
    return Path(config.data_dir) / f"{config.dataset}-{source}-{split}-{config.clip_seconds:g}s.h5"


def read_items(config):
    """(tags, items, problems) of the run's data set; the built-in synthetic set is generated on first use."""
    root = Path(config.data_root) if config.data_root else synth_root(config)
    if not root.exists():
        raise UserError(f"data root {root} does not exist: pass --data-root of your {config.dataset.upper()} copy")
    if config.dataset == "mtat":
        from fcn.data import mtat

        return mtat.read(root, split=config.split, splits_dir=config.splits_dir or None)
    from fcn.data import msd

    return msd.read(root, splits_dir=config.splits_dir or None)


def synth_root(config) -> Path:
    root = Path(config.data_dir) / f"synth-{config.dataset}-{config.synth_clips}-{config.clip_seconds:g}s"
    if not (root / ".complete").exists():
        from fcn.data import synth

        with _lock(root.with_name(root.name + ".lock")):
            if not (root / ".complete").exists():
                maker = synth.make_mtat if config.dataset == "mtat" else synth.make_msd
                print(f"generating the built-in synthetic {config.dataset.upper()} set in {root}", file=sys.stderr)
                maker(root, config.synth_clips, seconds=config.clip_seconds, seed=0, workers=os.cpu_count() or 1)
                (root / ".complete").touch()
    return root


@contextmanager
def _lock(path: Path):
    """An exclusive file lock, so that concurrent jobs of a sweep build a shared store or data set once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_store(config, *, workers: int = 0, progress: bool = True) -> Path:
    """The run's store, built (once, under a lock) if it does not exist yet."""
    path = store_path(config)
    if path.exists() or config.store:
        return path  # an explicit --store is never built implicitly: a wrong path must be an error, not a build
    with _lock(path.with_name(path.name + ".lock")):
        if not path.exists():
            tags, items, problems = read_items(config)
            report = build(items, tags, dataset=config.dataset, out=path, params=config.frontend,
                           workers=workers, progress=progress, reader_problems=problems)
            print(f"feature store {path}: {report.written} clips written, {len(report.skipped)} skipped "
                  f"(report: {path}.report.txt)", file=sys.stderr)
    return path


def main(argv=None) -> None:
    from fcn.config import add_config_arguments, config_from_args

    ap = argparse.ArgumentParser(
        prog="python -m fcn.preprocess", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=0, help="processes (default: all cores)")
    ap.add_argument("--out", default="", help="store path (default: the path fcn.train derives for these flags)")
    add_config_arguments(ap)
    args = ap.parse_args(argv)
    config = config_from_args(args)
    out = Path(args.out) if args.out else store_path(config)
    tags, items, problems = read_items(config)
    report = build(items, tags, dataset=config.dataset, out=out, params=config.frontend, workers=args.workers,
                   reader_problems=problems)
    print(report.text() if len(report.skipped) + len(report.warnings) < 50 else report.text()[:4000])
    print(f"store: {out}\nreport: {out}.report.txt")


if __name__ == "__main__":
    run_cli(main)
