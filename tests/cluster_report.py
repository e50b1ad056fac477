"""Run the two-node cluster scenarios and write results/cluster.md: jobs started together, crashed, duplicated, nodes
lost, epochs redone and time to recover, as measured by the tests themselves.

    .venv/bin/python -m tests.cluster_report                 # the scenarios below, on the two-node test cluster
    .venv/bin/python -m tests.cluster_report --out /tmp/c.md

A scenario test records what it measured with `record(scenario, **figures)` (figures: jobs, started_together,
nodes_used, crashed, duplicated, finished, nodes_lost, epochs_redone, recover_s, integrity, note); the records go to
the JSON-lines file named by env FCN_CLUSTER_REPORT (nothing is written when it is unset, i.e. in a plain test run).
A scenario whose test passed without recording still gets a row (its figures '—'); a failed one is marked FAIL.
Needs what the test suite needs (root: the fixture starts a two-node Slurm cluster in network namespaces).
"""

from __future__ import annotations

import os
import platform
import sys
import time

from tests import report
from tests.report import REPO

ENV = "FCN_CLUSTER_REPORT"

# The scenarios, in the order of the table: pytest node id → what it is and what must hold.
SCENARIOS = {
    "tests/test_concurrency_cluster.py::test_thirty_cell_jobs_start_together_on_an_empty_out_dir": (
        "30 cell jobs submitted at once on an empty out dir, both nodes logging to one tracking server",
        "0 crashed, 0 duplicate runs, 30 finished, PRAGMA integrity_check ok",
    ),
    "tests/test_concurrency_cluster.py::test_tracking_server_takes_the_jobs_of_both_nodes": (
        "`harness.grid --cluster slurm --tracking-server`: one cell job per node, both logging over HTTP",
        "jobs of both nodes logged to the server; every cell finished once; the server stopped at the end",
    ),
    "tests/test_cluster_plumbing.py::test_flock_that_fails_as_lustres_does_is_one_line_with_a_way_out": (
        "flock fails as Lustre's does without -o flock (ENOSYS, set by a test hook)",
        "cell, store and MLflow locks stop at once in one line naming FCN_LOCK_DIR; with it, locks work",
    ),
    "tests/test_multinode.py::test_cell_jobs_on_two_nodes_refuse_one_sqlite_store": (
        "cell jobs on two nodes, one SQLite MLflow store on the shared filesystem",
        "the second host refused in one line before training; no run written from it",
    ),
    "tests/test_multinode.py::test_ray_cluster_script_spans_two_nodes": (
        "slurm/ray_cluster.sh on two nodes: SQLite (no server), then served, a decoy interface first on the head",
        "refused in one line without a server; served: both nodes join by the route's address, 2 cells finished",
    ),
    "tests/test_multinode.py::test_submitit_tasks_get_their_cpus": (
        "submitit job, 2 nodes × 1 task, --cpus-per-task 3",
        "each srun task has 3 CPUs (SLURM_CPUS_ON_NODE)",
    ),
    "tests/test_multinode.py::test_node_crash_requeues_and_resumes_on_the_other_node": (
        "a node crashes (all its processes killed) while a cell trains",
        "requeued, resumed on the other node from its last epoch: 1 run, FINISHED, ≤ 1 epoch redone",
    ),
    "tests/test_multinode.py::test_slurmd_lost_while_the_old_copy_runs_on": (
        "a node's slurmd dies while the cell's old copy runs on",
        "the requeued copy waits on the cell lock; the cell ends finished exactly once",
    ),
    "tests/test_multinode.py::test_grid_on_slurm_with_two_nodes_per_cell": (
        "`harness.grid --cluster slurm --nodes 2` on a data root whose store is missing",
        "a CPU job builds the store; the cell's job waits on it (afterok) and starts after it ended (sacct); 1 run",
    ),
    "tests/test_multinode.py::test_memory_bounded_job_keeps_within_its_nodes_limit": (
        "2 nodes × 2 ranks, --mem 2400M per node enforced by a memory cgroup per node, a ≈600 MB split",
        "no copy per rank (streamed or mapped once per node): job COMPLETED, 0 OOM kills, peak per node ≤ --mem",
    ),
    "tests/test_batching.py::test_16_processes_train_one_clip_each_only_with_sync_batchnorm": (
        "the recipe's global batch of 16 over 16 processes (the rule each job applies before its first step)",
        "1 clip per process under SyncBatchNorm; refused in one line without it",
    ),
    "tests/test_batching.py::test_32_processes_are_refused_for_a_global_batch_of_16": (
        "a global batch of 16 over 32 processes",
        "refused in one line (under one clip per process), with or without SyncBatchNorm",
    ),
}
COLUMNS = (
    ("jobs", "jobs"),
    ("started_together", "started together"),
    ("nodes_used", "nodes used"),
    ("crashed", "crashed"),
    ("duplicated", "duplicated runs"),
    ("finished", "finished"),
    ("nodes_lost", "nodes lost"),
    ("epochs_redone", "epochs redone"),
    ("recover_s", "time to recover"),
)


def record(scenario: str, **figures) -> None:
    """Append one scenario's measured figures to $FCN_CLUSTER_REPORT (a no-op when unset). `scenario` is the test's
    own name (`request.node.name`) or its node id."""
    report.append(ENV, {"scenario": scenario, **figures})


def _cell(figures: dict, key: str) -> str:
    v = figures.get(key)
    if v is None:
        return "—"
    if key == "recover_s":
        return f"{v:.0f} s"
    return str(v)


def render(records: list[dict], outcomes: dict, seconds: float) -> str:
    by_name = {}
    for r in records:
        by_name.setdefault(r["scenario"].split("::")[-1], {}).update(r)
    head = "| scenario | what must hold | " + " | ".join(t for _, t in COLUMNS) + " | result |"
    lines = [
        "# Many jobs and lost nodes on a two-node Slurm cluster",
        "",
        f"Generated by `python -m tests.cluster_report` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{platform.machine()} with {os.cpu_count()} CPU(s), in {seconds:.0f} s. The cluster is the test "
        f"fixture tests/services/slurm_multi.py: two slurmd hosts, each in its own network namespace, on one "
        f"machine, one shared filesystem. Do not edit: rerun the command.",
        "",
        head,
        "|" + "---|" * (len(COLUMNS) + 3),
    ]
    notes = []
    for node, (scenario, must) in SCENARIOS.items():
        name = node.split("::")[1]
        ok, secs = outcomes.get(node, (None, 0.0))
        fig = by_name.get(name, {})
        if ok is None:
            cells, result = ["—"] * len(COLUMNS), "not run"
        else:
            cells, result = [_cell(fig, k) for k, _ in COLUMNS], f"{'pass' if ok else 'FAIL'} ({secs:.0f} s)"
        lines.append(f"| {scenario} | {must} | {' | '.join(cells)} | {result} |")
        if fig.get("note"):
            notes.append(f"- {scenario}: {fig['note']}")
    total = {
        k: sum(int(by_name.get(n.split("::")[1], {}).get(k) or 0) for n in SCENARIOS)
        for k in ("crashed", "duplicated", "nodes_lost", "epochs_redone")
    }
    lines += [
        "",
        f"**Totals:** {total['crashed']} jobs crashed, {total['duplicated']} duplicate runs, "
        f"{total['nodes_lost']} node(s) lost, {total['epochs_redone']} epoch(s) redone.",
        "",
    ]
    if notes:
        lines += ["Notes:", *notes, ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    return report.main(
        argv,
        prog="python -m tests.cluster_report",
        description=__doc__,
        default_out=REPO / "results" / "cluster.md",
        env_var=ENV,
        tests=[n for n in SCENARIOS if (REPO / n.split("::")[0]).exists()],
        render=render,
    )


if __name__ == "__main__":
    sys.exit(main())
