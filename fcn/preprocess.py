"""Audio → feature store, in parallel over all cores, resumable, with a progress bar and a report.

    python -m fcn.preprocess                                   # the built-in synthetic MTAT set (demo scale)
    python -m fcn.preprocess --dataset mtat --data-root /data/mtat --preset paper --workers 16   # the folder split
    python -m fcn.preprocess --dataset msd --data-root /data/msd --preset paper
    python -m harness.preprocess --dataset msd --data-root /data/msd --preset paper --cluster slurm --partition cpu

Every input type (mel, STFT, MFCC) is computed in one pass over the audio. Work is cut into shards of clips; each
finished shard is written atomically under `<store>.parts/`, so a rerun after a kill does only the missing shards and
ends with the identical store. The store itself is assembled into a temporary file and renamed on success.
`python -m harness.preprocess --cluster slurm|ray` (harness/preprocess.py) is this build with its shards computed on a
cluster's nodes (a Slurm job array, Ray tasks: `build(runner=...)`), assembled here into the same store, byte for byte.

Bad input never costs good data: a file that cannot be decoded is skipped and named in the report; a decoder that
crashes or hangs on one file takes down only its worker process, which is replaced, and the file is skipped. What is
kept and what is skipped [D]:
- kept: any file that decodes to at least one frame: any rate, any channel count (downmixed), long (centre-cropped),
  short (zero-padded; warning when under 90 % of the clip length), silent (warning), and truncated files (the part
  that decodes is real audio, handled like a short clip: warned as "truncated" when it decodes to < 90 % of the length
  its Xing/Info header declares, else as "short" when it is).
- skipped: missing, empty (0 bytes), not audio, zero frames, NaN/inf samples, longer than MAX_SECONDS, a decoder that
  crashes or runs past --decode-timeout; the index's own problems (unknown paths, duplicate ids, MTAT's known broken
  clips) are dropped by the data set reader and listed as "index:" lines.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fcn.audio import DECODERS, DEFAULT_DECODER, AudioError, info, load
from fcn.config import add_config_arguments, config_from_args
from fcn.crop import MAX_TRACK_SECONDS, cut
from fcn.errors import UserError, run_cli
from fcn.frontends import INPUTS, FrontEndParams, compute
from fcn.melspecs import NPY_DECODER
from fcn.melspecs import process_shard as process_npy_shard
from fcn.pool import run_shards
from fcn.run_store import build_source, is_current, lock, read_items, store_path, wait_for_store, why_stale
from fcn.store import FORMAT_VERSION, StoreWriter, write_store

SHARD_SIZE = 32  # clips per shard: small enough that a kill loses little, large enough to batch the front ends
# A 29 s MP3 decodes in ~4 ms (docs/MEASURED.md): a decoder still busy with one file after this long is stuck, not slow.
DECODE_TIMEOUT = 120.0
# [D] No clip of either data set is anywhere near this (MTAT 29 s, MSD previews 30-60 s); a file this long is a
# whole track or album in the wrong place, and decoding it whole in 16 workers at once could exhaust memory.
MAX_SECONDS = 600.0
TRUNCATED = 0.9  # decoded / declared length under which a file is reported as truncated
# A clip padded with more than 10 % silence is worth a warning: every MTAT clip is ~29.1 s and every MSD preview
# longer than the 29.12 s crop, so a shorter one is most likely cut off. This is also how a truncated MP3 without a
# Xing/Info header (CBR, as MTAT's) shows up: its header declares no length, libsndfile estimates it from the size.
SHORT = 0.9


@dataclass
class Report:
    written: int = 0
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (clip_id, path, reason)
    warnings: list[tuple[str, str, str]] = field(default_factory=list)  # kept, but worth knowing
    reader_problems: list[str] = field(default_factory=list)  # from the data set's index files
    seconds: float = 0.0
    shards: int = 0  # shards of the build
    resumed_shards: int = 0  # of which were already done by an earlier, interrupted run
    notes: list[str] = field(default_factory=list)  # e.g. stale parts discarded

    def text(self, max_lines: int | None = None) -> str:
        """The report; `max_lines` caps the lines listed per kind (the saved file has them all)."""
        lines = [
            f"clips written: {self.written}",
            f"clips skipped: {len(self.skipped)}",
            f"warnings: {len(self.warnings)}",
            f"index problems: {len(self.reader_problems)}",
            f"shards: {self.shards} ({self.resumed_shards} reused from an interrupted run)",
            f"time: {self.seconds:.1f} s",
        ]
        lines += [f"note: {n}" for n in self.notes]
        groups = (
            ("skipped", [f"skipped {cid} ({path}): {why}" for cid, path, why in self.skipped]),
            ("warning", [f"warning {cid} ({path}): {why}" for cid, path, why in self.warnings]),
            ("index", [f"index: {p}" for p in self.reader_problems]),
        )
        for name, rows in groups:
            shown = rows if max_lines is None else rows[:max_lines]
            lines += shown
            if len(rows) > len(shown):
                lines.append(f"... {len(rows) - len(shown)} more {name} lines in the report file")
        return "\n".join(lines)


# ---------------------------------------------------------------- one shard (runs in a worker process)


def _decode(path: str, params: FrontEndParams, decoder: str = DEFAULT_DECODER):
    """(wave at the clip length, warning text) of one file; AudioError when it is not usable audio."""
    meta = info(path, decoder)  # header only (~0.1 ms): refuse absurd lengths before decoding them whole
    limit = MAX_SECONDS if params.crop == "centre" else MAX_TRACK_SECONDS  # full tracks: fcn/crop.py
    if meta.seconds > limit:
        raise AudioError(
            path, f"{meta.seconds:.0f} s long, over the {limit:.0f} s limit (a whole track or album, not a clip?)"
        )
    x = load(path, sr=params.sample_rate, decoder=decoder)
    got = len(x) / params.sample_rate
    note = []
    if meta.seconds and got < TRUNCATED * meta.seconds:
        # libsndfile decodes a cut-off MP3 up to the cut without an error; the header still tells the full length
        note.append(f"truncated: decodes to {got:.2f} s of the {meta.seconds:.2f} s its header declares")
    if not np.any(x):
        note.append("silent (all samples zero)")
    if len(x) < SHORT * params.n_samples:
        note.append(f"short: {got:.2f} s zero-padded to {params.seconds:.2f} s")
    return cut(x, params), "; ".join(note)  # fcn/crop.py: "centre" is fix_length, as before


def _process_shard(job, send) -> None:
    """Decode a shard's clips, compute every input type in one batch, write `dest` atomically.

    `send(kind, ...)` tells the parent which clip is being decoded, so that a crash or hang is pinned on that file.
    Clips in `preskip` (index -> reason) were found to crash or hang the decoder in an earlier attempt."""
    items, params, inputs, dest, decoder, *device, preskip = job  # device: "cuda" for a GPU build (--device cuda)
    if decoder == NPY_DECODER:  # no audio: the shard's mel comes from the dataset's own NPYs (fcn/melspecs.py)
        return process_npy_shard((items, params, inputs, dest, decoder, preskip), send)
    device = device[0] if device else "cpu"
    waves, status = [], []
    for j, (_cid, path) in enumerate(items):
        if j in preskip:
            status.append(("skip", preskip[j]))
            continue
        send("clip", j)
        try:
            x, note = _decode(path, params, decoder)
        except AudioError as e:
            status.append(("skip", e.reason))  # the report names the path already
            continue
        except Exception as e:  # a decoder error of any other kind on one file must not cost the others
            status.append(("skip", f"decoder error: {type(e).__name__}: {' '.join(str(e).split())}"))
            continue
        waves.append(x)
        status.append(("ok", note))
    send("compute")
    feats = {}
    if waves:
        out = compute(torch.from_numpy(np.stack(waves)).to(device), tuple(inputs), params)
        out = {k: v.cpu() for k, v in out.items()}
        # torch's float16 conversion (vectorised F16C), not numpy's astype: the same round-to-nearest-even values,
        # 7 % of a shard's time less (bench/preprocess.py)
        feats = {k: v.half().numpy() for k, v in out.items()}
    # a per-process temporary name: a worker orphaned by a killed parent may still be writing the same shard
    tmp = Path(f"{dest}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, status=np.array(json.dumps(status)), **feats)
        f.flush()
        os.fsync(f.fileno())  # the rename below must never publish a shard whose bytes are not on disk
    os.replace(tmp, dest)


def compute_shards(jobs: dict, workers: int, decode_timeout: float) -> int:
    """Compute a group of shard jobs in `workers` processes, skipping parts already written (by a retry of the same
    task, or by an earlier run still going); returns how many it computed. The task a cluster's node runs
    (harness/preprocess.py), with the same pool and shard code as a one-node build."""
    left = {i: job for i, job in jobs.items() if _shard_status(job[3], len(job[0]), job[2]) is None}
    if left:
        run_shards(left, min(workers, len(left)), decode_timeout, on_done=lambda i: None, task=_process_shard)
    return len(left)


# ---------------------------------------------------------------- the whole build


def _manifest(items, params: FrontEndParams, inputs, shard_size: int, decoder: str = DEFAULT_DECODER) -> str:
    """What the parts of a build depend on: a rerun resumes only parts made from exactly this."""
    h = hashlib.sha256()
    h.update(f"format {FORMAT_VERSION}\n".encode())  # parts of an older format's build must not be reused
    h.update(params.to_json().encode())
    h.update(json.dumps([list(inputs), shard_size]).encode())  # the shard size fixes which clips each part holds
    h.update(f"decoder {decoder}\n".encode())  # one store, one decoder (fcn.audio: they differ in the last bits)
    for it in items:
        try:  # a replaced or re-copied audio file must not be served from an old part
            st = os.stat(it.path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "absent"
        h.update(f"{it.clip_id}\t{it.path}\t{stamp}\t{it.split}\t{''.join(map(str, it.labels))}\n".encode())
    return h.hexdigest()


def _shard_status(dest: Path, n: int, inputs) -> list | None:
    """The per-clip status list of a finished part, or None when it is absent or unusable (then it is redone)."""
    if not dest.exists():
        return None
    try:
        with np.load(dest) as z:
            status = json.loads(str(z["status"]))
            n_ok = sum(s == "ok" for s, _ in status)
            if len(status) != n or (n_ok and any(k not in z.files for k in inputs)):
                return None
    except Exception:  # writes are atomic, so this takes a damaged disk; redoing the part is the cure either way
        return None
    return status


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this job may use (Slurm, taskset), not all of the node's
    except AttributeError:
        return os.cpu_count() or 1


def _unique(items, report: Report) -> list:
    """The items with each clip id once (the first kept); the others go to the report."""
    seen, unique = set(), []
    for it in items:
        if it.clip_id in seen:  # the readers drop these already; this guards any other source of items
            report.skipped.append((it.clip_id, it.path, "duplicate clip id (the first one was kept)"))
            continue
        seen.add(it.clip_id)
        unique.append(it)
    return unique


def _prepare_parts(parts: Path, manifest: str, report: Report) -> None:
    """The shard folder, holding only parts of this very build (those of any other build are discarded)."""
    old = (parts / "manifest").read_text() if (parts / "manifest").exists() else ""
    if parts.exists() and old != manifest:
        shutil.rmtree(parts)  # left by a build of other clips or parameters: not ours to resume
        report.notes.append(f"discarded the parts in {parts}: they were made from other clips or parameters")
        print(f"preprocess: {report.notes[-1]}", file=sys.stderr)
    parts.mkdir(parents=True, exist_ok=True)
    for stale in parts.glob("*.tmp"):  # half-written parts of a killed run
        stale.unlink(missing_ok=True)
    tmp = parts / "manifest.tmp"
    tmp.write_text(manifest)
    os.replace(tmp, parts / "manifest")


def _compute(
    todo: dict,
    sizes: list[int],
    *,
    total: int,
    desc: str,
    workers: int,
    decode_timeout: float,
    progress: bool,
    runner,
    log_dir: Path,
    landed=lambda i: None,
) -> list[str]:
    """Compute the shards in `todo` here, or with `runner` (a cluster), calling `landed(i)` as shard i is written;
    returns the runner's failed tasks."""
    failures: list[str] = []
    bar = tqdm(
        total=total,
        initial=total - sum(sizes[i] for i in todo),
        unit="clip",
        desc=desc,
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
        smoothing=0.1,
    )

    def on_done(i):
        bar.update(sizes[i])
        landed(i)

    try:
        if todo and runner is None:
            # always in worker processes, even one: a decoder that crashes or hangs must not take this process along
            run_shards(
                todo,
                min(workers or _default_workers(), len(todo)),
                decode_timeout,
                on_done=on_done,
                task=_process_shard,
            )
        elif todo:
            failures = runner(todo, decode_timeout=decode_timeout, log_dir=log_dir, on_done=on_done)
    finally:
        bar.close()  # before any error's line, which would otherwise be glued to the bar's
    return failures


class _Assembler:
    """Copies finished shards into the store while later shards still compute: the parent's serial assembly after
    the last shard was 15 % of a build's wall time (bench/preprocess.py), with the workers gone.

    Shards are appended in order as they land (a background thread; the parent's main thread only supervises the
    pool). The store is sized for every clip, so a shard with a skipped clip stops it: build() then writes the store
    from the parts after the last shard, as it always did."""

    def __init__(self, out: Path, dests: list[Path], sizes: list[int], params: FrontEndParams, inputs):
        self.dests, self.sizes, self.inputs = dests, sizes, tuple(inputs)
        self.q, self.ok = queue.Queue(), True
        self.writer = StoreWriter(out, sum(sizes), params, list(inputs))
        self.thread = threading.Thread(target=self._run, name="store-assembly", daemon=True)
        self.thread.start()

    def landed(self, i: int) -> None:
        self.q.put(i)

    def _run(self) -> None:
        ready, nxt = set(), 0
        try:
            while nxt < len(self.dests):
                i = self.q.get()
                if i is None:
                    return
                ready.add(i)
                while nxt in ready:
                    status = _shard_status(self.dests[nxt], self.sizes[nxt], self.inputs)
                    if status is None or any(state != "ok" for state, _ in status):
                        self.ok = False  # a skipped clip: the store has fewer rows than it was sized for
                        return
                    with np.load(self.dests[nxt]) as z:
                        self.writer.append({k: z[k] for k in self.inputs})
                    nxt += 1
        except Exception:  # noqa: BLE001 - the fallback (assembly after the last shard) says what is wrong, if anything
            self.ok = False

    def _stop(self) -> None:
        self.q.put(None)  # wakes the thread if it still waits for a shard that will not come
        self.thread.join()

    def finish(self, **meta) -> bool:
        """The store renamed into place, if every shard went in whole; False (and nothing written) otherwise."""
        self._stop()
        if not self.ok or self.writer.filled != self.writer.n:
            self.writer.abort()
            return False
        self.writer.finish(**meta)
        return True

    def abort(self) -> None:
        self._stop()
        self.writer.abort()


def _sort_out(shards, status: dict, report: Report) -> list:
    """The clips to store (in input order); skipped clips and warnings go to the report."""
    keep = []
    for i, s in enumerate(shards):
        for it, (state, msg) in zip(s, status[i]):
            if state == "ok":
                keep.append(it)
                if msg:
                    report.warnings.append((it.clip_id, it.path, msg))
            else:
                report.skipped.append((it.clip_id, it.path, msg))
    if not keep:
        raise UserError(
            f"none of the {sum(map(len, shards))} clips could be decoded; the first reason: "
            f"{report.skipped[0][0]} ({report.skipped[0][1]}): {report.skipped[0][2]}"
        )
    return keep


def build(
    items,
    tags,
    *,
    dataset: str,
    out: str | Path,
    params: FrontEndParams = FrontEndParams(),
    inputs=INPUTS,
    workers: int = 0,
    progress: bool = True,
    reader_problems=(),
    shard_size: int = SHARD_SIZE,
    decode_timeout: float = DECODE_TIMEOUT,
    runner=None,
    decoder: str = DEFAULT_DECODER,
    device: str = "cpu",
) -> Report:
    """Build the store at `out` from data set items (fcn.data.Item); returns the report (also saved beside it).
    device "cuda": the front ends on the GPU (opt-in, `--device cuda`): their values differ from the CPU's by float
    rounding, so such a build's parts are never mixed with a CPU build's (the device is in their manifest).

    Parts of an interrupted build with the same items, parameters and shard size under `<out>.parts/` are reused;
    parts of any other build there are discarded. Callers that may race on `out` hold its lock (ensure_feature_store
    does).
    `runner` computes the parts somewhere else than this machine's pool: `runner(todo, decode_timeout=, log_dir=,
    on_done=)` with `todo` = {shard index: job} for `compute_shards`, `on_done(i)` as part i appears, returning one
    line per task that failed; `runner.name` names it in errors (harness/preprocess.py: a Slurm job array, Ray tasks).
    The same parts, so the same store; `<out>.parts/` must then be on a file system the runner's nodes share.
    """
    t0 = time.time()
    out = Path(out).absolute()  # absolute: a cluster's tasks write the parts from another working directory
    inputs = tuple(inputs)
    if shard_size < 1:
        raise UserError(f"shard size must be >= 1, not {shard_size}")
    if decoder not in (*DECODERS, NPY_DECODER):
        raise UserError(f"unknown decoder {decoder!r}: choose from {', '.join(DECODERS)}")
    report = Report(reader_problems=list(reader_problems))
    unique = _unique(items, report)
    if not unique:
        raise UserError(f"no clips to preprocess for {out}: check the data root and split lists")
    parts = out.with_name(out.name + ".parts")
    manifest = _manifest(unique, params, inputs, shard_size, decoder + ("" if device == "cpu" else f" on {device}"))
    _prepare_parts(parts, manifest, report)

    shards = [unique[i : i + shard_size] for i in range(0, len(unique), shard_size)]
    dests = [parts / f"shard-{i:06d}.npz" for i in range(len(shards))]
    status = {i: _shard_status(d, len(s), inputs) for i, (s, d) in enumerate(zip(shards, dests))}
    todo = {
        i: (tuple((it.clip_id, it.path) for it in shards[i]), params, inputs, dests[i], decoder)
        + ((device,) if device != "cpu" else ())
        for i, st in status.items()
        if st is None
    }
    report.shards, report.resumed_shards = len(shards), len(shards) - len(todo)
    if report.resumed_shards:
        print(
            f"resuming: {report.resumed_shards} of {len(shards)} shards already done, {len(todo)} to do ({parts})",
            file=sys.stderr,
        )
    asm = _Assembler(out, dests, [len(s) for s in shards], params, inputs)
    try:
        for i in status:
            if status[i] is not None:  # parts of an earlier run go in first
                asm.landed(i)
        failures = _compute(
            todo,
            [len(s) for s in shards],
            total=len(unique),
            desc=f"preprocess {out.name}",
            workers=workers,
            decode_timeout=decode_timeout,
            progress=progress,
            runner=runner,
            log_dir=parts / "logs",
            landed=asm.landed,
        )
        for i in todo:
            status[i] = _shard_status(dests[i], len(shards[i]), inputs)
        missing = [i for i in todo if status[i] is None]
        if missing and failures:
            raise UserError(
                f"{len(missing)} of {len(shards)} shards are missing after the {runner.name} build "
                f"({len(failures)} task(s) failed; first: {failures[0]}; logs in {parts / 'logs'}): "
                "rerun the same command, and only the missing shards are computed again"
            )
        if missing:
            raise RuntimeError(f"shard {dests[missing[0]]} is missing or unreadable right after it was written")
        keep = _sort_out(shards, status, report)
        meta = dict(
            dataset=dataset,
            tags=tags,
            clip_ids=[it.clip_id for it in keep],
            paths=[it.path for it in keep],
            splits=[it.split for it in keep],
            labels=np.stack([it.labels for it in keep]),
            decoder=decoder,
        )
        whole = asm.finish(**meta)
    except BaseException:
        asm.abort()
        raise
    if not whole:  # a clip was skipped: the store is written from the parts now

        def chunks():
            for d in dests:
                with np.load(d) as z:
                    if inputs[0] in z.files:
                        yield {k: z[k] for k in inputs}

        write_store(out, params=params, inputs=list(inputs), feature_chunks=chunks(), **meta)
    shutil.rmtree(parts, ignore_errors=True)
    report.written = len(keep)
    report.seconds = time.time() - t0
    out.with_name(out.name + ".report.txt").write_text(report.text() + "\n")
    return report


# ---------------------------------------------------------------- a run's store, built on first use


def ensure_feature_store(
    config, *, workers: int = 0, progress: bool = True, build_here: bool = True, wait_s: float | None = None
) -> Path:
    """The run's feature store (fcn.run_store.store_path), built (once, under a lock) if it does not exist yet;
    a damaged or older-format one is rebuilt.

    build_here=False (every DDP rank but global rank 0): never build, wait up to `wait_s` seconds (default
    $FCN_STORE_WAIT_S, else 24 h: a paper-scale MSD build on one node) for the builder's finished file. The file lock
    alone is not enough where a shared file system's locks are node-local (some GPFS / Lustre mounts): one rank per
    node would build, and they would delete each other's parts.
    """
    path = store_path(config)
    if config.store or is_current(path):
        return path  # an explicit --store is never built implicitly: a wrong path must be an error, not a build
    if not build_here:
        return wait_for_store(path, float(os.environ.get("FCN_STORE_WAIT_S", 86400)) if wait_s is None else wait_s)
    with lock(path.with_name(path.name + ".lock")):
        if not is_current(path):
            if path.exists():  # a derived store is a cache: one of an older format is rebuilt, not refused
                print(f"feature store {path} {why_stale(path)}: rebuilding it", file=sys.stderr)
            tags, items, problems = read_items(config)
            report = build(
                items,
                tags,
                dataset=config.dataset,
                out=path,
                params=config.frontend,
                workers=workers,
                progress=progress,
                reader_problems=problems,
                **build_source(config),  # MTG-Jamendo's mel NPYs: no decoder, the mel input only
            )
            print(
                f"feature store {path}: {report.written} clips written, {len(report.skipped)} skipped "
                f"(report: {path}.report.txt)",
                file=sys.stderr,
            )
    return path


def ensure_feature_stores(configs, progress: bool = True) -> None:
    """Each distinct store of `configs` built once, here, before their cells start (harness.grid, harness.search):
    the cells would otherwise queue on its lock."""
    seen = set()
    for c in configs:
        p = store_path(c)
        if p not in seen:
            seen.add(p)
            ensure_feature_store(c, progress=progress)


# ---------------------------------------------------------------- command line


def build_parser(prog: str = "python -m fcn.preprocess", description: str = __doc__) -> argparse.ArgumentParser:
    """The build's flags (also `python -m harness.preprocess`'s, which adds where the shards are computed)."""
    ap = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--workers", type=int, default=0, help="processes (default: all cores this job may use)")
    ap.add_argument("--out", default="", help="store path (default: the path fcn.train derives for these flags)")
    ap.add_argument(
        "--shard-size", type=int, default=SHARD_SIZE, help=f"clips per resumable part (default: {SHARD_SIZE})"
    )
    ap.add_argument(
        "--decode-timeout",
        type=float,
        default=DECODE_TIMEOUT,
        help=f"seconds after which a file's decoding counts as hung and the file is skipped "
        f"(default: {DECODE_TIMEOUT:g})",
    )
    ap.add_argument(
        "--decoder",
        choices=DECODERS,
        default=DEFAULT_DECODER,
        help=f"MP3/WAV decoder (fcn/audio.py; default: {DEFAULT_DECODER}, the fastest measured)",
    )
    add_config_arguments(ap)
    return ap


def build_device(device: str) -> str:
    """Where a build computes its front ends: the CPU unless `--device cuda` asks for the GPU (opt-in: stores stay
    CPU-built by default, since GPU and CPU features differ by float rounding; `--device auto` means the CPU here)."""
    if device != "cuda":
        return "cpu"
    if not torch.cuda.is_available():
        raise UserError(
            "--device cuda computes the front ends on a GPU, and torch sees no usable CUDA GPU here: "
            "leave --device out to build on the CPU"
        )
    return "cuda"


def run_build(args: argparse.Namespace, runner=None) -> Report:
    """The build the parsed flags describe (its shards in this machine's pool, or with `runner`), printed."""
    if args.shard_size < 1 or args.decode_timeout <= 0 or args.workers < 0:
        raise UserError("--shard-size must be >= 1, --decode-timeout > 0 and --workers >= 0")
    config = config_from_args(args)
    device = build_device(config.device)
    out = Path(args.out) if args.out else store_path(config)
    # the lock ensure_feature_store takes: a sweep building the same store at once must wait, not share the parts
    with lock(out.with_name(out.name + ".lock")):
        tags, items, problems = read_items(config)
        report = build(
            items,
            tags,
            dataset=config.dataset,
            out=out,
            params=config.frontend,
            workers=args.workers,
            reader_problems=problems,
            shard_size=args.shard_size,
            decode_timeout=args.decode_timeout,
            runner=runner,
            **build_source(config, args.decoder),  # MTG-Jamendo's mel NPYs: no decoder, the mel input only
            device=device,
        )
    print(report.text(max_lines=20))
    print(f"store: {out}\nreport: {out}.report.txt")
    return report


def main(argv=None) -> None:
    ap = build_parser()
    # the cluster build moved to the harness (fcn never launches cluster jobs): say where, in one line
    ap.add_argument("--cluster", default="local", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.cluster != "local":
        raise UserError(
            f"--cluster {args.cluster}: a build over a cluster is `python -m harness.preprocess --cluster "
            f"{args.cluster}` now (the same flags, plus the cluster's)"
        )
    run_build(args)


if __name__ == "__main__":
    run_cli(main)
