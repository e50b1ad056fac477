"""Distributed set-up: one code path for a single process, torchrun, and srun (Slurm tasks).

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT. srun sets SLURM_PROCID / SLURM_NTASKS /
SLURM_LOCALID but no rendezvous (FACTS.md), so the first node of the job is the master and the port is derived from the
job id (the sbatch scripts export the same values). gloo on CPU, NCCL on CUDA.
"""
from __future__ import annotations

import datetime
import os
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from fcn.errors import UserError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def master_port(job_id: str | int) -> int:
    """A port derived from the Slurm job id, so concurrent jobs on one node do not collide."""
    return 15000 + int(job_id) % 20000


def first_node(nodelist: str) -> str:
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return nodelist.split(",")[0].split("[")[0]  # a single node, or a best guess without scontrol


def _launcher_env() -> tuple[int, int, int, int]:
    """(rank, world, local_rank, local_world) from torchrun's or srun's variables; (0, 1, 0, 1) when neither."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        world = int(env["WORLD_SIZE"])
        return int(env["RANK"]), world, int(env.get("LOCAL_RANK", 0)), int(env.get("LOCAL_WORLD_SIZE", world))
    ntasks = int(env.get("SLURM_NTASKS", "1") or 1)
    if ntasks > 1 and "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:
        env.setdefault("MASTER_ADDR", first_node(env.get("SLURM_JOB_NODELIST", "localhost")))
        env.setdefault("MASTER_PORT", str(master_port(env.get("SLURM_JOB_ID", "0"))))
        nnodes = int(env.get("SLURM_JOB_NUM_NODES", env.get("SLURM_NNODES", "1")) or 1)
        local_world = int(env.get("SLURM_NTASKS_PER_NODE", "0").split("(")[0] or 0) or max(1, ntasks // nnodes)
        return int(env["SLURM_PROCID"]), ntasks, int(env.get("SLURM_LOCALID", 0)), local_world
    return 0, 1, 0, 1


def _check_gpus(local_world: int, want_cuda: bool) -> None:
    """A GPU request that does not match the processes per node is an error at start, never a hang."""
    gpus_on_node = os.environ.get("SLURM_GPUS_ON_NODE")
    # Only training processes launched as srun tasks (or by torchrun) are held to one process per GPU: a single
    # process inside a GPU job, such as a Ray trial or a local grid under sbatch, may use the GPUs as it likes.
    launched = os.environ.get("SLURM_STEP_ID", "").isdigit() or "LOCAL_WORLD_SIZE" in os.environ
    if gpus_on_node and launched and int(gpus_on_node) != local_world:
        raise UserError(
            f"this Slurm job has {gpus_on_node} GPU(s) per node but runs {local_world} training process(es) per "
            f"node: set --ntasks-per-node equal to --gpus-per-node (one process per GPU)")
    if want_cuda and torch.cuda.device_count() < local_world:
        raise UserError(f"{local_world} processes per node need {local_world} GPUs but "
                        f"{torch.cuda.device_count()} are visible (CUDA_VISIBLE_DEVICES="
                        f"{os.environ.get('CUDA_VISIBLE_DEVICES', '')!r})")


def setup(device: str = "auto") -> Dist:
    rank, world, local_rank, local_world = _launcher_env()
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is visible; use --device auto or cpu")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    _check_gpus(local_world, use_cuda)
    dev = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not tdist.is_initialized():
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise UserError(f"{var} is not set for a {world}-process run: launch with torchrun or srun")
        tdist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world,
                                 timeout=datetime.timedelta(minutes=30), device_id=dev if use_cuda else None)
    return Dist(rank, world, local_rank, local_world, dev)


def gather(obj, d: Dist) -> list:
    """Every rank's `obj` on every rank (predictions are small next to the model)."""
    if d.world == 1:
        return [obj]
    out = [None] * d.world
    tdist.all_gather_object(out, obj)
    return out


def broadcast(obj, d: Dist):
    """Rank 0's `obj` on every rank (e.g. the early-stopping decision)."""
    if d.world == 1:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(d: Dist) -> None:
    if d.world > 1:
        tdist.barrier()


def cleanup() -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()
