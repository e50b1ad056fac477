"""A real single-node Slurm cluster (with accounting) for tests (pytest plugin).

Fixture `slurm_cluster` (session-scoped) starts, all on this machine and all state under one fresh temp dir:
munged (own socket) -> mariadbd (own datadir, port) -> slurmdbd -> slurmctld -> slurmd, with the config in
/etc/slurm/ (slurm.conf, slurmdbd.conf, gres.conf). The node has the real CPUs/memory (`slurmd -C`) plus two fake
GPUs (character devices 195:0/1), so `--gpus-per-node=2` jobs run with CUDA_VISIBLE_DEVICES=0,1 and asking for 3
is rejected at submit. Jobs run as root and see the same filesystem, so they can run sys.executable.

It yields a `SlurmCluster`: `.partition`, `.node`, `.workdir`, `.env`, `.gpus_per_node`, `.cpus`, and
`.run(*args)`, `.sbatch(*args) -> int`, `.wait_job(jobid, timeout) -> state`, `.job_state(jobid)`,
`.sacct_state(jobid)`, `.wait_sacct(jobid, timeout)`, `.requeue(jobid)`, `.cancel_all()`, `.log_tails()`.

Requires root and the Debian packages from .ci/install_system.sh: without them the fixture skips, or fails when
env CI is set. Only one cluster can run per machine (/etc/slurm is global): concurrent sessions wait on a lock.
Leftovers of a crashed session (daemons marked by env FCN_SWEEP_SLURM_FIXTURE, slurmstepds whose cwd is a
fcn-slurm-* dir, job processes with SLURM_CLUSTER_NAME=fcnsweep) are stopped before start; teardown stops the same
set for its own session, so job processes that daemonised out of Slurm's tracking do not survive either.
Teardown also removes the config files it wrote in /etc/slurm. Set FCN_SLURM_KEEP=1 to keep the work dir (logs,
state) after the session, for debugging. Start-up takes ~3-6 s (most of it slurmdbd creating the cluster's tables).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

CONF_DIR = Path("/etc/slurm")
RUN_DIR = Path("/run/fcn-sweep-slurm")  # lock + registry of the live cluster's pids
TEMPLATE_DIR = Path("/var/tmp/fcn-sweep-slurm")  # cached empty MariaDB datadir
MARKER = "FCN_SWEEP_SLURM_FIXTURE"  # env var put on every daemon we start, to recognise leftovers
CLUSTER_NAME = "fcnsweep"
PARTITION = "debug"
GPUS_PER_NODE = 2
TERMINAL_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "PREEMPTED",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "REVOKED",
    "SPECIAL_EXIT",
}
DAEMON_NAMES = ("slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged")  # stop order
REQUIRED_BINARIES = (
    "munged",
    "mariadbd",
    "mariadb-install-db",
    "mariadb",
    "slurmdbd",
    "slurmctld",
    "slurmd",
    "sbatch",
    "sacct",
    "sacctmgr",
    "scontrol",
    "sinfo",
)
DB_PASS = "fcn-sweep-slurm"
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"])
START_TIMEOUT = 60.0
CONF_HEADER = "# Written by tests/services/slurm.py for a throw-away test cluster (removed at its teardown); state in"
CONF_FILES = ("slurm.conf", "slurmdbd.conf", "gres.conf")


class SlurmStartError(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class Ident:
    """What tells one fixture's cluster from another's (the two-node one in slurm_multi.py coexists with this one, in
    one pytest session or in concurrent sessions): each finds, stops and cleans up only processes bearing its own
    daemon marker, job cluster name and work-dir prefix, and waits only on its own lock."""

    marker: str = MARKER
    cluster_name: str = CLUSTER_NAME
    wd_prefix: str = "fcn-slurm-"
    run_dir: Path = RUN_DIR


SINGLE = Ident()


@dataclasses.dataclass
class SlurmCluster:
    partition: str
    node: str
    workdir: Path
    env: dict[str, str]
    gpus_per_node: int
    cpus: int
    procs: dict[str, subprocess.Popen] = dataclasses.field(default_factory=dict, repr=False)

    # --- CLI -------------------------------------------------------------------------------------------------------
    def run(self, *args: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run a Slurm CLI (sbatch, squeue, scontrol, sacct, ...) with text output; raises on non-zero exit."""
        return subprocess.run(
            [str(a) for a in args],
            check=check,
            text=True,
            capture_output=True,
            env={**os.environ, **self.env},
            timeout=timeout,
        )

    def sbatch(self, *args: str) -> int:
        """`sbatch --parsable -p <partition> ARGS`; returns the job id."""
        out = self.run("sbatch", "--parsable", "-p", self.partition, *args).stdout.strip()
        return int(out.split(";")[0])

    # --- job state -------------------------------------------------------------------------------------------------
    def job_state(self, jobid: int | str) -> str | None:
        """State from slurmctld (`scontrol show job`), e.g. RUNNING; None once slurmctld has forgotten the job."""
        p = self.run("scontrol", "-o", "show", "job", str(jobid), check=False)
        if p.returncode != 0:
            return None
        for field in p.stdout.split():
            if field.startswith("JobState="):
                return field.split("=", 1)[1]
        return None

    def sacct_state(self, jobid: int | str) -> str | None:
        """State of the job's allocation in accounting (sacct), e.g. COMPLETED; None while unknown to slurmdbd."""
        p = self.run("sacct", "-X", "-n", "-P", "-j", str(jobid), "-o", "State", check=False)
        lines = [ln.strip() for ln in p.stdout.splitlines() if ln.strip()]
        if p.returncode != 0 or not lines:
            return None
        return lines[-1].split()[0]  # "CANCELLED by 0" -> "CANCELLED"

    def wait_job(self, jobid: int | str, timeout: float = 60.0, poll: float = 0.3) -> str:
        """Poll until the job reaches a terminal state (COMPLETED, FAILED, CANCELLED, TIMEOUT, ...) and return it."""
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            state = self.job_state(jobid) or self.sacct_state(jobid)
            if state in TERMINAL_STATES:
                return state
            time.sleep(poll)
        raise TimeoutError(
            f"slurm job {jobid} not finished after {timeout:.0f} s (last state {state})\n"
            + self.run("scontrol", "show", "job", str(jobid), check=False).stdout
            + self.log_tails()
        )

    def wait_sacct(self, jobid: int | str, timeout: float = 30.0, poll: float = 0.3) -> str:
        """Poll sacct until accounting shows a terminal state for the job, and return it."""
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            state = self.sacct_state(jobid)
            if state in TERMINAL_STATES:
                return state
            time.sleep(poll)
        raise TimeoutError(f"sacct shows no final state for job {jobid} after {timeout:.0f} s (last {state})")

    def requeue(self, jobid: int | str) -> None:
        """`scontrol requeue`: like scancel, the running job's processes get SIGCONT+SIGTERM at once (no advance
        warning signal) and SIGKILL after KillWait=2 s; the job (same id, SLURM_RESTART_COUNT+1) restarts its batch
        script from the start ~12 s later (cred_expire=10 + sched_interval)."""
        self.run("scontrol", "requeue", str(jobid))

    def cancel_all(self, timeout: float = 20.0) -> None:
        """Cancel every job of this cluster and wait until none is left running."""
        ids = self.run("squeue", "-h", "-o", "%i", check=False).stdout.split()
        if ids:
            self.run("scancel", *ids, check=False)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.run("squeue", "-h", "-o", "%i", check=False).stdout.split():
                time.sleep(0.3)

    def log_tails(self, lines: int = 25) -> str:
        return _log_tails(self.workdir, lines)


# --------------------------------------------------------------------------------------------------------------------
# helpers


def _log_tails(workdir: Path, lines: int = 25) -> str:
    """The last lines of each daemon's log (a daemon's stdout only where it has no log file: -D duplicates it)."""
    logs = sorted((workdir / "log").glob("*.log")) + [workdir / "mysql" / "mysqld.err"]
    logs += [f for f in sorted((workdir / "log").glob("*.stdout")) if not f.with_suffix(".log").exists()]
    out = []
    for f in logs:
        if f.name == "mariadb-install-db.log":
            continue
        try:
            text = f.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            continue
        if text:
            out.append(f"--- {f} (last {len(text)} lines) ---\n" + "\n".join(text))
    return "\n".join(out)


def _missing_requirements() -> str | None:
    if os.geteuid() != 0:
        return "the Slurm test cluster needs root (daemons, /etc/slurm, mknod)"
    missing = [b for b in REQUIRED_BINARIES if shutil.which(b, path=SBIN_PATH) is None]
    for user in ("munge", "mysql"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            missing.append(f"user {user}")
    if missing:
        return (
            "Slurm/munge/MariaDB not installed (missing: " + ", ".join(missing) + "); run `sudo .ci/install_system.sh`"
        )
    return None


def _bin(name: str) -> str:
    """Full path of a program, also looking in the sbin directories (a non-login PATH may lack them)."""
    return shutil.which(name, path=SBIN_PATH) or name


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (all bound at once, then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    stat = _read(f"/proc/{pid}/stat")
    return bool(stat) and stat.rsplit(b")", 1)[-1].split()[0] != b"Z"


def _own_lineage() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        stat = _read(f"/proc/{pid}/stat")
        if not stat:
            break
        pid = int(stat.rsplit(b")", 1)[-1].split()[1])
    return pids


def _ours(wd: Path | None = None, ident: Ident = SINGLE) -> dict[str, list[int]]:
    """Live processes of the test cluster of session `wd` (None: of any session), by kind:
    'daemon:<name>' (env marker set by _spawn), 'stepd' (slurmstepd, whose cwd is the work dir: it starts with an
    empty environment) and 'job' (job processes: env SLURM_CLUSTER_NAME=<ours>, including ones that escaped
    proctrack/linuxproc by daemonising, e.g. `ray start` without --block)."""
    marker = f"{ident.marker}={wd}\0".encode() if wd else f"{ident.marker}=".encode()
    job_tag = f"SLURM_CLUSTER_NAME={ident.cluster_name}\0".encode()
    skip = _own_lineage()
    found: dict[str, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in skip:
            continue
        pid = int(d)
        comm = _read(f"/proc/{pid}/comm").decode(errors="replace").strip()
        if comm.startswith("slurmstepd"):
            try:
                cwd = os.readlink(f"/proc/{pid}/cwd")
            except OSError:
                continue
            if (str(wd) == cwd) if wd else Path(cwd).name.startswith(ident.wd_prefix):
                kind = "stepd"
            else:
                continue
        else:
            env = _read(f"/proc/{pid}/environ")
            if marker in env and comm in DAEMON_NAMES + ("slurmscriptd",):
                kind = f"daemon:{comm}"
            elif job_tag in env:
                kind = "job"
            else:
                continue
        if _alive(pid):
            found.setdefault(kind, []).append(pid)
    return found


def _terminate(pids: list[int], timeout: float = 10.0) -> None:
    """SIGTERM, wait up to `timeout`, then SIGKILL."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _kill_cluster_processes(
    wd: Path | None, procs: dict[str, subprocess.Popen] | None = None, ident: Ident = SINGLE
) -> None:
    """Stop, in order: slurmd, job steps and job processes, slurmctld, slurmdbd, mariadbd, munged.
    `procs`: the Popen handles of a live session (also reaped); leftovers of other sessions are found in /proc."""
    procs = procs or {}

    def stop(name: str) -> None:
        p = procs.get(name)
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        left = _ours(wd, ident).get(f"daemon:{name}", [])
        if left:
            _terminate(left, timeout=10)

    stop("slurmd")
    found = _ours(wd, ident)
    steps = found.get("stepd", []) + found.get("job", [])
    if steps:
        _terminate(steps, timeout=5)
    for name in ("slurmctld", "slurmscriptd", "slurmdbd", "mariadbd", "munged"):
        stop(name)
    for p in procs.values():  # reap
        if p.poll() is None:
            p.kill()
            p.wait(timeout=5)


def _stop_leftovers() -> None:
    """Stop everything of a crashed earlier session (we hold the lock, so no live session owns them)."""
    registry = RUN_DIR / "registry.json"
    old_workdir = None
    if registry.exists():
        try:
            old_workdir = json.loads(registry.read_text()).get("workdir")
        except (OSError, ValueError):
            pass
    if _ours(None):
        _kill_cluster_processes(None)
    _remove_configs()
    registry.unlink(missing_ok=True)
    if old_workdir and Path(old_workdir).name.startswith("fcn-slurm-") and not os.environ.get("FCN_SLURM_KEEP"):
        shutil.rmtree(old_workdir, ignore_errors=True)


class _Lock:
    """Machine-wide lock: /etc/slurm and the node name are global, so one cluster at a time."""

    def __init__(self, timeout: float, run_dir: Path = RUN_DIR):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.fh = open(run_dir / "lock", "w")
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self.fh.close()
                    raise SlurmStartError(
                        f"another test session holds {run_dir}/lock (a Slurm test cluster is "
                        f"running) for more than {timeout:.0f} s"
                    ) from None
                time.sleep(1.0)

    def release(self) -> None:
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def _wait(cond, timeout: float, what: str, workdir: Path, procs: dict[str, subprocess.Popen]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        for name, p in procs.items():
            if p.poll() is not None:
                raise SlurmStartError(
                    f"{name} exited with {p.returncode} while waiting for {what}\n" + _log_tails(workdir)
                )
        time.sleep(0.1)
    raise SlurmStartError(f"timed out after {timeout:.0f} s waiting for {what}\n" + _log_tails(workdir))


# --------------------------------------------------------------------------------------------------------------------
# configuration


def _node_line() -> tuple[str, int]:
    """`slurmd -C`'s NodeName line (real CPUs, sockets, memory) minus UpTime, and the CPU count."""
    out = subprocess.run([_bin("slurmd"), "-C"], check=True, text=True, capture_output=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("NodeName="))
    fields = [f for f in line.split() if not f.startswith("UpTime")]
    cpus = int(next(f for f in fields if f.startswith("CPUs=")).split("=")[1])
    return " ".join(fields), cpus


def slurm_conf(
    *,
    header: str,
    cluster_name: str,
    ctld_host: str,
    ports: dict[str, int],
    wd: Path,
    nodes: str,
    partition: str,
    slurmd_files: str = "",
    slurmd_extra: tuple[str, ...] = (),
    def_mem_per_cpu: int = 1024,
) -> str:
    """The slurm.conf of a throw-away test cluster (both fixtures: this one and slurm_multi.py), state under `wd`.

    ctld_host: `SlurmctldHost`'s value, e.g. `myhost(127.0.0.1)`; nodes: the NodeName line(s); slurmd_files: a suffix
    for slurmd's spool dir, pid and log names (`%n`: one per node name, when several slurmd share the work dir);
    slurmd_extra: lines after SlurmdDebug. The small timeouts (cred_expire, sched_interval, KillWait) make a requeued
    job restart in ~11 s instead of ~130 s; cred_expire takes effect only after a daemon restart."""
    munge_sock = wd / "munge" / "munge.socket.2"
    spool, pid, log = (
        (f"spool/{slurmd_files}", f"slurmd-{slurmd_files}.pid", f"slurmd-{slurmd_files}.log")
        if slurmd_files
        else ("spool", "slurmd.pid", "slurmd.log")
    )
    extra = "".join(line + "\n" for line in slurmd_extra)
    return f"""\
{header}
ClusterName={cluster_name}
SlurmctldHost={ctld_host}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ports["slurmctld"]}
SlurmdPort={ports["slurmd"]}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_sock},cred_expire=10
StateSaveLocation={wd}/state
SlurmdSpoolDir={wd}/{spool}
SlurmctldPidFile={wd}/run/slurmctld.pid
SlurmdPidFile={wd}/run/{pid}
SlurmctldLogFile={wd}/log/slurmctld.log
SlurmdLogFile={wd}/log/{log}
SlurmctldDebug=info
SlurmdDebug=info
{extra}ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU={def_mem_per_cpu}
GresTypes=gpu
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=5
EnforcePartLimits=ALL
MailProg=/bin/true
ReturnToService=2
JobRequeue=1
KillWait=2
InactiveLimit=0
MinJobAge=300
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={ports["slurmdbd"]}
AccountingStoragePass={munge_sock}
AccountingStorageTRES=gres/gpu
{nodes}
PartitionName={partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def write_slurmdbd_conf(path: Path, *, header: str, dbd_host: str, ports: dict[str, int], wd: Path) -> None:
    """slurmdbd.conf for either fixture's accounting (MariaDB on 127.0.0.1), mode 0600 and owned by root (slurmdbd
    wants its config owned by SlurmUser, root here)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"""\
{header}
AuthType=auth/munge
AuthInfo=socket={wd / "munge" / "munge.socket.2"}
DbdAddr=127.0.0.1
DbdHost={dbd_host}
DbdPort={ports["slurmdbd"]}
SlurmUser=root
DebugLevel=info
LogFile={wd}/log/slurmdbd.log
PidFile={wd}/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={ports["mariadb"]}
StorageUser=slurm
StoragePass={DB_PASS}
StorageLoc=slurm_acct_db
""")
    os.chown(path, 0, 0)


def _write_configs(wd: Path, node: str, ports: dict[str, int]) -> int:
    node_line, cpus = _node_line()
    CONF_DIR.mkdir(parents=True, exist_ok=True)
    (CONF_DIR / "slurm.conf").write_text(
        slurm_conf(
            header=f"{CONF_HEADER} {wd}",
            cluster_name=CLUSTER_NAME,
            ctld_host=f"{node}(127.0.0.1)",
            ports=ports,
            wd=wd,
            nodes=f"{node_line} NodeAddr=127.0.0.1 Gres=gpu:{GPUS_PER_NODE} State=UNKNOWN",
            partition=PARTITION,
        )
    )
    os.chmod(CONF_DIR / "slurm.conf", 0o644)
    (CONF_DIR / "gres.conf").write_text(
        f"{CONF_HEADER} {wd}\nAutoDetect=off\nName=gpu File={wd}/dev/nvidia[0-{GPUS_PER_NODE - 1}]\n"
    )
    write_slurmdbd_conf(CONF_DIR / "slurmdbd.conf", header=f"{CONF_HEADER} {wd}", dbd_host=node, ports=ports, wd=wd)
    return cpus


def _my_cnf(mysql: Path, port: int) -> str:
    """MariaDB settings for a small throw-away accounting database (durability off: nothing here must survive)."""
    return f"""\
[mariadbd]
datadir={mysql}/data
socket={mysql}/mysqld.sock
pid-file={mysql}/mysqld.pid
log-error={mysql}/mysqld.err
port={port}
bind-address=127.0.0.1
skip-name-resolve
skip-log-bin
performance_schema=OFF
innodb_buffer_pool_size=32M
innodb_log_file_size=8M
innodb_flush_log_at_trx_commit=0
innodb_doublewrite=0
innodb_lock_wait_timeout=900
"""


def _mariadb_template() -> Path:
    """An initialised, empty MariaDB datadir, made once per machine and MariaDB version (mariadb-install-db takes
    0.5 s on an idle machine but 4 s on a busy one; a copy takes ~0.1 s). Callers hold the lock."""
    version = subprocess.run([_bin("mariadbd"), "--version"], text=True, capture_output=True).stdout.split()
    tag = "".join(c if c.isalnum() or c in ".-" else "_" for c in "-".join(version[1:3]))[:80]
    template = TEMPLATE_DIR / f"mariadb-datadir-{tag}"
    if (template / "mysql").is_dir():
        return template
    TEMPLATE_DIR.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix="mariadb-build-", dir=TEMPLATE_DIR))
    try:
        os.chmod(build, 0o755)
        mysql = build / "mysql"
        mysql.mkdir()
        shutil.chown(mysql, "mysql", "mysql")
        (build / "my.cnf").write_text(_my_cnf(mysql, 0))
        p = subprocess.run(
            [
                _bin("mariadb-install-db"),
                f"--defaults-file={build}/my.cnf",
                "--user=mysql",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
            ],
            text=True,
            capture_output=True,
        )
        if p.returncode != 0 or not (mysql / "data" / "mysql").is_dir():
            raise SlurmStartError("mariadb-install-db failed:\n" + p.stdout[-2000:] + p.stderr[-2000:])
        shutil.rmtree(template, ignore_errors=True)
        os.rename(mysql / "data", template)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return template


# --------------------------------------------------------------------------------------------------------------------
# start / stop


def _spawn(
    name: str,
    argv: list[str],
    wd: Path,
    procs: dict[str, subprocess.Popen],
    ident: Ident = SINGLE,
    env: dict[str, str] | None = None,
    **kw,
) -> subprocess.Popen:
    out = open(wd / "log" / f"{name}.stdout", "ab")
    env = {**os.environ, **(env or {}), ident.marker: str(wd)}
    argv = [_bin(argv[0]), *argv[1:]]
    p = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
        cwd=wd,
        **kw,
    )
    out.close()
    procs[name] = p
    (ident.run_dir / "registry.json").write_text(
        json.dumps({"owner_pid": os.getpid(), "workdir": str(wd), "pids": {k: v.pid for k, v in procs.items()}})
    )
    return p


def _start_munge_and_accounting(
    wd: Path,
    ports: dict[str, int],
    procs: dict[str, subprocess.Popen],
    ident: Ident = SINGLE,
    env: dict[str, str] | None = None,
) -> None:
    """munged on its own socket (wd/munge), then MariaDB with a fresh datadir, then slurmdbd (its config is beside
    the slurm.conf that env SLURM_CONF, or /etc/slurm, names). Shared by both cluster fixtures."""
    # munged, on its own socket (AuthInfo=socket=... points Slurm at it)
    key = Path("/etc/munge/munge.key")
    if not key.exists() or key.stat().st_size == 0:
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_bytes(os.urandom(1024))
        shutil.chown(key, "munge", "munge")
        key.chmod(0o400)
    mdir = wd / "munge"
    mdir.mkdir(mode=0o755)
    shutil.chown(mdir, "munge", "munge")
    (wd / "log" / "munged.log").touch()
    shutil.chown(wd / "log" / "munged.log", "munge", "munge")
    _spawn(
        "munged",
        [
            "munged",
            "-F",
            f"--socket={mdir}/munge.socket.2",
            f"--pid-file={mdir}/munged.pid",
            f"--seed-file={mdir}/munged.seed",
            f"--log-file={wd}/log/munged.log",
        ],
        wd,
        procs,
        ident,
        user="munge",
        group="munge",
        extra_groups=[],
    )

    # MariaDB with a fresh datadir (a copy of a per-machine template), TCP on 127.0.0.1 only
    mysql = wd / "mysql"
    mysql.mkdir(mode=0o755)
    (wd / "my.cnf").write_text(_my_cnf(mysql, ports["mariadb"]))
    (wd / "init.sql").write_text(
        f"CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '{DB_PASS}';\n"
        "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';\n"
    )
    shutil.copytree(_mariadb_template(), mysql / "data", symlinks=True)
    for root, dirs, files in os.walk(mysql):
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            shutil.chown(name, "mysql", "mysql")
    _spawn(
        "mariadbd",
        ["mariadbd", f"--defaults-file={wd}/my.cnf", "--user=mysql", f"--init-file={wd}/init.sql"],
        wd,
        procs,
        ident,
    )
    _wait(lambda: (mdir / "munge.socket.2").exists(), 20, "munged's socket", wd, procs)

    def db_ready() -> bool:
        return (
            subprocess.run(
                [_bin("mariadb"), "-h127.0.0.1", f"-P{ports['mariadb']}", "-uslurm", f"-p{DB_PASS}", "-e", "SELECT 1"],
                capture_output=True,
            ).returncode
            == 0
        )

    _wait(db_ready, 30, "MariaDB", wd, procs)

    _spawn("slurmdbd", ["slurmdbd", "-D"], wd, procs, ident, env=env)
    _wait(lambda: _port_open(ports["slurmdbd"]), 30, "slurmdbd", wd, procs)


def start_cluster(workdir: Path | None = None) -> SlurmCluster:
    """Start the whole cluster (caller holds the lock). Raises SlurmStartError with log tails on failure."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    wd = Path(workdir or tempfile.mkdtemp(prefix="fcn-slurm-"))
    os.chmod(wd, 0o755)  # munge and mysql users must traverse it
    for sub in ("log", "run", "state", "spool", "dev"):
        (wd / sub).mkdir(parents=True, exist_ok=True)
    node = _node_line()[0].split()[0].split("=", 1)[1]  # slurmd's own name for this host (short hostname)
    ports = dict(zip(("mariadb", "slurmdbd", "slurmctld", "slurmd"), _free_ports(4)))
    procs: dict[str, subprocess.Popen] = {}
    try:
        for i in range(GPUS_PER_NODE):
            os.mknod(wd / "dev" / f"nvidia{i}", 0o666 | 0o020000, os.makedev(195, i))  # S_IFCHR
        cpus = _write_configs(wd, node, ports)

        _start_munge_and_accounting(wd, ports, procs)
        _spawn("slurmctld", ["slurmctld", "-D", "-f", str(CONF_DIR / "slurm.conf")], wd, procs)
        _spawn("slurmd", ["slurmd", "-D", "-f", str(CONF_DIR / "slurm.conf")], wd, procs)

        cluster = SlurmCluster(
            partition=PARTITION,
            node=node,
            workdir=wd,
            env={"SLURM_CONF": str(CONF_DIR / "slurm.conf")},
            gpus_per_node=GPUS_PER_NODE,
            cpus=cpus,
            procs=procs,
        )

        def node_idle() -> bool:
            r = cluster.run("sinfo", "-h", "-N", "-p", PARTITION, "-o", "%T", check=False, timeout=10)
            return r.returncode == 0 and r.stdout.strip() == "idle"

        try:
            _wait(node_idle, START_TIMEOUT, f"node {node} to be idle in sinfo", wd, procs)
        except SlurmStartError as e:
            r = cluster.run("sinfo", "-N", "-o", "%N %T %E", check=False, timeout=10)
            raise SlurmStartError(f"sinfo: {r.stdout.strip()} {r.stderr.strip()}\n{e}") from None
        return cluster
    except BaseException:
        stop_cluster(procs, wd)
        raise


def stop_cluster(procs: dict[str, subprocess.Popen], wd: Path) -> None:
    """Stop what session `wd` started (its daemons, job steps and job processes), leaving nothing behind, and remove
    its config from /etc/slurm (a stale slurm.conf would make Slurm clients hang on a dead controller)."""
    _kill_cluster_processes(wd, procs)
    _remove_configs()


def _remove_configs() -> None:
    for name in CONF_FILES:
        f = CONF_DIR / name
        try:
            if f.read_text().startswith(CONF_HEADER):
                f.unlink()
        except OSError:
            pass


@pytest.fixture(scope="session")
def slurm_cluster():
    reason = _missing_requirements()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI: {reason}", pytrace=False)
        pytest.skip(reason)
    lock = _Lock(timeout=float(os.environ.get("FCN_SLURM_LOCK_TIMEOUT", "600")))
    wd = None
    try:
        _stop_leftovers()
        cluster = start_cluster()
        wd = cluster.workdir
        try:
            yield cluster
        finally:
            try:
                cluster.cancel_all()
            finally:
                stop_cluster(cluster.procs, wd)
                (RUN_DIR / "registry.json").unlink(missing_ok=True)
                if not os.environ.get("FCN_SLURM_KEEP"):
                    shutil.rmtree(wd, ignore_errors=True)
    finally:
        lock.release()
