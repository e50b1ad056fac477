"""fcn/memory.py: what a job may hold in RAM is bounded by Slurm's allocation and by the process's own memory cgroup
(v1 and v2, nested, found from /proc/self/cgroup), not by the node's free memory alone."""

from __future__ import annotations

from pathlib import Path

import fcn.memory as M

MB = 1 << 20


def test_slurm_allocation_per_node_cpu_and_gpu():
    assert M.slurm_allocation({}) is None  # outside a job, or a job that asked for no memory
    assert M.slurm_allocation({"SLURM_MEM_PER_NODE": "131072"}) == 128 << 30
    assert M.slurm_allocation({"SLURM_MEM_PER_CPU": "4000", "SLURM_CPUS_ON_NODE": "8"}) == 32_000 * MB
    tasks = {"SLURM_MEM_PER_CPU": "1000", "SLURM_NTASKS_PER_NODE": "2", "SLURM_CPUS_PER_TASK": "3"}
    assert M.slurm_allocation(tasks) == 6_000 * MB
    assert M.slurm_allocation({"SLURM_MEM_PER_GPU": "16384", "SLURM_GPUS_ON_NODE": "4"}) == 64 << 30


def _cgroup(root: Path, rel: str, files: dict[str, str]) -> None:
    d = root / rel
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name).write_text(text + "\n")


def test_cgroup_v1_nested_job_limit_is_found(tmp_path):
    """Slurm's task/cgroup on cgroup v1: the job's limit sits in memory/slurm/uid_0/job_7, the step's below it;
    the root and the step say "no limit" (v1's huge number). A root-only reader saw nothing."""
    huge = str((1 << 63) - 4096)
    _cgroup(tmp_path, "memory", {"memory.limit_in_bytes": huge, "memory.usage_in_bytes": str(5 << 30)})
    job = "memory/slurm/uid_0/job_7"
    _cgroup(tmp_path, job, {"memory.limit_in_bytes": str(2 << 30), "memory.usage_in_bytes": str(512 * MB)})
    _cgroup(tmp_path, job + "/step_0", {"memory.limit_in_bytes": huge, "memory.usage_in_bytes": str(100 * MB)})
    text = "12:pids:/slurm\n4:memory:/slurm/uid_0/job_7/step_0\n3:cpu,cpuacct:/slurm\n0::/\n"
    assert M.cgroup_room(text, tmp_path) == (2 << 30) - 512 * MB
    assert M.cgroup_room("4:memory:/elsewhere\n", tmp_path) is None  # no limit anywhere on its path


def test_cgroup_v2_nested_limit_is_found(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("memory cpu\n")
    _cgroup(tmp_path, "system.slice/slurmstepd.scope", {"memory.max": "max", "memory.current": "100"})
    job = "system.slice/slurmstepd.scope/job_9"
    _cgroup(tmp_path, job, {"memory.max": str(4 << 30), "memory.current": str(1 << 30)})
    _cgroup(tmp_path, job + "/step_0/user/task_0", {"memory.max": str(8 << 30), "memory.current": str(1 << 20)})
    text = f"0::/{job}/step_0/user/task_0\n"
    assert M.cgroup_room(text, tmp_path) == 3 << 30  # the job's limit, tighter than the task's own


def test_the_budget_is_the_least_of_node_cgroup_and_slurm(monkeypatch):
    monkeypatch.setattr(M, "node_free", lambda: 100 << 30)
    monkeypatch.setattr(M, "cgroup_room", lambda: None)
    assert M.node_budget({}) == int(M.IN_MEMORY_FRACTION * (100 << 30))
    assert M.node_budget({"SLURM_MEM_PER_NODE": "8192"}) == int(M.IN_MEMORY_FRACTION * (8 << 30))
    monkeypatch.setattr(M, "cgroup_room", lambda: 2 << 30)
    assert M.node_budget({"SLURM_MEM_PER_NODE": "8192"}) == int(M.IN_MEMORY_FRACTION * (2 << 30))
    monkeypatch.setattr(M, "node_free", lambda: None)
    monkeypatch.setattr(M, "cgroup_room", lambda: None)
    assert M.node_budget({}) == 0  # nothing known: stream from the store
