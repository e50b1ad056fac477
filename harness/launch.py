"""How the harness starts work on a cluster, in one place: a Ray session and a Slurm (submitit) executor.

Their users: the grid's back ends (harness/backends/ray_backend.py, slurm.py: one cell per trial or job), the recipe
search (harness/search.py: Ray Tune trials) and a cluster preprocessing build (harness/preprocess.py: shards as Ray
tasks or a Slurm job array). What runs is theirs; how Ray is joined or started, and which submitit parameters a
Slurm option becomes, is decided here only.

ray and submitit are imported inside the functions: both are optional at run time (a grid on this machine needs
neither) and heavy (ray's import alone is seconds of CPU), and every harness command's parser imports this module.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def ray_session(address: str = "") -> Iterator:
    """Ray for the length of the block, as the `ray` module: the cluster at `address` ('auto': the one this node is
    part of; host:port), else a local Ray on this machine's cores. A Ray this process finds already initialised (a
    caller's, a test's) is used and left running; one it started is shut down at the end, leaving no processes."""
    if not address:
        # A private local cluster: Ray 2.60 switches token auth on by default and writes ~/.ray/auth_token, which a
        # later Ray of this user then also requires. An existing cluster's driver keeps what its environment says
        # (slurm/ray_cluster.sh exports RAY_AUTH_MODE=token with the job's own token).
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray  # optional and heavy: see the module's docstring

    started = not ray.is_initialized()
    if started and address:
        ray.init(address=address, log_to_driver=False)
    elif started:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def fresh_folder(parent: Path, prefix: str = "") -> Path:
    """A new submitit folder per submission: Slurm restarts job ids at 1 when a cluster's state directory is wiped,
    and submitit would then hand back an old job's result from a reused folder (measured on the test clusters)."""
    return Path(parent) / f"{prefix}{time.strftime('%Y%m%d-%H%M%S')}"


def slurm_executor(
    folder: Path,
    *,
    name: str,
    time_min: int,
    cpus_per_task: int,
    array_parallelism: int,
    nodes: int = 1,
    tasks_per_node: int = 1,
    partition: str = "",
    account: str = "",
    qos: str = "",
    gpus_per_node: int = 0,
    mem_gb: int = 0,
    signal_delay_s: int = 0,
    srun_args: tuple[str, ...] = (),
    requeue: bool = False,
    extra: dict | None = None,
):
    """A submitit executor whose jobs ask Slurm for these options; an empty or zero option is left to the cluster's
    default. `signal_delay_s`: USR2 that long before the time limit (submitit's checkpoint hook); `requeue`: the job
    may be requeued (preemption, a lost node); `extra`: any other sbatch option (`--sbatch KEY=VALUE`)."""
    import submitit  # optional and heavy: see the module's docstring

    ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
    params = dict(
        name=name,
        timeout_min=time_min,
        nodes=nodes,
        tasks_per_node=tasks_per_node,
        cpus_per_task=cpus_per_task,
        slurm_array_parallelism=array_parallelism,
    )
    additional = {**({"requeue": True} if requeue else {}), **(extra or {})}
    if cpus_per_task:
        # Slurm 22.05-23.02's srun does not take --cpus-per-task from the job (SLURM_CPUS_PER_TASK is ignored by
        # srun there; 23.11 reads SRUN_CPUS_PER_TASK): submitit's srun line without it gives each task one CPU, so
        # a rank's DataLoader workers and its torch threads all share one core where binding is enforced
        srun_args = (f"--cpus-per-task={cpus_per_task}", *srun_args)
    for k, v in (
        ("slurm_signal_delay_s", signal_delay_s),
        ("slurm_srun_args", list(srun_args)),
        ("slurm_additional_parameters", additional),
        ("slurm_partition", partition),
        ("slurm_account", account),
        ("slurm_qos", qos),
        ("gpus_per_node", gpus_per_node),
        ("mem_gb", mem_gb),
    ):
        if v:
            params[k] = v
    ex.update_parameters(**params)
    return ex
