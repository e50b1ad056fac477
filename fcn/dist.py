"""Distributed set-up: one code path for a single process, torchrun, and srun (Slurm tasks).

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT. srun sets SLURM_PROCID / SLURM_NTASKS /
SLURM_LOCALID but no rendezvous (no MASTER_ADDR: docs/MEASURED.md), so the first node of the job is the master and the
port is derived from the job id (the sbatch scripts ask `python -m fcn.dist job` for the same values). gloo on CPU, NCCL
on CUDA.
"""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fcn.errors import UserError, run_cli

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that need it: `python -m fcn.dist job`, which every sbatch script runs
# before its tasks start, answers with the Slurm rules alone and would otherwise pay torch's import (~2 s of CPU) per
# job: a 30-job sweep, a minute of a node's CPU before any training.


def _cpu():
    import torch

    return torch.device("cpu")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    device: torch.device = field(default_factory=_cpu)

    @property
    def main(self) -> bool:
        return self.rank == 0


# Rendezvous port of an srun-launched job: PORT_BASE + job id % PORT_SPAN, so concurrent jobs on one node rarely
# collide. [D] 20000-26999: below Linux's ephemeral range (32768-60999, where the OS hands out client ports that
# could already hold the number), away from torchrun's default 29500, and free of the usual services (MongoDB 27017,
# Slurm 6817-6819). The sbatch scripts ask `python -m fcn.dist` for it rather than repeating the rule in bash.
PORT_BASE = 20000
PORT_SPAN = 7000

# torch's default (30 min) for the training collectives: a slow store build or a long first epoch on one rank must
# not kill the job. The end-of-run failures that used to wait that long (a rank that raised, a dead MLflow server at
# the end) are handled by srun --kill-on-bad-exit and by synchronising before rank 0's side effects (fcn/train.py).
TIMEOUT = datetime.timedelta(minutes=30)


def master_port(job_id: str | int) -> int:
    """A port derived from the Slurm job id, so concurrent jobs on one node do not collide."""
    return PORT_BASE + int(job_id) % PORT_SPAN


def expand_hostlist(hostlist: str) -> list[str]:
    """Slurm's compressed host list, expanded as `scontrol show hostnames` does: "n[1-3,5],login1" → n1 n2 n3 n5
    login1; "gpu[01-02]" keeps the zero padding (gpu01 gpu02). Also several bracket groups ("r[1-2]n[1-2]")."""
    hosts: list[str] = []
    for name in _split_top(hostlist):
        parts = [""]
        for literal, ranges in re.findall(r"([^\[\]]*)(?:\[([^\]]*)\])?", name):
            parts = [p + literal for p in parts]
            if ranges:
                parts = [p + x for p in parts for x in _expand_ranges(ranges)]
        hosts += [p for p in parts if p]
    return hosts


def _split_top(hostlist: str) -> list[str]:
    """Split at commas outside brackets."""
    out, depth, cur = [], 0, ""
    for ch in hostlist.strip():
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return [x for x in out + [cur] if x]


def _expand_ranges(ranges: str) -> list[str]:
    out = []
    for r in ranges.split(","):
        lo, _, hi = r.partition("-")
        if not hi:
            out.append(lo)
            continue
        width = len(lo) if lo.startswith("0") else 0
        out += [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    return out


def first_node(nodelist: str) -> str:
    """The job's first node (the rendezvous master): `scontrol show hostnames`, else the same expansion in Python
    (containers often lack scontrol; the old guess turned gpu[01-02] into the host "gpu")."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    hosts = expand_hostlist(nodelist)
    return hosts[0] if hosts else "localhost"


def slurm_nodes(env=None) -> int:
    env = os.environ if env is None else env
    return int(env.get("SLURM_JOB_NUM_NODES", env.get("SLURM_NNODES", "1")) or 1)


def slurm_tasks_per_node(env=None) -> int:
    """Tasks per node of a Slurm job or step: --ntasks-per-node, else Slurm's per-node count ("2(x2)" or "2,1": the
    first node's), else the tasks spread evenly over the nodes."""
    env = os.environ if env is None else env
    given = re.split(r"[(,]", env.get("SLURM_NTASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or "")[0]
    if given.isdigit() and int(given) > 0:
        return int(given)
    return max(1, int(env.get("SLURM_NTASKS", "1") or 1) // slurm_nodes(env))


def _launcher_env() -> tuple[int, int, int, int]:
    """(rank, world, local_rank, local_world) from torchrun's or srun's variables; (0, 1, 0, 1) when neither.

    srun tasks (an sbatch script's, or a submitit job's: the same path) get their rendezvous from `rendezvous()`."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        world = int(env["WORLD_SIZE"])
        return int(env["RANK"]), world, int(env.get("LOCAL_RANK", 0)), int(env.get("LOCAL_WORLD_SIZE", world))
    ntasks = int(env.get("SLURM_NTASKS", "1") or 1)
    if ntasks > 1 and "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:
        addr, port = rendezvous(env)
        env.setdefault("MASTER_ADDR", addr)
        env.setdefault("MASTER_PORT", str(port))
        return int(env["SLURM_PROCID"]), ntasks, int(env.get("SLURM_LOCALID", 0)), slurm_tasks_per_node(env)
    return 0, 1, 0, 1


def gpus_allocated(env=None) -> bool:
    """Whether this process was given GPUs (a Slurm GPU job, or CUDA_VISIBLE_DEVICES naming devices), whatever torch
    makes of them. An explicitly empty CUDA_VISIBLE_DEVICES (or -1) means "no GPU here" and wins."""
    env = os.environ if env is None else env
    if "CUDA_VISIBLE_DEVICES" in env:
        v = env["CUDA_VISIBLE_DEVICES"].strip()
        return bool(v) and v not in ("-1", "NoDevFiles")
    on_node = env.get("SLURM_GPUS_ON_NODE", "").strip()
    return (
        (on_node.isdigit() and int(on_node) > 0)
        or bool(env.get("SLURM_JOB_GPUS", "").strip())
        or bool(env.get("SLURM_STEP_GPUS", "").strip())
    )


def driver_version() -> str:
    """The loaded NVIDIA kernel driver's version, or a phrase saying it is not there."""
    try:
        text = open("/proc/driver/nvidia/version").read()
        m = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9][0-9.]+)", text)
        return f"NVIDIA driver {m.group(1)}" if m else "an NVIDIA driver of unknown version"
    except OSError:
        return "no NVIDIA kernel driver loaded (/proc/driver/nvidia/version is missing)"


def check_cuda_usable(env=None) -> None:
    """--device auto with GPUs allocated but CUDA unusable must stop, not quietly train on the CPU: torch only warns
    when its CUDA build is newer than the driver supports (torch 2.11's cu130 build needs a recent driver)."""
    import torch

    if not gpus_allocated(env):
        return
    env = os.environ if env is None else env
    gpus = env.get("CUDA_VISIBLE_DEVICES") or env.get("SLURM_JOB_GPUS") or env.get("SLURM_GPUS_ON_NODE")
    raise UserError(
        f"GPUs are allocated to this process (CUDA_VISIBLE_DEVICES/Slurm: {gpus}) but torch cannot use CUDA: torch "
        f"{torch.__version__} is built for CUDA {torch.version.cuda or 'none (a CPU-only build)'}, with "
        f"{driver_version()}: a driver/build mismatch; install the torch build that fits the driver with "
        f"`FCN_TORCH_CUDA=cu126 bash scripts/setup.sh` (or cu128; README, 'On a GPU node, first'), or a newer driver, "
        f"or pass --device cpu to train on the CPU on purpose"
    )


def cuda_index(local_rank: int, local_world: int, n_visible: int, env=None) -> int:
    """The index of this process's GPU among the devices it can see.

    Every GPU of the node visible to every process (--gpus-per-node, torchrun): cuda:<local_rank>. Slurm binding each
    task to its own GPU(s) (--gpus-per-task, --gpu-bind, a site default): each task sees only its own, so cuda:0 of
    its visible set; using local_rank there would point past the end.
    """
    env = os.environ if env is None else env
    if n_visible >= local_world:
        return local_rank
    # Slurm 22.05 exports neither SLURM_GPUS_PER_TASK nor SLURM_GPU_BIND to a bound task (measured on the test
    # cluster): binding shows as each task seeing its own share of the node's GPUs (CUDA_VISIBLE_DEVICES=1 of 2).
    # Shares that would overlap (4 tasks each seeing 2 of 4 GPUs) leave no unique choice: an error below.
    on_node = env.get("SLURM_GPUS_ON_NODE", "")
    bound = on_node.isdigit() and n_visible * local_world <= int(on_node)
    if n_visible >= 1 and (bound or local_world == 1):
        return 0
    raise UserError(
        f"{local_world} processes per node need {local_world} GPUs but {n_visible} are visible to this "
        f"one (CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', '')!r}) and Slurm did not bind GPUs "
        f"per task: ask for one GPU per process (--gpus-per-node = --ntasks-per-node, or "
        f"--gpus-per-task=1)"
    )


def check_one_process_per_gpu(gpus_on_node: str, tasks_per_node: int) -> None:
    """The rule of a Slurm job that trains with DDP: as many training processes (tasks) per node as GPUs per node,
    or one GPU idles (too few tasks) or two processes fight over one (too many). An error at start, never a hang."""
    if gpus_on_node.isdigit() and int(gpus_on_node) != tasks_per_node:
        raise UserError(
            f"this job has {gpus_on_node} GPU(s) per node but {tasks_per_node} task(s) per node: one "
            f"training process per GPU, so pass --ntasks-per-node={gpus_on_node} with "
            f"--gpus-per-node={gpus_on_node}"
        )


def _check_gpus(world: int, local_world: int, env=None) -> None:
    """check_one_process_per_gpu, for the processes it applies to."""
    env = os.environ if env is None else env
    # Only multi-process training launched as srun tasks (or by torchrun) is held to one process per GPU: a single
    # process inside a GPU allocation (srun --pty bash, a Ray trial, a local grid under sbatch) may use the GPUs as
    # it likes.
    launched = env.get("SLURM_STEP_ID", "").isdigit() or "LOCAL_WORLD_SIZE" in env
    if env.get("SLURM_GPUS_PER_TASK", "").isdigit():  # --gpus-per-task: the node's GPUs are the tasks' own
        return
    if world > 1 and launched:
        check_one_process_per_gpu(env.get("SLURM_GPUS_ON_NODE", ""), local_world)


def pick_device(device: str, world: int, local_rank: int, local_world: int) -> torch.device:
    """The device of this process: one line of error for every way a GPU job would otherwise crash or run on CPU."""
    import torch

    cuda_ok = torch.cuda.is_available()
    if device == "cuda" and not cuda_ok:
        if gpus_allocated():
            check_cuda_usable()
        raise UserError("--device cuda was asked for but no CUDA device is visible; use --device auto or cpu")
    if device == "auto" and not cuda_ok:
        check_cuda_usable()  # GPUs allocated but unusable: stop
    use_cuda = device == "cuda" or (device == "auto" and cuda_ok)
    _check_gpus(world, local_world)
    if not use_cuda:
        return torch.device("cpu")
    return torch.device("cuda", cuda_index(local_rank, local_world, torch.cuda.device_count()))


def setup(device: str = "auto") -> Dist:
    import torch
    import torch.distributed as tdist

    rank, world, local_rank, local_world = _launcher_env()
    dev = pick_device(device, world, local_rank, local_world)
    use_cuda = dev.type == "cuda"
    if use_cuda:
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True  # fixed input shapes: cuDNN picks the fastest kernels once
    if world > 1 and not tdist.is_initialized():
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise UserError(f"{var} is not set for a {world}-process run: launch with torchrun or srun")
        tdist.init_process_group(
            "nccl" if use_cuda else "gloo",
            rank=rank,
            world_size=world,
            timeout=TIMEOUT,
            device_id=dev if use_cuda else None,
        )
    return Dist(rank, world, local_rank, local_world, dev)


def gather(obj, d: Dist) -> list:
    """Every rank's `obj` on every rank (predictions are small next to the model)."""
    if d.world == 1:
        return [obj]
    import torch.distributed as tdist

    out = [None] * d.world
    tdist.all_gather_object(out, obj)
    return out


def barrier(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as tdist

        tdist.barrier()


def cleanup() -> None:
    import torch.distributed as tdist

    if tdist.is_initialized():
        tdist.destroy_process_group()


def rendezvous(env=None) -> tuple[str, int]:
    """(MASTER_ADDR, MASTER_PORT) of a Slurm job: its first node and its job id's port (what every rank derives)."""
    env = os.environ if env is None else env
    return first_node(env.get("SLURM_JOB_NODELIST", "") or "localhost"), master_port(env.get("SLURM_JOB_ID", "0") or 0)


def slurm_job(env=None) -> str:
    """What an sbatch script needs before it starts its tasks, in one line "ADDR PORT NODES TASKS_PER_NODE": the
    rendezvous and the job's shape, after checking one task per GPU (a UserError otherwise)."""
    env = os.environ if env is None else env
    tasks = slurm_tasks_per_node(env)
    check_one_process_per_gpu(env.get("SLURM_GPUS_ON_NODE", "").strip(), tasks)
    addr, port = rendezvous(env)
    return f"{addr} {port} {slurm_nodes(env)} {tasks}"


USAGE = (
    "usage: python -m fcn.dist job   (in an sbatch script: checks one task per GPU, then prints the job's "
    "MASTER_ADDR MASTER_PORT NODES TASKS_PER_NODE)"
)


def main(argv=None) -> int:
    """`python -m fcn.dist job`: the sbatch scripts ask the rules here rather than repeating them in bash."""
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["job"]:
        print(USAGE, file=sys.stderr)
        return 2
    print(slurm_job())
    return 0


if __name__ == "__main__":
    run_cli(main)  # a broken rule is one line, exit 2
