"""Run cells as a submitit job array on Slurm: one job per cell, DDP over the job's tasks (one per GPU).

Preemption and time limits: submitit's checkpoint hook requeues the job, and fcn.train resumes from the cell's last
epoch checkpoint. Whether a cell is done is read from MLflow and its run directory (harness.state), never from
submitit's view of the job, which can be wrong after a requeue (FACTS.md).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fcn.config import RunConfig
from fcn.cell import harness_dir
from fcn.errors import UserError


@dataclass(frozen=True)
class SlurmOptions:
    """Everything about *where* cells run on Slurm; the launcher config, as one dataclass."""
    partition: str = ""
    account: str = ""
    qos: str = ""
    time_min: int = 240
    nodes: int = 1
    gpus_per_node: int = 0  # 0: CPU tasks
    tasks_per_node: int = 0  # 0: one per GPU (1 without GPUs)
    cpus_per_task: int = 0  # 0: the cells' DataLoader workers + 1 for the trainer (cpus_for)
    mem_gb: int = 0  # 0: Slurm's default (per node)
    signal_delay_s: int = 120  # USR2 this long before the time limit: checkpoint and requeue
    array_parallelism: int = 64
    extra: dict = field(default_factory=dict)  # any other sbatch option, e.g. {"constraint": "a100"}

    @property
    def ntasks(self) -> int:
        return self.tasks_per_node or max(1, self.gpus_per_node)


# srun's flags inside each job: a task that exits non-zero ends the whole step at once, so the other ranks never sit
# in a collective until the process-group timeout (30 min) waiting for a rank that raised.
SRUN_ARGS = ("--kill-on-bad-exit=1",)


def cpus_for(opts: SlurmOptions, configs: list[RunConfig]) -> int:
    """CPUs per task: as asked, else the cells' DataLoader workers plus one for the training process itself (Slurm's
    own default is often 1 CPU, which the paper preset's 4 loader workers would share)."""
    return opts.cpus_per_task or max(c.num_workers for c in configs) + 1


def executor(folder: Path, opts: SlurmOptions, name: str, configs: list[RunConfig]):
    """A submitit executor for cells (or any callable, in tests) with the options every job gets."""
    import submitit

    ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
    params = dict(name=name, timeout_min=opts.time_min, nodes=opts.nodes,
                  tasks_per_node=opts.ntasks, slurm_signal_delay_s=opts.signal_delay_s,
                  slurm_array_parallelism=opts.array_parallelism, slurm_srun_args=list(SRUN_ARGS),
                  cpus_per_task=cpus_for(opts, configs),
                  slurm_additional_parameters={"requeue": True, **opts.extra})
    for k, v in (("slurm_partition", opts.partition), ("slurm_account", opts.account),
                 ("slurm_qos", opts.qos), ("gpus_per_node", opts.gpus_per_node), ("mem_gb", opts.mem_gb)):
        if v:
            params[k] = v
    ex.update_parameters(**params)
    return ex


class CellJob:
    """The callable a Slurm task runs. submitit calls `checkpoint` on preemption/timeout: requeue the same cell."""

    def __call__(self, config_dict: dict) -> dict:
        import submitit

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            # MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK for torch's env:// rendezvous; keep the GPUs Slurm
            # made visible, fcn.dist picks this task's among them (cuda:<local_rank>, or cuda:0 when bound per task).
            from fcn.dist import master_port

            # fcn.dist's port rule (below the ephemeral range), not submitit's random 20000-60000
            os.environ.setdefault("MASTER_PORT", str(master_port(os.environ.get("SLURM_JOB_ID", "0"))))
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        from fcn.train import train

        return train(RunConfig.from_dict(config_dict))

    def checkpoint(self, config_dict: dict):
        import submitit

        # The state is in the cell's checkpoint on disk; resubmitting the same call resumes from it.
        return submitit.helpers.DelayedSubmission(CellJob(), config_dict)


def _sinfo(*args: str) -> str:
    if shutil.which("sinfo") is None:
        raise UserError("Slurm's sinfo is not on PATH: --cluster slurm must run on a Slurm login node")
    out = subprocess.run(["sinfo", "-h", *args], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise UserError(f"sinfo failed: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout


def check(opts: SlurmOptions) -> None:
    """Refuse, before submitting anything, a partition that doesn't exist or GPUs the cluster doesn't have."""
    part = ["-p", opts.partition] if opts.partition else []
    nodes = _sinfo(*part, "-o", "%P|%G|%D").split()
    if not nodes:
        raise UserError(f"Slurm partition {opts.partition!r} does not exist (see `sinfo -s`)")
    if opts.gpus_per_node:
        most = 0
        for line in nodes:
            for g in line.split("|")[1].split(","):
                if g.startswith("gpu:"):
                    most = max(most, int(g.split(":")[-1].split("(")[0]))
        if most < opts.gpus_per_node:
            where = f"partition {opts.partition}" if opts.partition else "this cluster"
            raise UserError(f"--gpus-per-node {opts.gpus_per_node} asked, but {where} has nodes with at most "
                            f"{most} GPU(s)")


def _jobs_file(out_dir: str, experiment: str) -> Path:
    return harness_dir(out_dir, experiment) / "slurm_jobs.json"


def _alive(job_ids: list[str]) -> set[str]:
    """Job ids Slurm still holds (pending, running, requeued): squeue is the scheduler's own word."""
    if not job_ids:
        return set()
    out = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(job_ids)], capture_output=True, text=True,
                         timeout=60)
    alive = set(out.stdout.split())
    # an array task pending as part of its array shows as <array>_[i-j]; count those tasks as alive too
    return {j for j in job_ids if j in alive or any(a.startswith(j.split("_")[0] + "_[") for a in alive)}


def run(configs: list[RunConfig], opts: SlurmOptions, *, uri: str, wait: bool = True, progress: bool = True,
        poll_s: float = 5.0) -> list[dict]:
    from harness.state import grid_states

    out_dir, experiment = configs[0].out_dir, configs[0].experiment
    jobs_path = _jobs_file(out_dir, experiment)
    jobs_path.parent.mkdir(parents=True, exist_ok=True)
    known = json.loads(jobs_path.read_text()) if jobs_path.exists() else {}
    alive = _alive(sorted({known[c.key] for c in configs if c.key in known}))
    # A cell whose job Slurm still holds (from an earlier run of the harness) is waited on, never submitted twice.
    to_submit = [c for c in configs if known.get(c.key) not in alive]
    if to_submit:
        # A fresh folder per submission: Slurm job ids restart when a cluster's state is wiped (FACTS.md).
        folder = harness_dir(out_dir, experiment) / "submitit" / time.strftime("%Y%m%d-%H%M%S")
        ex = executor(folder, opts, f"fcn-{experiment}", to_submit)
        jobs = ex.map_array(CellJob(), [c.to_dict() for c in to_submit])
        for c, j in zip(to_submit, jobs):
            known[c.key] = j.job_id
        tmp = jobs_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(known, indent=1))
        os.replace(tmp, jobs_path)
        print(f"submitted {len(jobs)} job(s) as array {jobs[0].job_id.split('_')[0]}; logs in {folder}",
              file=sys.stderr)
    if not wait:
        return [{"key": c.key, "ok": None, "job_id": known.get(c.key)} for c in configs]

    from tqdm import tqdm

    bar = tqdm(total=len(configs), unit="cell", desc="grid (slurm)", disable=not progress, file=sys.stderr)
    pending = {c.key: c for c in configs}
    outcomes: dict[str, dict] = {}
    gone_since: dict[str, float] = {}
    while pending:
        states = {s.key: s for s in grid_states(list(pending.values()), uri)}
        alive = _alive([known[k] for k in pending if k in known])
        for key in list(pending):
            s = states[key]
            if s.state == "finished":
                outcomes[key] = {"key": key, "ok": True, "result": {"test_roc_auc": s.test_roc_auc,
                                                                     "test_pr_auc": s.test_pr_auc}}
            elif known.get(key) not in alive:
                # Slurm no longer holds the job and the cell is not finished: give the run dir a moment (a job
                # that just ended may still be writing), then call it failed; a rerun of the harness retries it.
                first = gone_since.setdefault(key, time.time())
                if time.time() - first < 3 * poll_s:
                    continue
                outcomes[key] = {"key": key, "ok": False, "error": f"job {known.get(key)} ended without a result; "
                                                                   f"log: {s.log}"}
            else:
                gone_since.pop(key, None)
                continue
            del pending[key]
            bar.update(1)
        if pending:
            time.sleep(poll_s)
    bar.close()
    return [outcomes[c.key] for c in configs]
