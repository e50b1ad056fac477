"""Run cells on this machine: a pool of worker processes, each training one cell at a time with its share of cores.

Workers are reused across cells (torch is imported once per worker, not per cell), and die with the harness
(PR_SET_PDEATHSIG), so killing the harness never leaves an orphan training a cell behind a rerun's back.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback

from fcn.config import RunConfig


def _init_worker(gpus=None) -> None:
    """Each pool worker dies with the harness and, on a GPU machine, owns one GPU: worker i sees only GPU i, so its
    cells train on it (as cuda:0 of its visible set) instead of every cell on cuda:0."""
    _die_with_parent()
    if gpus is not None:
        import queue

        try:
            os.environ["CUDA_VISIBLE_DEVICES"] = gpus.get(timeout=30)
        except queue.Empty:  # a replacement worker after all GPUs were handed out: keep the parent's view
            pass


def visible_gpus(device: str) -> list[str]:
    """The GPU ids the local workers share out (CUDA_VISIBLE_DEVICES's entries, else 0..n-1); none on CPU."""
    if device == "cpu":
        return []
    try:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        return []
    ids = [x.strip() for x in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if x.strip()]
    return (ids or [str(i) for i in range(n)])[:n]


def _die_with_parent() -> None:
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: an orphan finishes its cell; the cell lock still keeps a rerun off it


def _run_cell(config_dict: dict) -> dict:
    """One cell in a worker; its log goes to the run directory so parallel cells don't interleave on the terminal."""
    from fcn.errors import UserError
    from fcn.cell import run_dir
    from fcn.train import train

    config = RunConfig.from_dict(config_dict)
    rdir = run_dir(config)
    rdir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(rdir / "worker.log", "a") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
        try:
            result = train(config)
            return {"key": config.key, "ok": True, "result": {k: v for k, v in result.items() if k != "config"},
                    "wall_s": time.time() - t0}
        except UserError as e:
            return {"key": config.key, "ok": False, "error": str(e), "wall_s": time.time() - t0}
        except Exception as e:  # noqa: BLE001 - one failed cell must not stop the grid
            traceback.print_exc()
            return {"key": config.key, "ok": False, "error": f"{type(e).__name__}: {e} (see {rdir / 'worker.log'})",
                    "wall_s": time.time() - t0}


def pool(parallel: int, gpus: list[str]):
    """The worker pool; with GPUs, one per worker (round-robin when there are more workers than GPUs)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("spawn")  # fork would copy the parent's torch threads and locks
    q = None
    if gpus:
        q = ctx.Queue()
        for i in range(parallel):
            q.put(gpus[i % len(gpus)])
    return ProcessPoolExecutor(parallel, mp_context=ctx, initializer=_init_worker, initargs=(q,))


def run(configs: list[RunConfig], *, parallel: int, progress: bool = True) -> list[dict]:
    """Train every cell; returns one outcome dict per cell (key, ok, result or error, wall_s)."""
    from concurrent.futures import as_completed

    from tqdm import tqdm

    outcomes = []
    bar = tqdm(total=len(configs), unit="cell", desc="grid (local)", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    if parallel <= 1:
        for c in configs:
            outcomes.append(_run_cell(c.to_dict()))
            _report(bar, outcomes[-1])
    else:
        with pool(parallel, visible_gpus(configs[0].device) if configs else []) as ex:
            futures = [ex.submit(_run_cell, c.to_dict()) for c in configs]
            for f in as_completed(futures):
                outcomes.append(f.result())
                _report(bar, outcomes[-1])
    bar.close()
    return outcomes


def _report(bar, o: dict) -> None:
    if o["ok"]:
        bar.write(f"  {o['key']}: test ROC-AUC {o['result']['test_roc_auc']:.4f} ({o['wall_s']:.0f} s)",
                  file=sys.stderr)
    else:
        bar.write(f"  {o['key']}: FAILED: {o['error']}", file=sys.stderr)
    bar.update(1)


def default_parallel(device: str) -> int:
    """On CPU one single-threaded cell per core beats one multi-threaded cell (small convs scale badly)."""
    if device != "cpu":
        try:
            import torch

            if torch.cuda.is_available():
                return max(1, torch.cuda.device_count())
        except ImportError:
            pass
    return max(1, os.cpu_count() or 1)
