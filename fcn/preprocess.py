"""Audio → feature store, in parallel over all cores, resumable, with a progress bar and a report.

    python -m fcn.preprocess                                   # the built-in synthetic MTAT set (demo scale)
    python -m fcn.preprocess --dataset mtat --data-root /data/mtat --split clean --preset paper --workers 16
    python -m fcn.preprocess --dataset msd --data-root /data/msd --preset paper

Every input type (mel, STFT, MFCC) is computed in one pass over the audio. Work is cut into shards of clips; each
finished shard is written atomically under `<store>.parts/`, so a rerun after a kill does only the missing shards and
ends with the identical store. The store itself is assembled into a temporary file and renamed on success.

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
import fcntl
import hashlib
import json
import os
import shutil
import signal
import sys
import time
import traceback
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fcn.audio import DECODERS, DEFAULT_DECODER
from fcn.errors import UserError, run_cli
from fcn.frontends import INPUTS, FrontEndParams

SHARD_SIZE = 32  # clips per shard: small enough that a kill loses little, large enough to batch the front ends
# A 29 s MP3 decodes in ~4 ms (FACTS.md): a decoder still busy with one file after this long is stuck, not slow.
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
        lines = [f"clips written: {self.written}", f"clips skipped: {len(self.skipped)}",
                 f"warnings: {len(self.warnings)}", f"index problems: {len(self.reader_problems)}",
                 f"shards: {self.shards} ({self.resumed_shards} reused from an interrupted run)",
                 f"time: {self.seconds:.1f} s"]
        lines += [f"note: {n}" for n in self.notes]
        groups = (("skipped", [f"skipped {cid} ({path}): {why}" for cid, path, why in self.skipped]),
                  ("warning", [f"warning {cid} ({path}): {why}" for cid, path, why in self.warnings]),
                  ("index", [f"index: {p}" for p in self.reader_problems]))
        for name, rows in groups:
            shown = rows if max_lines is None else rows[:max_lines]
            lines += shown
            if len(rows) > len(shown):
                lines.append(f"... {len(rows) - len(shown)} more {name} lines in the report file")
        return "\n".join(lines)


# ---------------------------------------------------------------- one shard (runs in a worker process)

def _decode(path: str, params: FrontEndParams, decoder: str = DEFAULT_DECODER):
    """(wave at the clip length, warning text) of one file; AudioError when it is not usable audio."""
    from fcn.audio import AudioError, fix_length, info, load

    meta = info(path, decoder)  # header only (~0.1 ms): refuse absurd lengths before decoding them whole
    if meta.seconds > MAX_SECONDS:
        raise AudioError(path, f"{meta.seconds:.0f} s long, over the {MAX_SECONDS:.0f} s limit "
                               "(a whole track or album, not a clip?)")
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
    return fix_length(x, params.n_samples), "; ".join(note)


def _process_shard(job, send) -> None:
    """Decode a shard's clips, compute every input type in one batch, write `dest` atomically.

    `send(kind, ...)` tells the parent which clip is being decoded, so that a crash or hang is pinned on that file.
    Clips in `preskip` (index -> reason) were found to crash or hang the decoder in an earlier attempt."""
    import torch

    from fcn.audio import AudioError
    from fcn.frontends import compute

    items, params, inputs, dest, decoder, preskip = job
    waves, status = [], []
    for j, (cid, path) in enumerate(items):
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
        out = compute(torch.from_numpy(np.stack(waves)), tuple(inputs), params)
        feats = {k: v.numpy().astype(np.float16) for k, v in out.items()}
    # a per-process temporary name: a worker orphaned by a killed parent may still be writing the same shard
    tmp = Path(f"{dest}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, status=np.array(json.dumps(status)), **feats)
        f.flush()
        os.fsync(f.fileno())  # the rename below must never publish a shard whose bytes are not on disk
    os.replace(tmp, dest)


def _worker_main(conn) -> None:
    """A worker process: shard jobs in, progress messages out, until told to stop or the parent is gone."""
    import torch

    from fcn.malloc import keep_freed_memory

    torch.set_num_threads(1)  # one process per core; threads inside would only fight each other
    keep_freed_memory()  # a 32-clip batch's STFTs would otherwise be fresh mmap()s, page-faulted in on every shard
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent stops us cleanly
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return  # the parent was killed: stop instead of lingering as an orphan
        if job is None:
            return
        try:
            _process_shard(job, lambda *m: conn.send(m))
            conn.send(("done",))
        except (BrokenPipeError, ConnectionResetError, EOFError):
            return  # the parent is gone (a rerun will redo this shard)
        except OSError as e:  # disk full, permissions: the user's to fix, not a bug
            _send_quietly(conn, ("oserror", f"{type(e).__name__}: {e}"))
        except BaseException:
            _send_quietly(conn, ("error", traceback.format_exc()))


def _send_quietly(conn, msg) -> None:
    try:
        conn.send(msg)
    except OSError:
        pass


class _Worker:
    def __init__(self, ctx):
        self.conn, child = ctx.Pipe()
        # daemon: a parent that exits (or is interrupted) takes its workers along
        self.proc = ctx.Process(target=_worker_main, args=(child,), daemon=True, name="fcn-preprocess")
        self.proc.start()
        child.close()  # only the worker holds its end: when the parent dies, the worker's recv() sees EOF
        self.shard: int | None = None  # shard being processed
        self.clip: int | None = None  # clip (index in the shard) being decoded; None before or after decoding
        self.since = 0.0  # when that clip's decoding started

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        else:
            _send_quietly(self.conn, None)
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


def _signal_name(exitcode) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            pass
    return f"exit status {exitcode}"


def _run_shards(jobs: dict, n_workers: int, decode_timeout: float, on_done) -> None:
    """Process shard jobs {index: (items, params, inputs, dest)} in `n_workers` spawned worker processes.

    Not multiprocessing.Pool: a worker killed by a crashing decoder makes Pool wait forever for the lost task, and
    Pool cannot stop a worker that hangs. Here each worker reports the clip it is decoding, so the parent knows which
    file killed or stalled it: that file is skipped, the worker replaced and the shard redone without it.
    Spawn, not fork: torch's OpenMP pool does not survive fork.
    """
    import multiprocessing as mp
    from multiprocessing.connection import wait

    ctx = mp.get_context("spawn")
    pending = deque(sorted(jobs))
    preskip: dict[int, dict[int, str]] = {i: {} for i in jobs}
    deaths: dict[int, int] = {i: 0 for i in jobs}
    workers = [_Worker(ctx) for _ in range(min(n_workers, len(pending)))]
    try:
        while True:
            for w in workers:
                if w.shard is None and pending:
                    w.shard, w.clip = pending.popleft(), None
                    w.conn.send((*jobs[w.shard], preskip[w.shard]))
            busy = [w for w in workers if w.shard is not None]
            if not busy:
                return
            wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=0.5)
            for k, w in enumerate(workers):
                if w.shard is None:
                    continue
                i, gone = w.shard, False
                try:
                    while w.conn.poll():  # drain first: the last message before a death names the culprit
                        kind, *rest = w.conn.recv()
                        if kind == "clip":
                            w.clip, w.since = rest[0], time.monotonic()
                        elif kind == "compute":
                            w.clip = None
                        elif kind == "done":
                            w.shard = w.clip = None
                            on_done(i)
                            break
                        elif kind == "oserror":
                            raise UserError(f"preprocessing failed writing {jobs[i][3]}: {rest[0]}")
                        else:
                            raise RuntimeError(f"a preprocessing worker failed on shard {i}:\n{rest[0]}")
                except (EOFError, OSError):
                    gone = True
                if w.shard is None:
                    continue
                if gone or not w.proc.is_alive():
                    w.proc.join(timeout=5)
                    why = _signal_name(w.proc.exitcode)
                    if w.clip is not None:
                        path = jobs[i][0][w.clip][1]
                        preskip[i][w.clip] = f"the decoder crashed on this file (worker died: {why})"
                        print(f"warning: the decoder crashed ({why}) on {path}: skipping it", file=sys.stderr)
                    else:
                        deaths[i] += 1
                        if deaths[i] > 1:
                            raise UserError(
                                f"a preprocessing worker died twice ({why}) computing the features of shard {i}, "
                                "after decoding: out of memory? rerun with fewer --workers")
                    w.stop(kill=True)
                    workers[k] = _Worker(ctx)
                    pending.appendleft(i)
                elif w.clip is not None and time.monotonic() - w.since > decode_timeout:
                    path = jobs[i][0][w.clip][1]
                    preskip[i][w.clip] = (f"decoding took over {decode_timeout:g} s: the decoder hangs on this file "
                                          "(worker stopped)")
                    print(f"warning: the decoder hangs on {path}: skipping it", file=sys.stderr)
                    w.stop(kill=True)
                    workers[k] = _Worker(ctx)
                    pending.appendleft(i)
    finally:
        for w in workers:
            w.stop(kill=w.shard is not None)


# ---------------------------------------------------------------- the whole build

def _manifest(items, params: FrontEndParams, inputs, shard_size: int, decoder: str = DEFAULT_DECODER) -> str:
    """What the parts of a build depend on: a rerun resumes only parts made from exactly this."""
    from fcn.store import FORMAT_VERSION

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


def build(items, tags, *, dataset: str, out: str | Path, params: FrontEndParams = FrontEndParams(),
          inputs=INPUTS, workers: int = 0, progress: bool = True, reader_problems=(),
          shard_size: int = SHARD_SIZE, decode_timeout: float = DECODE_TIMEOUT,
          decoder: str = DEFAULT_DECODER) -> Report:
    """Build the store at `out` from data set items (fcn.data.Item); returns the report (also saved beside it).

    Parts of an interrupted build with the same items, parameters and shard size under `<out>.parts/` are reused;
    parts of any other build there are discarded. Callers that may race on `out` hold its lock (see ensure_store).
    """
    from tqdm import tqdm

    from fcn.store import write_store

    t0 = time.time()
    out = Path(out)
    inputs = tuple(inputs)
    if shard_size < 1:
        raise UserError(f"shard size must be >= 1, not {shard_size}")
    if decoder not in DECODERS:
        raise UserError(f"unknown decoder {decoder!r}: choose from {', '.join(DECODERS)}")
    report = Report(reader_problems=list(reader_problems))
    seen, unique = set(), []
    for it in items:
        if it.clip_id in seen:  # the readers drop these already; this guards any other source of items
            report.skipped.append((it.clip_id, it.path, "duplicate clip id (the first one was kept)"))
            continue
        seen.add(it.clip_id)
        unique.append(it)
    if not unique:
        raise UserError(f"no clips to preprocess for {out}: check the data root and split lists")
    parts = out.with_name(out.name + ".parts")
    manifest = _manifest(unique, params, inputs, shard_size, decoder)
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

    shards = [unique[i:i + shard_size] for i in range(0, len(unique), shard_size)]
    dests = [parts / f"shard-{i:06d}.npz" for i in range(len(shards))]
    status = {i: _shard_status(d, len(s), inputs) for i, (s, d) in enumerate(zip(shards, dests))}
    todo = {i: (tuple((it.clip_id, it.path) for it in shards[i]), params, inputs, dests[i], decoder)
            for i, st in status.items() if st is None}
    report.shards, report.resumed_shards = len(shards), len(shards) - len(todo)
    if report.resumed_shards:
        print(f"resuming: {report.resumed_shards} of {len(shards)} shards already done, "
              f"{len(todo)} to do ({parts})", file=sys.stderr)
    done = len(unique) - sum(len(shards[i]) for i in todo)
    bar = tqdm(total=len(unique), initial=done, unit="clip", desc=f"preprocess {out.name}", disable=not progress,
               file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
    if todo:
        # always in worker processes, even one: a decoder that crashes or hangs must not take this process along
        _run_shards(todo, min(workers or _default_workers(), len(todo)), decode_timeout,
                    on_done=lambda i: bar.update(len(shards[i])))
    bar.close()
    for i in todo:
        status[i] = _shard_status(dests[i], len(shards[i]), inputs)
        if status[i] is None:
            raise RuntimeError(f"shard {dests[i]} is missing or unreadable right after it was written")

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
        raise UserError(f"none of the {len(unique)} clips could be decoded; the first reason: "
                        f"{report.skipped[0][0]} ({report.skipped[0][1]}): {report.skipped[0][2]}")

    def chunks():
        for d in dests:
            with np.load(d) as z:
                if inputs[0] in z.files:
                    yield {k: z[k] for k in inputs}

    write_store(out, dataset=dataset, tags=tags, params=params, inputs=list(inputs),
                clip_ids=[it.clip_id for it in keep], paths=[it.path for it in keep],
                splits=[it.split for it in keep], labels=np.stack([it.labels for it in keep]),
                feature_chunks=chunks(), decoder=decoder)
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
        # the MSD's own db / audio / id map, when named, make another data set from the same root
        named = [k for k in ("tags_db", "audio_root", "id_map") if getattr(config, k)]
        where = [str(Path(config.data_root).resolve())] + [f"{k}={Path(getattr(config, k)).resolve()}" for k in named]
        source = "d" + hashlib.sha256("\n".join(where).encode()).hexdigest()[:8]
    else:
        source = f"synth{config.synth_clips}"
    split = config.split if config.dataset == "mtat" else "choi"
    # the mel variant in the name: stores of both variants live side by side
    name = f"{config.dataset}-{source}-{split}-{config.clip_seconds:g}s-{config.frontend_variant}.h5"
    return Path(config.data_dir) / name


def read_items(config):
    """(tags, items, problems) of the run's data set; the built-in synthetic set is generated on first use."""
    root = Path(config.data_root) if config.data_root else synth_root(config)
    if not root.exists():
        raise UserError(f"data root {root} does not exist: pass --data-root of your {config.dataset.upper()} copy")
    if config.dataset == "mtat":
        from fcn.data import mtat

        return mtat.read(root, split=config.split, splits_dir=config.splits_dir or None)
    from fcn.data import msd

    splits_dir = Path(config.splits_dir) if config.splits_dir else msd.default_splits_dir(root)
    tags_db = Path(config.tags_db) if config.tags_db else root / msd.TAGS_DB
    tags, items, problems = msd.read(root, splits_dir=splits_dir, audio_root=config.audio_root or None,
                                     id_map_csv=config.id_map or None, tags_db=tags_db)
    if tags_db.is_file():  # labels rebuilt from the db: compare them with Choi's own y files where present
        checks = msd.check_labels_against(items, tags, splits_dir)
        line, mismatches = msd.label_check_report(checks, splits_dir)
        print(line, file=sys.stderr)
        problems = [*problems, *mismatches]
    return tags, items, problems


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


def _current(path: Path) -> bool:
    """Whether `path` is a store of this fcn's format (False when absent, older or unreadable)."""
    from fcn.store import FORMAT_VERSION, read_meta

    if not path.exists():
        return False
    try:
        return read_meta(path)["format_version"] == FORMAT_VERSION
    except UserError:
        return False


def _why_stale(path: Path) -> str:
    """Why an existing store is rebuilt: damaged (a killed write, a full disk) or of an older format."""
    from fcn.store import read_meta

    try:
        return f"is of an older format ({read_meta(path)['format_version']})"
    except UserError:
        return "is damaged or truncated (it cannot be read as a feature store)"


def ensure_store(config, *, workers: int = 0, progress: bool = True, build_here: bool = True,
                 wait_s: float | None = None) -> Path:
    """The run's store, built (once, under a lock) if it does not exist yet.

    build_here=False (every DDP rank but global rank 0): never build, wait up to `wait_s` seconds (default
    $FCN_STORE_WAIT_S, else 24 h: a paper-scale MSD build on one node) for the builder's finished file. The file lock
    alone is not enough where a shared file system's locks are node-local (some GPFS / Lustre mounts): one rank per
    node would build, and they would delete each other's parts.
    """
    path = store_path(config)
    if config.store or _current(path):
        return path  # an explicit --store is never built implicitly: a wrong path must be an error, not a build
    if not build_here:
        return _wait_for_store(path, float(os.environ.get("FCN_STORE_WAIT_S", 86400)) if wait_s is None else wait_s)
    with _lock(path.with_name(path.name + ".lock")):
        if not _current(path):
            if path.exists():  # a derived store is a cache: one of an older format is rebuilt, not refused
                print(f"feature store {path} {_why_stale(path)}: rebuilding it", file=sys.stderr)
            tags, items, problems = read_items(config)
            report = build(items, tags, dataset=config.dataset, out=path, params=config.frontend,
                           workers=workers, progress=progress, reader_problems=problems)
            print(f"feature store {path}: {report.written} clips written, {len(report.skipped)} skipped "
                  f"(report: {path}.report.txt)", file=sys.stderr)
    return path


def _wait_for_store(path: Path, wait_s: float) -> Path:
    deadline = time.monotonic() + wait_s
    while not _current(path):
        if time.monotonic() > deadline:
            raise UserError(f"waited {wait_s:.0f} s for rank 0 to build the feature store {path}, and it is not "
                            f"there: build it first with `python -m fcn.preprocess` (same flags), or set "
                            f"FCN_STORE_WAIT_S longer")
        time.sleep(min(5.0, max(0.1, wait_s / 20)))
    return path


def main(argv=None) -> None:
    from fcn.config import add_config_arguments, config_from_args

    ap = argparse.ArgumentParser(
        prog="python -m fcn.preprocess", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=0, help="processes (default: all cores this job may use)")
    ap.add_argument("--out", default="", help="store path (default: the path fcn.train derives for these flags)")
    ap.add_argument("--shard-size", type=int, default=SHARD_SIZE,
                    help=f"clips per resumable part (default: {SHARD_SIZE})")
    ap.add_argument("--decode-timeout", type=float, default=DECODE_TIMEOUT,
                    help=f"seconds after which a file's decoding counts as hung and the file is skipped "
                         f"(default: {DECODE_TIMEOUT:g})")
    ap.add_argument("--decoder", choices=DECODERS, default=DEFAULT_DECODER,
                    help=f"MP3/WAV decoder (fcn/audio.py; default: {DEFAULT_DECODER}, the fastest measured)")
    add_config_arguments(ap)
    args = ap.parse_args(argv)
    if args.shard_size < 1 or args.decode_timeout <= 0 or args.workers < 0:
        ap.error("--shard-size must be >= 1, --decode-timeout > 0 and --workers >= 0")
    config = config_from_args(args)
    out = Path(args.out) if args.out else store_path(config)
    # the lock ensure_store takes: a sweep building the same store at the same time must wait, not share the parts
    with _lock(out.with_name(out.name + ".lock")):
        tags, items, problems = read_items(config)
        report = build(items, tags, dataset=config.dataset, out=out, params=config.frontend, workers=args.workers,
                       reader_problems=problems, shard_size=args.shard_size, decode_timeout=args.decode_timeout,
                       decoder=args.decoder)
    print(report.text(max_lines=20))
    print(f"store: {out}\nreport: {out}.report.txt")


if __name__ == "__main__":
    run_cli(main)
