"""`python -m harness.grid --cluster slurm ... --plan`: what each cell's job will need, before anything is submitted.

Per cell: the store (its path, whether it exists, its size or the size it will have), the cell's data and where it
will live on a node (mapped once per node within the job's memory, or streamed: fcn/memory.py, fcn/store.py), the
global and per-process batch (fcn/batching.py), the expected epoch time from a MEASURED throughput (`--clips-per-s`,
what `python -m bench --gpu-smoke` prints for FCN-4 mel on the GPU) or "not measured on this GPU", and the time limit
with the requeues it implies. What cannot work (a global batch under one clip per process, more requeues than
submitit allows) is refused with one line and a non-zero exit. Needs no cluster, no MLflow and no GPU.
"""

from __future__ import annotations

import math
from pathlib import Path

import h5py

from fcn.batching import plan_batch
from fcn.config import RunConfig
from fcn.errors import UserError
from fcn.frontends import INPUTS
from fcn.memory import IN_MEMORY_FRACTION
from fcn.models import FCN, forward_macs
from fcn.run_store import is_current, store_path
from harness.backends.slurm import SlurmOptions

GB = 1e9
# submitit gives up on a job after this many timeouts (its executor's max_num_timeout default): a cell that needs more
# time limits than this cannot finish under submitit.
SUBMITIT_MAX_TIMEOUTS = 3
# Clips per split when the store does not exist yet [C]: MTAT's clean split (Lee/Won), Choi's MSD split (PAPER.md).
# MTAT's folder split is counted as 12/16, 1/16 and 3/16 of the 25,863 clips (folders 0-b / c / d-f): an estimate.
NOMINAL_CLIPS = {
    ("mtat", "clean"): (15_244, 1_529, 4_332),
    ("mtat", "folder"): (19_397, 1_616, 4_849),
    ("msd", "choi"): (201_680, 12_634, 28_540),
}


def split_clips(config: RunConfig) -> tuple[tuple[int, int, int], str]:
    """(train, valid, test) clips of the cell's store, counted in it when it exists, else nominal; and which."""
    path = store_path(config)
    if is_current(path):
        with h5py.File(path, "r") as h:
            splits = h["split"].asstr()[:]
        return tuple(int((splits == s).sum()) for s in ("train", "valid", "test")), "counted in the store"
    split = config.split if config.dataset == "mtat" else "choi"
    if not config.data_root:
        n = config.synth_clips
        return (n * 8 // 10, n // 10, n - n * 8 // 10 - n // 10), "nominal: built-in synthetic set"
    return NOMINAL_CLIPS[(config.dataset, split)], f"nominal: {config.dataset.upper()} {split} split"


def _gb(n: float) -> str:
    return f"{n / GB:,.1f} GB" if n >= 0.1 * GB else f"{n / 1e6:,.1f} MB"


def _dur(s: float) -> str:
    return f"{s / 60:,.0f} min" if s < 5400 else f"{s / 3600:,.1f} h"


def cell_plan(config: RunConfig, opts: SlurmOptions, clips_per_s: float) -> list[str]:
    """The plan's lines for one cell; a UserError for what cannot work."""
    world, per_node = opts.nodes * opts.ntasks, opts.ntasks
    batch = plan_batch(config.batch_size, world, opts.gpus_per_node > 0 and config.sync_bn != "off")
    fe = config.frontend
    row_bytes = fe.rows(config.input) * fe.n_frames * 2  # float16
    (n_train, n_valid, n_test), counted = split_clips(config)
    n_train_used = max(1, round(n_train * config.train_fraction)) if config.train_fraction < 1 else n_train
    data = (n_train_used + n_valid + n_test) * row_bytes
    path = store_path(config)
    n_all = n_train + n_valid + n_test
    if is_current(path):
        store = f"{path}: exists, {_gb(path.stat().st_size)}"
    else:
        size = n_all * sum(fe.rows(k) for k in INPUTS) * fe.n_frames * 2
        store = (
            f"{path}: missing, ≈{_gb(size)} (all three inputs); built first by a CPU job "
            f"({opts.store_cpus} CPUs, {opts.store_time_min} min) that the cell's job waits for"
        )
    if opts.mem_gb:
        budget = IN_MEMORY_FRACTION * opts.mem_gb * (1 << 30)
        where = (
            f"held: mapped once per node from the store, shared by its {per_node} process(es)"
            if data <= budget
            else f"streamed from the store (over the {IN_MEMORY_FRACTION:.0%} of --mem-gb {opts.mem_gb} it may hold)"
        )
        memory = f"{_gb(data)} of {config.input} features per node ({where})"
    else:
        memory = (
            f"{_gb(data)} of {config.input} features per node, held if within {IN_MEMORY_FRACTION:.0%} of the "
            "job's memory (no --mem-gb: Slurm's default, unknown here)"
        )
    lines = [
        f"  store    {store}",
        f"  data     {n_train_used:,} train + {n_valid:,} valid + {n_test:,} test clips ({counted}) × "
        f"{fe.rows(config.input)} × {fe.n_frames} float16",
        f"  memory   {memory}",
        f"  batch    {batch.describe()} clips per step ({opts.nodes} node(s) × {per_node} process(es))",
    ]
    limit_s = opts.time_min * 60 - opts.signal_delay_s
    if clips_per_s <= 0:
        lines += [
            "  epoch    not measured on this GPU (run `python -m bench --gpu-smoke` on one, then --clips-per-s)",
            f"  time     limit {opts.time_min} min per job; requeues: unknown until the throughput is measured "
            f"(submitit allows {SUBMITIT_MAX_TIMEOUTS})",
        ]
        return lines
    # the measured FCN-4 mel figure of one GPU, scaled by this cell's multiply-adds and by the process count (linear
    # scaling assumed: an upper bound on speed)
    macs4 = forward_macs(FCN(4, config.width), fe.rows("mel"), fe.n_frames)
    macs = forward_macs(FCN(config.depth, config.width), fe.rows(config.input), fe.n_frames)
    rate = clips_per_s * macs4 / macs * world
    epoch_s = n_train_used / rate + n_valid / (3 * rate)  # validation: forward only, a third of a training clip
    total_s = config.epochs * epoch_s
    jobs = max(1, math.ceil(total_s / max(1, limit_s)))
    lines += [
        f"  epoch    ≈{_dur(epoch_s)} ({clips_per_s:,.0f} FCN-4 mel clips/s per GPU measured, ≈{rate:,.0f} clips/s for "
        f"this cell on {world} GPU(s)); {config.epochs} epochs at most ≈{_dur(total_s)}",
        f"  time     limit {opts.time_min} min per job: {jobs} job(s), {jobs - 1} requeue(s) at the limit "
        f"(submitit allows {SUBMITIT_MAX_TIMEOUTS})",
    ]
    if jobs - 1 > SUBMITIT_MAX_TIMEOUTS:
        raise UserError(
            f"{config.key}: ≈{_dur(total_s)} of training needs {jobs - 1} requeues at --time-min {opts.time_min}, "
            f"more than submitit's {SUBMITIT_MAX_TIMEOUTS}: use --time-min {math.ceil(total_s / 60 / 4) + 10} or more"
        )
    return lines


def print_plan(cells: list[RunConfig], opts: SlurmOptions, clips_per_s: float = 0.0) -> int:
    """Every cell's plan (all checked before any line is printed, so a refusal prints only its one line)."""
    blocks = [(c.key, cell_plan(c, opts, clips_per_s)) for c in cells]
    gpus = f"{opts.gpus_per_node} GPU(s)" if opts.gpus_per_node else "no GPU"
    mem = f"--mem {opts.mem_gb} GB" if opts.mem_gb else "Slurm's default --mem"
    print(
        f"plan: {len(cells)} cell(s) on Slurm, each a job of {opts.nodes} node(s) × {opts.ntasks} process(es), "
        f"{gpus} per node, {mem} per node, time limit {opts.time_min} min; nothing submitted"
    )
    for key, lines in blocks:
        print(key)
        print("\n".join(lines))
    return 0


def stores_of(cells: list[RunConfig]) -> dict[Path, RunConfig]:
    """One config per distinct store of the cells (a store holds every input of one data set)."""
    out: dict[Path, RunConfig] = {}
    for c in cells:
        out.setdefault(store_path(c), c)
    return out
