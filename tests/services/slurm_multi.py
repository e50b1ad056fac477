"""A real two-node Slurm cluster on one machine, for tests (pytest plugin).

Fixture `slurm_multi` (session-scoped) starts, all state under one fresh temp dir (fcn-mslurm-*):
munged (own socket) -> mariadbd -> slurmdbd -> slurmctld in the root namespace, then one slurmd per node, each in its
own network + UTS + mount namespace: its own hostname (fcnode1, fcnode2) and address (10.88.0.11, .12) on a private
bridge (fcnbr0, 10.88.0.1/24) that exists only for this cluster. The config lives in the work dir (env SLURM_CONF
points at it; /etc/slurm is untouched), so it coexists with the single-node `slurm_cluster` fixture in one session.
Each node declares 2 fake GPUs, 16 CPUs and 4000 MB; the filesystem is the machine's own, shared by both nodes.

It yields a `MultiSlurmCluster`: the `SlurmCluster` interface (partition, env, workdir, run, sbatch, wait_job,
job_state, sacct_state, wait_sacct, requeue, cancel_all, log_tails) plus `.nodes` (names), `.addrs` (name ->
address), `.bridge_addr`, `.node_of(jobid)`, `.kill_slurmd(node)` (only the daemon: the node's jobs keep running, as
after a slurmd crash), `.crash_node(node)` (every process of the node: a hard crash), `.start_slurmd(node)` (bring it
back) and `.wait_node_state(node, states, timeout)`, `.node_pids(node, cmdline_contains)`.

Set-up as measured on this kind of machine (docs/MEASURED.md): slurmd under `nsenter --net=<netns> unshare --uts
--mount` (not `ip netns exec`, which remounts /sys), /etc/resolv.conf bind-mounted to a 127.0.0.1 one inside each
node's private mount namespace (the real nameserver is unreachable from the bridge: every DNS fall-through would
stall 10 s), the node names in /etc/hosts (lines marked, removed at teardown). Small timeouts (cred_expire=10,
SlurmdTimeout=10, sched_interval=2) so that a lost node's job is requeued and restarted elsewhere in tens of seconds.

Requires root, iproute2, util-linux (nsenter, unshare) and the packages the single-node fixture needs: without them
it skips, or fails when env CI is set. One such cluster per machine (its own lock, /run/fcn-sweep-slurm-multi/lock:
the node names, addresses and bridge are global). Leftovers of a crashed session (daemons marked by env
FCN_SWEEP_SLURM_MULTI_FIXTURE, job processes with SLURM_CLUSTER_NAME=fcnmulti, the netns, the bridge, the /etc/hosts
lines) are removed before start; teardown removes the same. FCN_SLURM_KEEP=1 keeps the work dir.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.services.slurm import (
    GPUS_PER_NODE,
    Ident,
    SlurmCluster,
    SlurmStartError,
    _bin,
    _free_ports,
    _kill_cluster_processes,
    _Lock,
    _missing_requirements,
    _ours,
    _spawn,
    _start_munge_and_accounting,
    _terminate,
    _wait,
    slurm_conf,
    write_slurmdbd_conf,
)

IDENT = Ident(
    marker="FCN_SWEEP_SLURM_MULTI_FIXTURE",
    cluster_name="fcnmulti",
    wd_prefix="fcn-mslurm-",
    run_dir=Path("/run/fcn-sweep-slurm-multi"),
)
PARTITION = "multi"
NODES = ("fcnode1", "fcnode2")
BRIDGE = "fcnbr0"
SUBNET = "10.88.0"  # exists only on BRIDGE, which this fixture creates and deletes
BRIDGE_ADDR = f"{SUBNET}.1"
ADDRS = {n: f"{SUBNET}.{11 + i}" for i, n in enumerate(NODES)}
HOSTS_TAG = "# fcn-sweep two-node test cluster (tests/services/slurm_multi.py)"
# Over-declared on purpose (the machine has 2 cores): ~30 one-CPU jobs must be able to start at once across the two
# nodes (the many-jobs test); SlurmdParameters=config_overrides makes slurmd take these numbers instead of draining.
CPUS_PER_NODE = 16
MEM_PER_NODE = 4000  # MB; DefMemPerCPU=100 so that 30 default jobs fit
START_TIMEOUT = 60.0
MORE_BINARIES = ("ip", "nsenter", "unshare", "mount")


@dataclasses.dataclass
class MultiSlurmCluster(SlurmCluster):
    nodes: tuple[str, ...] = NODES
    addrs: dict[str, str] = dataclasses.field(default_factory=lambda: dict(ADDRS))
    bridge_addr: str = BRIDGE_ADDR
    slurmd_port: int = 0

    def node_of(self, jobid: int | str) -> str | None:
        """The node list of a job (e.g. 'fcnode2' or 'fcnode[1-2]'), None while it has none."""
        p = self.run("squeue", "-h", "-j", str(jobid), "-o", "%N", check=False)
        out = p.stdout.strip()
        return out or None

    def node_state(self, node: str) -> str:
        return self.run("sinfo", "-h", "-n", node, "-o", "%T", check=False, timeout=10).stdout.strip()

    def wait_node_state(self, node: str, states: tuple[str, ...], timeout: float = 90.0) -> str:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.node_state(node)
            if any(state.rstrip("*~#$@").startswith(s) for s in states):
                return state
            time.sleep(0.5)
        raise TimeoutError(f"node {node} not in {states} after {timeout:.0f} s (last {state!r})\n" + self.log_tails())

    def node_pids(self, node: str, cmdline_contains: str = "") -> list[int]:
        """Live processes of the node (its network namespace), optionally only those whose command line has a
        given substring, e.g. 'fcn.train'."""
        pids = _netns_pids(node)
        if cmdline_contains:
            pids = [p for p in pids if cmdline_contains.encode() in _read_bytes(f"/proc/{p}/cmdline")]
        return pids

    def kill_slurmd(self, node: str) -> None:
        """SIGKILL the node's slurmd only: its running job steps (slurmstepd and children) live on."""
        for pid in _netns_pids(node):
            if _read_comm(pid) == "slurmd":
                _kill9(pid)
        p = self.procs.get(f"slurmd@{node}")
        if p is not None:
            p.wait(timeout=10)

    def crash_node(self, node: str) -> None:
        """SIGKILL every process in the node's network namespace: the node is gone, as in a hard crash."""
        for _ in range(5):  # a dying job may still fork: repeat until the namespace is empty
            pids = _netns_pids(node)
            if not pids:
                break
            for pid in pids:
                _kill9(pid)
            time.sleep(0.3)
        p = self.procs.get(f"slurmd@{node}")
        if p is not None:
            p.wait(timeout=10)

    def start_slurmd(self, node: str) -> None:
        """(Re)start the node's slurmd; with ReturnToService=2 the node becomes usable again once it registers."""
        _start_slurmd(self.workdir, node, self.procs)


# --------------------------------------------------------------------------------------------------------------------
# helpers


def _sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([_bin(args[0]), *args[1:]], check=check, text=True, capture_output=True, timeout=30)


def _read_comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _read_bytes(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError:
        return b""


def _kill9(pid: int) -> None:
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


def _netns_pids(name: str) -> list[int]:
    p = _sh("ip", "netns", "pids", name, check=False)
    return [int(x) for x in p.stdout.split() if x.isdigit()] if p.returncode == 0 else []


def _missing() -> str | None:
    reason = _missing_requirements()
    if reason:
        return reason
    missing = [
        b for b in MORE_BINARIES if shutil.which(b, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None
    ]
    return f"the two-node Slurm test cluster needs {', '.join(missing)} (iproute2, util-linux)" if missing else None


def _hosts_remove() -> None:
    hosts = Path("/etc/hosts")
    try:
        lines = hosts.read_text().splitlines(keepends=True)
    except OSError:
        return
    kept = [ln for ln in lines if HOSTS_TAG not in ln]
    if kept != lines:
        hosts.write_text("".join(kept))  # in place: /etc/hosts may be a bind mount (no rename over it)


def _hosts_add() -> None:
    _hosts_remove()
    hosts = Path("/etc/hosts")
    text = hosts.read_text()
    if text and not text.endswith("\n"):
        text += "\n"
    hosts.write_text(text + "".join(f"{ADDRS[n]} {n} {HOSTS_TAG}\n" for n in NODES))


def _network_down() -> None:
    for n in NODES:
        for pid in _netns_pids(n):
            _kill9(pid)
        _sh("ip", "netns", "delete", n, check=False)
        _sh("ip", "link", "delete", f"{n}-h", check=False)
    _sh("ip", "link", "delete", BRIDGE, check=False)


def _network_up() -> None:
    """The bridge (BRIDGE_ADDR/24) and, per node, a netns whose eth0 (a veth to the bridge) has the node's address."""
    _sh("ip", "link", "add", BRIDGE, "type", "bridge")
    _sh("ip", "addr", "add", f"{BRIDGE_ADDR}/24", "dev", BRIDGE)
    _sh("ip", "link", "set", BRIDGE, "up")
    for n in NODES:
        host_end = f"{n}-h"
        _sh("ip", "netns", "add", n)
        _sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", n)
        _sh("ip", "link", "set", host_end, "master", BRIDGE)
        _sh("ip", "link", "set", host_end, "up")
        for cmd in (
            ("addr", "add", f"{ADDRS[n]}/24", "dev", "eth0"),
            ("link", "set", "eth0", "up"),
            ("link", "set", "lo", "up"),
            ("route", "add", "default", "via", BRIDGE_ADDR),
        ):
            _sh("ip", "-n", n, *cmd)


def _stop_leftovers() -> None:
    """Stop everything of a crashed earlier session (we hold the lock, so no live session owns any of it)."""
    registry = IDENT.run_dir / "registry.json"
    old = None
    if registry.exists():
        try:
            old = json.loads(registry.read_text()).get("workdir")
        except (OSError, ValueError):
            pass
    if _ours(None, IDENT):
        _kill_cluster_processes(None, ident=IDENT)
    _network_down()
    _hosts_remove()
    registry.unlink(missing_ok=True)
    if old and Path(old).name.startswith(IDENT.wd_prefix) and not os.environ.get("FCN_SLURM_KEEP"):
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------------------
# configuration and start


def _write_configs(wd: Path, ports: dict[str, int]) -> Path:
    etc = wd / "etc"
    etc.mkdir()
    host = _sh("hostname", "-s").stdout.strip() or "localhost"
    header = f"# Written by tests/services/slurm_multi.py for a throw-away two-node test cluster; state in {wd}"
    node_lines = "\n".join(
        f"NodeName={n} NodeAddr={ADDRS[n]} NodeHostname={n} CPUs={CPUS_PER_NODE} RealMemory={MEM_PER_NODE} "
        f"Gres=gpu:{GPUS_PER_NODE} State=UNKNOWN"
        for n in NODES
    )
    (etc / "slurm.conf").write_text(
        slurm_conf(
            header=header,
            cluster_name=IDENT.cluster_name,
            ctld_host=f"{host}({BRIDGE_ADDR})",
            ports=ports,
            wd=wd,
            nodes=node_lines,
            partition=PARTITION,
            slurmd_files="%n",  # one slurmd per node name, all in this work dir
            slurmd_extra=("SlurmdParameters=config_overrides", "SlurmdTimeout=10"),
            def_mem_per_cpu=100,
        )
    )
    (etc / "gres.conf").write_text(
        f"AutoDetect=off\nNodeName={','.join(NODES)} Name=gpu File={wd}/dev/nvidia[0-{GPUS_PER_NODE - 1}]\n"
    )
    write_slurmdbd_conf(etc / "slurmdbd.conf", header=header, dbd_host=host, ports=ports, wd=wd)
    (wd / "resolv.conf").write_text("nameserver 127.0.0.1\n")  # no DNS on the bridge: fail fast, never stall
    return etc / "slurm.conf"


def _start_slurmd(wd: Path, node: str, procs: dict[str, subprocess.Popen]) -> None:
    conf = wd / "etc" / "slurm.conf"
    inner = (
        f"hostname {node} && mount --bind {wd}/resolv.conf /etc/resolv.conf && "
        f"exec {_bin('slurmd')} -D -N {node} -f {conf}"
    )
    _spawn(
        f"slurmd@{node}",
        ["nsenter", f"--net=/run/netns/{node}", _bin("unshare"), "--uts", "--mount", "/bin/sh", "-c", inner],
        wd,
        procs,
        IDENT,
        env={"SLURM_CONF": str(conf)},
    )


def start_multi_cluster() -> MultiSlurmCluster:
    """Start the whole two-node cluster (caller holds the lock). Raises SlurmStartError with log tails on failure."""
    IDENT.run_dir.mkdir(parents=True, exist_ok=True)
    wd = Path(tempfile.mkdtemp(prefix=IDENT.wd_prefix))
    os.chmod(wd, 0o755)  # munge and mysql users must traverse it
    for sub in ("log", "run", "state", "dev", *(f"spool/{n}" for n in NODES)):
        (wd / sub).mkdir(parents=True, exist_ok=True)
    ports = dict(zip(("mariadb", "slurmdbd", "slurmctld", "slurmd"), _free_ports(4)))
    procs: dict[str, subprocess.Popen] = {}
    try:
        for i in range(GPUS_PER_NODE):
            os.mknod(wd / "dev" / f"nvidia{i}", 0o666 | 0o020000, os.makedev(195, i))  # S_IFCHR
        conf = _write_configs(wd, ports)
        env = {"SLURM_CONF": str(conf)}
        _network_up()
        _hosts_add()
        _start_munge_and_accounting(wd, ports, procs, IDENT, env=env)
        _spawn("slurmctld", ["slurmctld", "-D", "-f", str(conf)], wd, procs, IDENT, env=env)
        for n in NODES:
            _start_slurmd(wd, n, procs)
        cluster = MultiSlurmCluster(
            partition=PARTITION,
            node=NODES[0],
            workdir=wd,
            env=env,
            gpus_per_node=GPUS_PER_NODE,
            cpus=CPUS_PER_NODE,
            procs=procs,
            slurmd_port=ports["slurmd"],
        )

        def nodes_idle() -> bool:
            r = cluster.run("sinfo", "-h", "-N", "-p", PARTITION, "-o", "%T", check=False, timeout=10)
            return r.returncode == 0 and r.stdout.split() == ["idle"] * len(NODES)

        try:
            _wait(nodes_idle, START_TIMEOUT, "both nodes to be idle in sinfo", wd, procs)
        except SlurmStartError as e:
            r = cluster.run("sinfo", "-N", "-o", "%N %T %E", check=False, timeout=10)
            raise SlurmStartError(f"sinfo: {r.stdout.strip()} {r.stderr.strip()}\n{e}") from None
        return cluster
    except BaseException:
        stop_multi_cluster(procs, wd)
        raise


def stop_multi_cluster(procs: dict[str, subprocess.Popen], wd: Path) -> None:
    """Stop what session `wd` started (daemons, job steps, job processes, every process left in the nodes'
    namespaces), then remove the namespaces, the bridge and the /etc/hosts lines."""
    try:
        _kill_cluster_processes(wd, procs, ident=IDENT)
        for n in NODES:
            pids = _netns_pids(n)
            if pids:
                _terminate(pids, timeout=5)
    finally:
        _network_down()
        _hosts_remove()


@pytest.fixture(scope="session")
def slurm_multi():
    reason = _missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI: {reason}", pytrace=False)
        pytest.skip(reason)
    lock = _Lock(timeout=float(os.environ.get("FCN_SLURM_LOCK_TIMEOUT", "600")), run_dir=IDENT.run_dir)
    try:
        _stop_leftovers()
        cluster = start_multi_cluster()
        try:
            yield cluster
        finally:
            try:
                cluster.cancel_all()
            finally:
                stop_multi_cluster(cluster.procs, cluster.workdir)
                (IDENT.run_dir / "registry.json").unlink(missing_ok=True)
                if not os.environ.get("FCN_SLURM_KEEP"):
                    shutil.rmtree(cluster.workdir, ignore_errors=True)
    finally:
        lock.release()
