"""What a job may hold in RAM on its node: the least of the node's free memory, the tightest memory cgroup around this
process (cgroup v1 or v2, found from /proc/self/cgroup, its ancestors included) and Slurm's allocation
(SLURM_MEM_PER_NODE, SLURM_MEM_PER_CPU × CPUs on the node, SLURM_MEM_PER_GPU × GPUs on the node).

Slurm's --mem is enforced (where it is) by the job's own cgroup, nested below the root: reading only the root's
/sys/fs/cgroup/memory.max sees no limit at all, and a machine with cgroup v1 has no such file. The allocation is read
from Slurm's variables as well, since a cluster without task/cgroup enforces nothing and still expects a job to keep
to what it asked for.

No torch: `python -m harness.grid --plan` uses the same rule on a login node.
"""

from __future__ import annotations

import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
# [D] A store's features are held in RAM (mapped, once per node: fcn/store.py) when they take at most this fraction
# of what the job may use on the node: the rest stays for the processes themselves (model, optimiser, batches,
# DataLoader workers) and the page cache. Over it, batches are read from the store row by row.
IN_MEMORY_FRACTION = 0.5
# cgroup v1 writes "no limit" as a huge number (PAGE_COUNTER_MAX × page size), v2 as "max"
_NO_LIMIT = 1 << 60


def slurm_allocation(env: dict | None = None) -> int | None:
    """Bytes Slurm allocated this job on this node, from its variables (values in MB), or None outside a job or
    when the job asked for no memory."""
    env = os.environ if env is None else env

    def num(name: str) -> int:
        try:
            return int(str(env.get(name, "")).split("(")[0].split(",")[0] or 0)
        except ValueError:
            return 0

    mb = num("SLURM_MEM_PER_NODE")
    if not mb and num("SLURM_MEM_PER_CPU"):
        # CPUs of this job on this node: SLURM_CPUS_ON_NODE (set in every step), else tasks × CPUs per task
        cpus = num("SLURM_CPUS_ON_NODE") or max(1, num("SLURM_NTASKS_PER_NODE")) * max(1, num("SLURM_CPUS_PER_TASK"))
        mb = num("SLURM_MEM_PER_CPU") * cpus
    if not mb and num("SLURM_MEM_PER_GPU"):
        gpus = num("SLURM_GPUS_ON_NODE") or num("SLURM_GPUS_PER_NODE") or 1
        mb = num("SLURM_MEM_PER_GPU") * gpus
    return mb * (1 << 20) if mb else None


def _cgroup_paths(text: str) -> list[tuple[str, str]]:
    """(version, path) of this process's memory cgroups, from /proc/self/cgroup's text: v1's `N:memory:/path`
    (the controller may share a line with others) and v2's `0::/path`."""
    out = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if "memory" in parts[1].split(","):
            out.append(("v1", parts[2]))
        elif parts[0] == "0" and parts[1] == "":
            out.append(("v2", parts[2]))
    return out


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return _NO_LIMIT
    try:
        return int(text)
    except ValueError:
        return None


def cgroup_room(proc_cgroup: str | None = None, root: Path = CGROUP_ROOT) -> int | None:
    """Bytes this process's memory cgroups still allow (limit − usage), the tightest of its cgroup and every
    ancestor, v1 (`<root>/memory/<path>/memory.limit_in_bytes`) or v2 (`<root>/<path>/memory.max`); None when
    no limit is set or none can be read. `proc_cgroup`: /proc/self/cgroup's text (tests pass their own)."""
    if proc_cgroup is None:
        try:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            return None
    best = None
    for version, path in _cgroup_paths(proc_cgroup):
        base = root / "memory" if version == "v1" else root
        if version == "v2" and not (root / "cgroup.controllers").exists():
            base = root / "unified"  # hybrid mounts: v1 controllers, the v2 hierarchy under unified/
        limit_f, usage_f = ("memory.limit_in_bytes", "memory.usage_in_bytes")
        if version == "v2":
            limit_f, usage_f = ("memory.max", "memory.current")
        rel = Path(path.lstrip("/"))
        for d in [rel, *rel.parents]:  # a nested cgroup inherits every ancestor's limit
            limit = _read_int(base / d / limit_f)
            if limit is None or limit >= _NO_LIMIT:
                continue
            used = _read_int(base / d / usage_f) or 0
            room = max(0, limit - used)
            best = room if best is None else min(best, room)
    return best


def node_free() -> int | None:
    """MemAvailable of this node (Linux), else the free physical pages; None when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def job_memory(env: dict | None = None) -> int | None:
    """Bytes the job may still use on this node: the least of the node's free memory, the cgroup room and Slurm's
    allocation; None when none is known."""
    known = [v for v in (node_free(), cgroup_room(), slurm_allocation(env)) if v is not None]
    return min(known) if known else None


def node_budget(env: dict | None = None) -> int:
    """Bytes of store features the node's processes may hold in RAM together (one shared copy: fcn/store.py)."""
    mem = job_memory(env)
    return 0 if mem is None else int(IN_MEMORY_FRACTION * mem)
