"""Run cells as a submitit job array on Slurm: one job per cell, DDP over the job's tasks (one per GPU).

Preemption and time limits: submitit's checkpoint hook requeues the job, and fcn.train resumes from the cell's last
epoch checkpoint. Whether a cell is done is read from MLflow and its run directory (harness.status), never from
submitit's view of the job, which can be wrong after a requeue (docs/MEASURED.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from fcn.cell import harness_dir
from fcn.config import RunConfig
from fcn.errors import UserError
from fcn.flags import option
from harness import launch
from harness.job import FAILED, FINISHED, SUBMITTED, Outcome, run_cell
from harness.status import grid_states

# [D] USR2 this long before the time limit: the job checkpoints and requeues itself. Slurm may send it up to ~30 s
# early (docs/MEASURED.md), and a paper-scale epoch checkpoint takes seconds: 2 minutes leave room for both. The sbatch
# scripts (harness/sbatch.py) render the same default.
SIGNAL_DELAY_S = 120
ARRAY_PARALLELISM = 64  # [D] jobs of one grid running at once: a courtesy to the other users of a cluster


@dataclass(frozen=True)
class SlurmOptions:
    """Everything about *where* cells run on Slurm, as sbatch options: the grid's --cluster slurm flags, the
    submitit executor's parameters and the generated sbatch scripts' #SBATCH lines all come from it."""

    partition: str = option("", "Slurm partition; empty = the cluster's default")
    account: str = option("", "Slurm account to charge")
    qos: str = option("", "Slurm quality of service")
    time_min: int = option(240, "time limit per job in minutes; at the limit a job requeues itself and resumes")
    nodes: int = option(1, "nodes per job (one cell's DDP spans them)")
    gpus_per_node: int = option(0, "GPUs per node; 0 = CPU jobs")
    tasks_per_node: int = option(0, "training processes per node; 0 = one per GPU (1 without GPUs)")
    cpus_per_task: int = option(0, "CPUs per task; 0 = the cells' DataLoader workers + 1 for the trainer")
    mem_gb: int = option(0, "memory per node in GB; 0 = Slurm's default")
    signal_delay_s: int = option(
        SIGNAL_DELAY_S, "seconds before the time limit at which a job checkpoints and requeues itself", flag=None
    )
    array_parallelism: int = option(ARRAY_PARALLELISM, "jobs of the grid running at once", flag=None)
    extra: dict = option(
        None, "any other sbatch option, e.g. --sbatch constraint=a100 (repeatable)", flag="--sbatch", factory=dict
    )
    wait: bool = option(True, "submit and return; rerun (or harness.status) later", flag="--no-wait")

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
    return launch.slurm_executor(
        folder,
        name=name,
        time_min=opts.time_min,
        cpus_per_task=cpus_for(opts, configs),
        array_parallelism=opts.array_parallelism,
        nodes=opts.nodes,
        tasks_per_node=opts.ntasks,
        partition=opts.partition,
        account=opts.account,
        qos=opts.qos,
        gpus_per_node=opts.gpus_per_node,
        mem_gb=opts.mem_gb,
        signal_delay_s=opts.signal_delay_s,
        srun_args=SRUN_ARGS,
        requeue=True,
        extra=opts.extra,
    )


class CellFailed(RuntimeError):
    """A cell that failed in a Slurm job: the task exits non-zero, so srun ends the other ranks at once."""


class CellJob:
    """The callable a Slurm task runs: the cell's job. Ranks, world size and the rendezvous come from srun's
    variables through fcn.dist, as in the sbatch scripts. submitit calls `checkpoint` on preemption or at the time
    limit: requeue the same cell, which resumes from its checkpoint."""

    def __call__(self, config_dict: dict):
        o = run_cell(RunConfig.from_dict(config_dict), log=False)  # submitit keeps each task's output
        if not o.ok:
            raise CellFailed(o.error)
        return o

    def checkpoint(self, config_dict: dict):
        import submitit  # optional and heavy (harness/launch.py); the job it runs in has it

        # The state is in the cell's checkpoint on disk; resubmitting the same call resumes from it.
        return submitit.helpers.DelayedSubmission(CellJob(), config_dict)


def _sinfo(*args: str) -> str:
    if shutil.which("sinfo") is None:
        raise UserError("Slurm's sinfo is not on PATH: --cluster slurm must run on a Slurm login node")
    out = subprocess.run(["sinfo", "-h", *args], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise UserError(f"sinfo failed: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout


def check(opts: SlurmOptions, cells: list[RunConfig]) -> None:
    """Refuse, before submitting anything, a partition that doesn't exist or GPUs the cluster doesn't have."""
    if opts.gpus_per_node and cells and cells[0].device == "cpu":
        raise UserError("--gpus-per-node with --device cpu: drop one of them")
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
            raise UserError(
                f"--gpus-per-node {opts.gpus_per_node} asked, but {where} has nodes with at most {most} GPU(s)"
            )


def where(opts: SlurmOptions) -> str:
    return "Slurm" + (f" (partition {opts.partition})" if opts.partition else "")


def _jobs_file(out_dir: str, experiment: str) -> Path:
    return harness_dir(out_dir, experiment) / "slurm_jobs.json"


def _alive(job_ids: list[str]) -> set[str]:
    """Job ids Slurm still holds (pending, running, requeued): squeue is the scheduler's own word."""
    if not job_ids:
        return set()
    out = subprocess.run(
        ["squeue", "-h", "-o", "%i", "-j", ",".join(job_ids)], capture_output=True, text=True, timeout=60
    )
    alive = set(out.stdout.split())
    # an array task pending as part of its array shows as <array>_[i-j]; count those tasks as alive too
    return {j for j in job_ids if j in alive or any(a.startswith(j.split("_")[0] + "_[") for a in alive)}


def _submit(configs: list[RunConfig], opts: SlurmOptions, known: dict, jobs_path: Path) -> None:
    """One job array for the cells whose job Slurm no longer holds; their job ids recorded in `jobs_path`."""
    out_dir, experiment = configs[0].out_dir, configs[0].experiment
    alive = _alive(sorted({known[c.key] for c in configs if c.key in known}))
    # A cell whose job Slurm still holds (from an earlier run of the harness) is waited on, never submitted twice.
    to_submit = [c for c in configs if known.get(c.key) not in alive]
    if not to_submit:
        return
    folder = launch.fresh_folder(harness_dir(out_dir, experiment) / "submitit")
    ex = executor(folder, opts, f"fcn-{experiment}", to_submit)
    jobs = ex.map_array(CellJob(), [c.to_dict() for c in to_submit])
    for c, j in zip(to_submit, jobs):
        known[c.key] = j.job_id
    tmp = jobs_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(known, indent=1))
    os.replace(tmp, jobs_path)
    print(f"submitted {len(jobs)} job(s) as array {jobs[0].job_id.split('_')[0]}; logs in {folder}", file=sys.stderr)


def run(configs: list[RunConfig], opts: SlurmOptions, *, progress: bool = True, poll_s: float = 5.0) -> list[Outcome]:
    """Submit the cells (one job each) and, unless --no-wait, follow them until each is finished or its job is gone;
    what a cell's state is comes from harness.status (MLflow and its run dir), never from submitit."""
    jobs_path = _jobs_file(configs[0].out_dir, configs[0].experiment)
    jobs_path.parent.mkdir(parents=True, exist_ok=True)
    known = json.loads(jobs_path.read_text()) if jobs_path.exists() else {}
    _submit(configs, opts, known, jobs_path)
    if not opts.wait:
        return [Outcome(c.key, SUBMITTED, job_id=known.get(c.key, "")) for c in configs]
    return _follow(configs, known, progress, poll_s)


def _follow(configs: list[RunConfig], known: dict, progress: bool, poll_s: float) -> list[Outcome]:
    uri = configs[0].tracking_uri
    bar = tqdm(total=len(configs), unit="cell", desc="grid (slurm)", disable=not progress, file=sys.stderr)
    pending = {c.key: c for c in configs}
    outcomes: dict[str, Outcome] = {}
    gone_since: dict[str, float] = {}
    while pending:
        states = {s.key: s for s in grid_states(list(pending.values()), uri)}
        alive = _alive([known[k] for k in pending if k in known])
        for key in list(pending):
            s, job = states[key], known.get(key, "")
            if s.state == "finished":
                outcomes[key] = Outcome(
                    key,
                    FINISHED,
                    {"test_roc_auc": s.test_roc_auc, "test_pr_auc": s.test_pr_auc},
                    run_dir=s.run_dir,
                    job_id=job,
                )
            elif job not in alive:
                # Slurm no longer holds the job and the cell is not finished: give the run dir a moment (a job
                # that just ended may still be writing), then call it failed; a rerun of the harness retries it.
                if time.time() - gone_since.setdefault(key, time.time()) < 3 * poll_s:
                    continue
                outcomes[key] = Outcome(
                    key, FAILED, error=f"job {job} ended without a result; log: {s.log}", run_dir=s.run_dir, job_id=job
                )
            else:
                gone_since.pop(key, None)
                continue
            del pending[key]
            bar.update(1)
        if pending:
            time.sleep(poll_s)
    bar.close()
    return [outcomes[c.key] for c in configs]
