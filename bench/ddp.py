"""DDP: samples/s of one training process vs two (gloo on CPU, NCCL on GPUs), same model, same global batch.

Scale (reduced to fit the time budget): FCN-4 at full width on full 96×1366 clips, so the per-clip compute and the
gradient all-reduce (17.4 M parameters, 69.5 MB per step) are the paper's, but a CPU global batch of 8 instead of 16:
one process × 8 clips × all cores' threads vs two processes × 4 clips × half the threads each. On GPUs each process
keeps batch 16 (one GPU vs two). Both sides use the glibc + mallopt allocator (bench.common.ALLOCATORS), the one
this project proposes for fcn.train. After the timed steps the replicas' parameters are compared: DDP must keep them
identical. The step is fcn.train.train_step itself.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bench.common import NO_GPU, Row, Section, allocator_env, apply_allocator, fmt_rate, median, run_worker, worker_main
from fcn.config import RunConfig
from fcn.models import FCN
from fcn.train import train_step

CPU_GLOBAL_BATCH = 8
GPU_BATCH = 16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, spec: dict, port: int, out: str) -> None:
    """One DDP process: init, identical initial weights, timed steps, parameter check, rank 0 writes the result."""
    apply_allocator(spec["allocator"])
    world = spec["nproc"]
    cuda = spec["device"] == "cuda"
    dev = torch.device(f"cuda:{rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(dev)
    else:
        torch.set_num_threads(spec["threads"])
    if world > 1:
        dist.init_process_group(
            "nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
        )
    torch.manual_seed(0)  # identical initial weights on every rank, as fcn.train does
    model = FCN(4, spec["width"]).to(dev).to(memory_format=torch.channels_last)
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank] if cuda else None) if world > 1 else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1 + rank)  # each rank its own data
    b = spec["batch"]
    x = torch.randn(b, 1, 96, 1366, generator=g).to(dev).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(b, 50, generator=g) < 0.1).float().to(dev)
    config = RunConfig()  # amp auto, as fcn.train runs: bf16 autocast on CUDA, fp32 on CPU

    def step():
        train_step(net, opt, x, y, config, dev).item()  # fcn.train's own step; DDP all-reduces in its backward

    times = []
    for i in range(spec["warmup"] + spec["steps"]):
        if world > 1:
            dist.barrier()
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        if i >= spec["warmup"]:
            times.append(time.perf_counter() - t0)
    same = True
    if world > 1:
        flat = torch.cat([p.detach().flatten() for p in model.parameters()]).double()
        sums = [torch.zeros(2, dtype=torch.float64, device=dev) for _ in range(world)]
        dist.all_gather(sums, torch.stack([flat.sum(), (flat * flat).sum()]))
        same = all(torch.equal(s, sums[0]) for s in sums)
        dist.destroy_process_group()
    if rank == 0:
        Path(out).write_text(
            json.dumps(dict(step_s=times, samples_per_s=world * b / median(times), replicas_identical=same))
        )


def worker(spec: dict) -> dict:
    with tempfile.TemporaryDirectory() as d:
        out = str(Path(d) / "rank0.json")
        if spec["nproc"] == 1:
            _rank(0, spec, 0, out)
        else:
            mp.start_processes(_rank, args=(spec, _free_port(), out), nprocs=spec["nproc"], start_method="spawn")
        return json.loads(Path(out).read_text())


def run(quick: bool = False) -> Section:
    sec = Section("ddp", "5. DDP: one process vs two, FCN-4 (full width, 96×1366), same global batch")
    cores = os.cpu_count() or 1
    warmup, steps = (1, 2) if quick else (1, 3)
    alloc = "glibc-keep"
    common = dict(device="cpu", width=0.25 if quick else 1.0, warmup=warmup, steps=steps, allocator=alloc)
    one = run_worker(
        "ddp", dict(common, nproc=1, threads=cores, batch=CPU_GLOBAL_BATCH), env=allocator_env(alloc), timeout=900
    )
    two = run_worker(
        "ddp",
        dict(common, nproc=2, threads=max(1, cores // 2), batch=CPU_GLOBAL_BATCH // 2),
        env=allocator_env(alloc),
        timeout=900,
    )
    ratio = two["samples_per_s"] / one["samples_per_s"]
    why = (
        "≈ 1×: DDP costs nothing on the same cores"
        if 0.85 <= ratio <= 1.15
        else "one thread per process beats two threads in one process here: a multi-threaded op waits for its slowest "
        "thread at every step, and these cores are shared with other jobs"
        if ratio > 1.15
        else "DDP (all-reduce, two model copies) costs more than it gains on the same cores"
    )
    sec.rows.append(
        Row(
            f"CPU, gloo: 2 processes × {max(1, cores // 2)} thread(s) × batch {CPU_GLOBAL_BATCH // 2}",
            fmt_rate(two["samples_per_s"], "samples/s"),
            f"1 process × {cores} threads × batch {CPU_GLOBAL_BATCH}: {fmt_rate(one['samples_per_s'], 'samples/s')}",
            f"{ratio:.2f}×",
            "—",
            None,
            f"replicas identical after the steps: {'yes' if two['replicas_identical'] else '**NO**'}; {why}"
            + ("; quick: width 0.25" if quick else ""),
        )
    )
    sec.rows.append(_gpu_row(quick))
    sec.details = (
        f"Step times (s): 1 process {', '.join(f'{t:.2f}' for t in one['step_s'])}; 2 processes "
        f"{', '.join(f'{t:.2f}' for t in two['step_s'])}. {warmup} warm-up + {steps} timed steps; a "
        f"barrier before each step so ranks start together."
    )
    return sec


def _gpu_row(quick: bool) -> Row:
    name = "GPU, NCCL: 2 GPUs × batch 16 (bf16, channels_last)"
    try:
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        n = 0
    if n == 0:
        return Row(name, f"not run: {NO_GPU}")
    if n < 2:
        return Row(name, f"not run: {n} GPU visible, 2 needed")
    spec = dict(
        device="cuda", width=1.0, warmup=5, steps=10 if quick else 30, allocator="glibc", threads=1, batch=GPU_BATCH
    )
    one = run_worker("ddp", dict(spec, nproc=1), timeout=900)
    two = run_worker("ddp", dict(spec, nproc=2), timeout=900)
    return Row(
        name,
        fmt_rate(two["samples_per_s"], "samples/s"),
        f"1 GPU × batch 16: {fmt_rate(one['samples_per_s'], 'samples/s')}",
        f"{two['samples_per_s'] / one['samples_per_s']:.2f}×",
        "≈ 2× (two GPUs)",
        None,
        f"replicas identical: {'yes' if two['replicas_identical'] else '**NO**'}",
    )


if __name__ == "__main__":
    worker_main(worker)
