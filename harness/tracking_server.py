"""An MLflow tracking server for the length of one sweep (`python -m harness.grid --tracking-server`).

Why: the default store is one SQLite file beside the run directories. On one machine that is fine (fcn.tracking sets
it up once under a lock and retries while it is locked), but SQLite's locks are not reliable over a network
filesystem, so with jobs writing from several nodes they may corrupt it. With --tracking-server the harness runs
`mlflow server` on this (login) node over that same SQLite file, and every job talks HTTP to it instead: one process
writes the file, on a local lock. The server binds to one address that the compute nodes reach, accepts only that
Host header (MLflow's DNS-rebinding guard), proxies artifacts into the out dir (--serve-artifacts), and is stopped
when the sweep ends; the runs stay in <out_dir>/mlflow.db for harness.status, harness.tables and harness.ui.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from fcn import cell, tracking
from fcn.errors import UserError

START_TIMEOUT_S = 180.0  # ~3 s on an idle machine (docs/MEASURED.md); a loaded login node can take much longer


@dataclass
class TrackingServer:
    uri: str  # what every job gets as its tracking URI
    store_uri: str  # the SQLite file behind it (readable without the server)
    proc: subprocess.Popen
    log: Path

    def healthy(self, timeout: float = 2.0) -> bool:
        try:
            with urllib.request.urlopen(self.uri + "/health", timeout=timeout) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to the server's process group (uvicorn forks workers), SIGKILL if it lingers. Idempotent."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is not None and sig == signal.SIGTERM:
                continue
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass


def parse_address(value: str) -> tuple[str, int]:
    """'HOST[:PORT]' or ':PORT' or '' → (host or '', port or 0)."""
    m = re.fullmatch(r"(\[[^\]]+\]|[^:]*)(?::(\d+))?", value.strip())
    if not m:
        raise UserError(f"--tracking-server {value!r}: give HOST, HOST:PORT or :PORT (an address of this machine)")
    return m.group(1).strip("[]"), int(m.group(2) or 0)


def _controller_route() -> str | None:
    """This machine's address on the route to the Slurm controller: the interface the compute nodes reach too.
    A UDP connect() only picks the route; no packet is sent."""
    if shutil.which("scontrol") is None:
        return None
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"^SlurmctldHost\[0\]\s*=\s*([^\s(]+)(?:\(([^)]+)\))?", out, re.M)
    if not m:
        return None
    try:
        target = m.group(2) or socket.gethostbyname(m.group(1))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((target, 6817))
            return s.getsockname()[0]
    except OSError:
        return None


def partition_nodes(partition: str) -> int:
    """How many nodes Slurm's `partition` (its default one when empty) has; 0 when sinfo cannot tell."""
    if shutil.which("sinfo") is None:
        return 0
    cmd = ["sinfo", "-h", "-o", "%D %P"] + (["-p", partition] if partition else [])
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    rows = [ln.split() for ln in out.splitlines() if len(ln.split()) == 2 and ln.split()[0].isdigit()]
    if not partition:  # the default partition is marked with a '*'
        rows = [r for r in rows if r[1].endswith("*")]
    return sum(int(r[0]) for r in rows)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def choose_host(requested: str, cluster: str) -> str:
    """The address to bind: the one asked for; else loopback for this machine's own cells; else, for a cluster, this
    machine's address on the route to the Slurm controller, else its host name if that is not a loopback name."""
    if requested:
        return requested
    if cluster == "local":
        return "127.0.0.1"
    for candidate in (_controller_route(), socket.getfqdn()):
        if candidate and not _loopback(candidate):
            return candidate
    raise UserError(
        "--tracking-server: cannot tell which address of this machine the compute nodes reach; give it, "
        "e.g. --tracking-server 10.0.0.5 or --tracking-server login01:5000"
    )


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _mlflow_binary() -> str:
    here = Path(sys.executable).parent / "mlflow"
    return str(here) if here.exists() else (shutil.which("mlflow") or "mlflow")


def start(out_dir: str, host: str, port: int = 0, timeout_s: float = START_TIMEOUT_S) -> TrackingServer:
    """`mlflow server` over <out_dir>/mlflow.db, artifacts proxied into <out_dir>/mlartifacts; waits for /health."""
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    store_uri = cell.store_uri(str(out))
    tracking.client(store_uri)  # the store is created/migrated once, under its lock, before the server opens it
    try:
        port = port or _free_port(host)
    except OSError as e:
        raise UserError(f"--tracking-server: cannot bind {host} ({e.strerror}): give an address of this machine") from e
    shown = f"[{host}]" if ":" in host else host
    uri = f"http://{shown}:{port}"
    log = out / f"mlflow-server-{port}.log"
    cmd = [
        _mlflow_binary(),
        "server",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",  # one process owns the SQLite file; ~0.5 GB instead of ~2.4 GB (docs/MEASURED.md)
        "--backend-store-uri",
        store_uri,
        "--serve-artifacts",
        "--artifacts-destination",
        str(out / cell.ARTIFACTS_DIR),
        "--allowed-hosts",
        f"{shown}:{port}",
    ]  # only the URI handed to the jobs (MLflow's DNS-rebinding guard)
    env = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "PYTHONUNBUFFERED": "1",
        # one connection per request thread (uvicorn runs MLflow's handlers on up to 40): with SQLAlchemy's default
        # pool of 5 + 10, a sweep's burst of job starts left requests waiting 30 s for a connection and then failed
        # ("QueuePool limit of size 5 overflow 10 reached"); SQLite itself still takes one writer at a time
        "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": os.environ.get("MLFLOW_SQLALCHEMYSTORE_POOL_SIZE", "40"),
        "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": os.environ.get("MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW", "10"),
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(log, "ab") as f:
        proc = subprocess.Popen(
            cmd, cwd=out, env=env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    server = TrackingServer(uri=uri, store_uri=store_uri, proc=proc, log=log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UserError(
                f"the MLflow tracking server exited with status {proc.returncode} at start "
                f"({_last_line(log)}); its log: {log}"
            )
        if server.healthy():
            print(f"tracking server {uri} (store {store_uri}, log {log})", file=sys.stderr)
            return server
        time.sleep(0.3)
    server.stop()
    raise UserError(f"the MLflow tracking server did not answer {uri}/health within {timeout_s:.0f} s; its log: {log}")


def _last_line(log: Path) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1][:200] if lines else "no output"
