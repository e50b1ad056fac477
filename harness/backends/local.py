"""Run cells on this machine: a pool of worker processes, each training one cell at a time with its share of cores.

Workers are reused across cells (torch is imported once per worker, not per cell), and die with the harness
(PR_SET_PDEATHSIG), so killing the harness never leaves an orphan training a cell behind a rerun's back.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import queue
import signal
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

import torch
from tqdm import tqdm

from fcn.config import RunConfig
from fcn.errors import UserError
from fcn.flags import option
from harness.job import Outcome, run_cell


@dataclass(frozen=True)
class LocalOptions:
    """Where cells run on this machine: how many at once."""

    parallel: int = option(0, "cells at once; 0 = one per core, or one per GPU")


def _init_worker(gpus=None) -> None:
    """Each pool worker dies with the harness and, on a GPU machine, owns one GPU: worker i sees only GPU i, so its
    cells train on it (as cuda:0 of its visible set) instead of every cell on cuda:0."""
    _die_with_parent()
    if gpus is not None:
        try:
            os.environ["CUDA_VISIBLE_DEVICES"] = gpus.get(timeout=30)
        except queue.Empty:  # a replacement worker after all GPUs were handed out: keep the parent's view
            pass


def visible_gpus(device: str) -> list[str]:
    """The GPU ids the local workers share out (CUDA_VISIBLE_DEVICES's entries, else 0..n-1); none on CPU."""
    if device == "cpu":
        return []
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    ids = [x.strip() for x in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if x.strip()]
    return (ids or [str(i) for i in range(n)])[:n]


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: an orphan finishes its cell; the cell lock still keeps a rerun off it


def _run_cell(config_dict: dict):
    """One cell in a worker (configs cross the process boundary as dicts)."""
    return run_cell(RunConfig.from_dict(config_dict))


def pool(parallel: int, gpus: list[str]):
    """The worker pool; with GPUs, one per worker (round-robin when there are more workers than GPUs)."""
    ctx = mp.get_context("spawn")  # fork would copy the parent's torch threads and locks
    q = None
    if gpus:
        q = ctx.Queue()
        for i in range(parallel):
            q.put(gpus[i % len(gpus)])
    return ProcessPoolExecutor(parallel, mp_context=ctx, initializer=_init_worker, initargs=(q,))


def check(opts: LocalOptions, cells: list[RunConfig]) -> None:
    if opts.parallel < 0:
        raise UserError(f"--parallel {opts.parallel}: give a number of cells at once, or 0 for one per core or GPU")


def where(opts: LocalOptions) -> str:
    return "this machine"


def run(configs: list[RunConfig], opts: LocalOptions, *, progress: bool = True) -> list[Outcome]:
    """Train every cell, `opts.parallel` at a time, each with its share of the cores; one Outcome per cell."""
    parallel = min(opts.parallel or default_parallel(configs[0].device), len(configs))
    threads = configs[0].threads or max(1, (os.cpu_count() or 1) // parallel)
    configs = [c.replace(threads=threads) for c in configs]
    outcomes = []
    bar = tqdm(
        total=len(configs), unit="cell", desc="grid (local)", disable=not progress, file=sys.stderr, dynamic_ncols=True
    )
    if parallel <= 1:
        for c in configs:
            outcomes.append(_run_cell(c.to_dict()))
            _report(bar, outcomes[-1])
    else:
        with pool(parallel, visible_gpus(configs[0].device)) as ex:
            futures = [ex.submit(_run_cell, c.to_dict()) for c in configs]
            for f in as_completed(futures):
                outcomes.append(f.result())
                _report(bar, outcomes[-1])
    bar.close()
    return outcomes


def _report(bar, o: Outcome) -> None:
    bar.write(f"  {o.line()}", file=sys.stderr)
    bar.update(1)


def default_parallel(device: str) -> int:
    """On CPU one single-threaded cell per core beats one multi-threaded cell (small convs scale badly)."""
    if device != "cpu":
        if torch.cuda.is_available():
            return max(1, torch.cuda.device_count())
    return max(1, os.cpu_count() or 1)
