"""`python -m bench --gpu-smoke`: the first thing to run on a new GPU node, in about a minute.

Checks, at paper scale (width 1.0, 1366 frames, batch 16 per GPU):
  1. one training step (fcn.train.train_step) of every depth (FCN-3..7) × input (mel / STFT / MFCC), in bf16
     autocast and in fp32 (TF32 off, so "fp32" means fp32): it runs, the loss is finite, the step time and peak memory;
  2. a 2-process NCCL all-reduce (1 process when the node shows one GPU): the collective DDP needs works and agrees;
  3. loader throughput: fcn.store's DataLoader path (float16 HDF5 batches, 4 workers, pinned memory) against the
     training step's clips/s, on a scratch store of random features in a temporary directory.
It prints one table and, under it, what to fix. Exit 0 when everything passed, 1 when something failed, 2 without a
usable GPU (one line says why: no GPU, or a driver / build mismatch).
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from fcn.config import RunConfig
from fcn.dist import driver_version, gpus_allocated
from fcn.frontends import FrontEndParams
from fcn.models import FCN
from fcn.store import Batches, FeatureDataset, write_store
from fcn.train import train_step

PAPER = dict(width=1.0, frames=1366, batch=16)
LOADER_CLIPS = 512
LOADER_WORKERS = 4


def no_gpu_line() -> str | None:
    """Why this machine cannot run the smoke check, in one line; None when CUDA is usable."""
    if torch.cuda.is_available():
        return None

    why = (
        "GPUs are allocated but torch cannot use them (a driver/build mismatch?)"
        if gpus_allocated()
        else "no CUDA GPU is visible"
    )
    return (
        f"python -m bench --gpu-smoke needs a CUDA GPU: {why}; torch {torch.__version__} built for CUDA "
        f"{torch.version.cuda or 'none (CPU-only build)'}, {driver_version()}"
    )


def _step(depth: int, inp: str, precision: str, device: str = "cuda", width: float = PAPER["width"]) -> dict:
    rows = FrontEndParams().rows(inp)
    torch.backends.cuda.matmul.allow_tf32 = False  # "fp32" rows are fp32, not TF32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    cuda = device == "cuda"
    model = FCN(depth, width).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(PAPER["batch"], 1, rows, PAPER["frames"], device=device).contiguous(
        memory_format=torch.channels_last
    )
    y = (torch.rand(PAPER["batch"], 50, device=device) < 0.1).float()
    config = RunConfig(amp="bf16" if precision == "bf16" else "off")
    dev = torch.device(device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def one() -> float:
        return float(train_step(model, opt, x, y, config, dev))  # fcn.train's own step

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    loss = one()  # the first step pays cuDNN's kernel search
    sync()
    t0 = time.perf_counter()
    for _ in range(3):
        loss = one()
    sync()
    ms = (time.perf_counter() - t0) / 3 * 1e3
    ok = loss == loss and abs(loss) != float("inf")
    mem_gb = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return dict(ok=ok, ms=ms, clips_s=PAPER["batch"] / ms * 1e3, mem_gb=mem_gb, note="" if ok else f"loss {loss}")


def _nccl_worker(rank: int, world: int, port: int, out, backend: str = "nccl") -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = backend == "nccl"
    dev = torch.device("cuda", rank) if cuda else torch.device("cpu")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.set_device(dev)
    tdist.init_process_group(
        backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60), device_id=dev if cuda else None
    )
    t = torch.full((64 * 2**20 // 4,), float(rank + 1), device=dev)  # 64 MiB, about FCN-4's gradients
    tdist.all_reduce(t)
    sync()
    t0 = time.perf_counter()
    for _ in range(5):
        tdist.all_reduce(t)
    sync()
    s = (time.perf_counter() - t0) / 5
    want = float(sum(range(1, world + 1))) * world**5  # 1 + 5 all-reduces of a constant tensor
    out.put((rank, abs(float(t[0]) - want) <= 1e-3 * want, s))
    tdist.destroy_process_group()


def _nccl(n_gpus: int, backend: str = "nccl") -> dict:
    world = min(2, n_gpus)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_nccl_worker, args=(r, world, port, q, backend)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        if p.is_alive():
            p.kill()
    got = []
    while len(got) < world:
        try:
            got.append(q.get(timeout=1))
        except Exception:  # noqa: BLE001 - queue.Empty: a worker died without an answer
            break
    ok = len(got) == world and all(g[1] for g in got) and all(p.exitcode == 0 for p in procs)
    s = max((g[2] for g in got), default=float("nan"))
    return dict(
        ok=ok,
        world=world,
        s=s,
        gb_s=64 / 1024 / s if s == s and s > 0 else float("nan"),
        note="" if ok else f"exit codes {[p.exitcode for p in procs]}, results {got}",
    )


def _loader(step_clips_s: float, device: str = "cuda") -> dict:
    p = FrontEndParams()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "smoke.h5"
        rng = np.random.default_rng(0)
        n = LOADER_CLIPS
        chunks = (
            {"mel": rng.standard_normal((64, p.rows("mel"), p.n_frames)).astype(np.float16)} for _ in range(n // 64)
        )
        write_store(
            path,
            dataset="mtat",
            tags=[f"t{i}" for i in range(50)],
            params=p,
            inputs=["mel"],
            clip_ids=[f"c{i:05d}" for i in range(n)],
            paths=[""] * n,
            splits=["train"] * n,
            labels=np.zeros((n, 50), np.uint8),
            feature_chunks=chunks,
        )
        ds = FeatureDataset(path, "mel", "train")
        dl = DataLoader(
            Batches(ds),
            batch_size=None,
            num_workers=LOADER_WORKERS,
            pin_memory=device == "cuda",
            sampler=BatchSampler(SequentialSampler(range(n)), PAPER["batch"], drop_last=False),
        )
        t0 = time.perf_counter()
        seen = 0
        for x, _, _ in dl:
            x.to(device, non_blocking=True)
            seen += len(x)
        if device == "cuda":
            torch.cuda.synchronize()
        clips_s = seen / (time.perf_counter() - t0)
    ok = clips_s >= step_clips_s
    return dict(
        ok=ok, clips_s=clips_s, note="" if ok else f"slower than the bf16 FCN-4 step ({step_clips_s:,.0f} clips/s)"
    )


def run() -> int:
    line = no_gpu_line()
    if line:
        print(line, file=sys.stderr)
        return 2

    n = torch.cuda.device_count()
    print(
        f"GPU smoke check: {n} × {torch.cuda.get_device_name(0)}, torch {torch.__version__} (CUDA "
        f"{torch.version.cuda}), cuDNN {torch.backends.cudnn.version()}",
        flush=True,
    )
    rows, fixes, fcn4 = [], [], float("nan")
    for depth in (3, 4, 5, 6, 7):
        for inp in ("mel", "stft", "mfcc"):
            for prec in ("bf16", "fp32"):
                try:
                    r = _step(depth, inp, prec)
                except Exception as e:  # noqa: BLE001 - one failing cell must not hide the others
                    r = dict(
                        ok=False,
                        ms=float("nan"),
                        clips_s=float("nan"),
                        mem_gb=float("nan"),
                        note=f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:80]}",
                    )
                rows.append(
                    (
                        f"step FCN-{depth} {inp} {prec}",
                        r["ok"],
                        f"{r['ms']:.1f} ms, {r['clips_s']:,.0f} clips/s, {r['mem_gb']:.1f} GiB",
                        r["note"],
                    )
                )
                if (depth, inp, prec) == (4, "mel", "bf16"):
                    fcn4 = r["clips_s"]
                torch.cuda.empty_cache()
    if not all(ok for _, ok, _, _ in rows):
        fixes.append(
            "a training step failed: read its note; out of memory at batch 16 means a smaller GPU than "
            "planned (use --batch-size 8 with --sync-bn on over 2 GPUs)"
        )
    try:
        r = _nccl(n)
    except Exception as e:  # noqa: BLE001
        r = dict(ok=False, world=min(2, n), s=float("nan"), gb_s=float("nan"), note=f"{type(e).__name__}: {e}")
    rows.append(
        (
            f"NCCL all-reduce, {r['world']} process(es), 64 MiB",
            r["ok"],
            f"{r['s'] * 1e3:.1f} ms, {r['gb_s']:.1f} GB/s",
            r["note"],
        )
    )
    if not r["ok"]:
        fixes.append(
            "NCCL failed: rerun with NCCL_DEBUG=INFO; check that every GPU is visible "
            "(CUDA_VISIBLE_DEVICES) and that NCCL_SOCKET_IFNAME names a working interface"
        )
    try:
        r = _loader(fcn4 if fcn4 == fcn4 else 0.0)
    except Exception as e:  # noqa: BLE001
        r = dict(ok=False, clips_s=float("nan"), note=f"{type(e).__name__}: {e}")
    rows.append(
        (
            f"loader, {LOADER_WORKERS} workers, float16 HDF5 in a temp dir",
            r["ok"],
            f"{r['clips_s']:,.0f} clips/s",
            r["note"],
        )
    )
    if not r["ok"]:
        fixes.append(
            "the loader cannot feed one GPU: put the store on local disk (or in page cache), raise "
            "--num-workers and --cpus-per-task with it"
        )
    width = max(len(name) for name, *_ in rows)
    print(f"{'check':<{width}}  ok?   figure  note")
    for name, ok, fig, note in rows:
        print(f"{name:<{width}}  {'yes' if ok else 'NO '}   {fig}  {note}")
    print("what to fix: " + ("nothing" if not fixes else ""))
    for f in fixes:
        print(f"  - {f}")
    return 0 if not fixes else 1
