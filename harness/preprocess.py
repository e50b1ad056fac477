"""One preprocessing build fanned out over a cluster: its shards as a Slurm job array or as Ray tasks.

    python -m harness.preprocess --dataset msd --data-root /data/msd --preset paper --cluster slurm --partition cpu
    python -m harness.preprocess ... --cluster ray --ray-address auto --cpus-per-task 8

Takes every flag of `python -m fcn.preprocess` (the one-node build) and where the shards are computed. The build is
planned as always (which shards are done, which are not: fcn.preprocess.build); the shards still to do are cut into
contiguous groups, one per task; each task computes its group with the same supervised worker pool and shard code as
a one-node build (fcn.preprocess.compute_shards), writing each part atomically into the build's `<store>.parts/`;
this process then assembles the store, identical byte for byte to a one-node build's. The audio and `<store>.parts/`
must be on a file system the nodes share, at the same paths. A task that fails, is cancelled or runs out of time
costs only the parts it had not written yet: the build stops with one line, and rerunning the same command computes
only the missing parts.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fcn import flags
from fcn.errors import UserError, run_cli
from fcn.flags import option
from fcn.preprocess import build_parser, compute_shards, run_build
from harness import launch

CLUSTERS = ("local", "slurm", "ray")


@dataclass(frozen=True)
class ClusterOptions:
    """Where a build's shards are computed; `python -m harness.preprocess` has one --flag per field."""

    cluster: str = option(
        "local",
        "where the shards are computed: local (this machine's cores), slurm (a job array "
        "submitted from this node) or ray (tasks on a Ray cluster)",
        choices=CLUSTERS,
    )
    tasks: int = option(
        0,
        "tasks the shards still to do are cut into (contiguous groups); 0 = --array-parallelism "
        "of them (at most one per shard)",
    )
    # [D] 8: a common share of a CPU node; every task runs this many worker processes, one per CPU
    cpus_per_task: int = option(8, "CPUs, and worker processes, per task")
    array_parallelism: int = option(64, "slurm: array tasks running at once (also the default number of tasks)")
    partition: str = option("", "slurm: partition (empty: the cluster's default)")
    account: str = option("", "slurm: account to charge (empty: your default)")
    time_min: int = option(
        120,
        "slurm: time limit of each array task in minutes (a task that runs out leaves its "
        "unfinished shards to a rerun)",
    )
    mem_gb: int = option(0, "slurm: memory per task in GB (0: the partition's default)")
    ray_address: str = option(
        "",
        "ray: address of an existing cluster ('auto': the one this node is part of); "
        "empty = start a local Ray on this machine",
    )
    poll_s: float = option(5.0, "seconds between looks at the tasks' progress")

    def __post_init__(self):
        if self.cluster not in CLUSTERS:
            raise UserError(f"--cluster must be one of {', '.join(CLUSTERS)}, not {self.cluster!r}")
        for name in ("cpus_per_task", "array_parallelism", "time_min"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, not {getattr(self, name)}")
        if self.tasks < 0 or self.mem_gb < 0 or self.poll_s <= 0:
            raise UserError("--tasks and --mem-gb must be >= 0 and --poll-s > 0")

    def check(self) -> None:
        """Refuse, before a build starts, a cluster that cannot be used from here."""
        if self.cluster == "slurm" and shutil.which("sbatch") is None:
            raise UserError("--cluster slurm: Slurm's sbatch is not on PATH: run this on a node that submits jobs")


def groups(todo: dict, n: int) -> list[dict]:
    """`todo` ({shard index: job}) cut into `n` contiguous groups of near-equal size (fewer when fewer shards)."""
    keys = sorted(todo)
    n = max(1, min(n, len(keys)))
    cuts = [len(keys) * k // n for k in range(n + 1)]
    return [{i: todo[i] for i in keys[a:b]} for a, b in zip(cuts, cuts[1:])]


class ClusterRunner:
    """fcn.preprocess.build's `runner`: the shard jobs `todo` computed on the cluster `opts` names."""

    def __init__(self, opts: ClusterOptions):
        self.opts, self.name = opts, opts.cluster

    def __call__(self, todo: dict, *, decode_timeout: float, log_dir: Path, on_done) -> list[str]:
        """Compute `todo`, calling `on_done(i)` as each part appears; one line per task that failed (the build finds
        the parts they left missing)."""
        parts = groups(todo, self.opts.tasks or self.opts.array_parallelism)
        left = dict(todo)

        def watch():  # progress: the parts that appeared since the last look
            for i in [i for i, job in left.items() if Path(job[3]).exists()]:
                del left[i]
                on_done(i)

        run = _slurm if self.opts.cluster == "slurm" else _ray
        failures = run(parts, self.opts, decode_timeout, log_dir, watch)
        watch()
        return failures


def _why(e: BaseException) -> str:
    """One line of a task's error: the last line of its traceback when it has one (submitit: inside the dashes)."""
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    if "----------------------" in lines:
        trace = lines[lines.index("----------------------") + 1 :]
        trace = trace[: trace.index("----------------------")] if "----------------------" in trace else trace
        lines = trace[-1:] or lines
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def _slurm(parts: list[dict], opts: ClusterOptions, decode_timeout: float, log_dir: Path, watch) -> list[str]:
    folder = launch.fresh_folder(log_dir, "slurm-")
    ex = launch.slurm_executor(
        folder,
        name="fcn-preprocess",
        time_min=opts.time_min,
        cpus_per_task=opts.cpus_per_task,
        array_parallelism=opts.array_parallelism,
        partition=opts.partition,
        account=opts.account,
        mem_gb=opts.mem_gb,
    )
    n = len(parts)
    try:
        jobs = ex.map_array(compute_shards, parts, [opts.cpus_per_task] * n, [decode_timeout] * n)
    except Exception as e:  # sbatch's own refusal: no such partition, more CPUs than any node has, ...
        raise UserError(f"--cluster slurm: the job array was refused: {' '.join(str(e).split())[:500]}") from None
    array = jobs[0].job_id.split("_")[0]
    print(f"preprocess: {n} array task(s) submitted as Slurm job {array}; logs in {folder}", file=sys.stderr)
    try:
        while True:
            watch()
            pending = [j for j in jobs if not j.done()]
            if not pending or (pending[0].done(force_check=True) and all(j.done() for j in pending)):
                break  # (one forced look asks sacct about every task of the array at once)
            time.sleep(opts.poll_s)
    except BaseException:  # Ctrl-C or an error here: the array must not run on unattended
        subprocess.run(["scancel", array], capture_output=True, timeout=60)
        raise
    return [f"task {j.job_id}: {_why(e)}" for j in jobs if (e := j.exception()) is not None]


def _ray(parts: list[dict], opts: ClusterOptions, decode_timeout: float, log_dir: Path, watch) -> list[str]:
    with launch.ray_session(opts.ray_address) as ray:
        most = max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]), default=0)
        if opts.cpus_per_task > most:
            raise UserError(
                f"--cpus-per-task {opts.cpus_per_task}, but the Ray cluster's largest node has "
                f"{most:g} CPUs: ask for at most that many"
            )
        task = ray.remote(num_cpus=opts.cpus_per_task)(compute_shards)
        refs = {task.remote(g, opts.cpus_per_task, decode_timeout): k for k, g in enumerate(parts)}
        print(f"preprocess: {len(refs)} Ray task(s) submitted", file=sys.stderr)
        failures, pending = [], list(refs)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=len(pending), timeout=opts.poll_s)
                watch()
                for ref in ready:
                    try:
                        ray.get(ref)
                    except Exception as e:  # a task's error (its `cause`), or its worker lost with a node
                        failures.append(f"task {refs[ref]}: {_why(getattr(e, 'cause', None) or e)}")
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        return failures


def main(argv=None) -> None:
    ap = build_parser("python -m harness.preprocess", __doc__)
    flags.add_arguments(ap.add_argument_group("where the shards are computed (harness/preprocess.py)"), ClusterOptions)
    args = ap.parse_args(argv)
    opts = flags.from_args(ClusterOptions, args)
    opts.check()  # before any work: a cluster this node cannot reach is one line, and no parts folder
    run_build(args, runner=None if opts.cluster == "local" else ClusterRunner(opts))


if __name__ == "__main__":
    run_cli(main)
