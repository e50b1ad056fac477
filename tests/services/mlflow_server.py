"""A real MLflow tracking server for tests (pytest plugin).

Fixture `mlflow_server` (session-scoped): one `mlflow server` on 127.0.0.1 and a free port, backed by a fresh sqlite
file and a proxied artifact folder, shared by every test of the session. It yields a `MlflowServer` handle with
`.uri` ("http://127.0.0.1:PORT"), `.port`, `.proc`, `.root` and `.stop()`.

Tests that need their own server (e.g. to kill it and check "tracking server down") call
`start_mlflow_server(tmp_path)` and `handle.stop()` themselves, or use the function-scoped `mlflow_server_factory`.

Why these flags: `--workers 1` and MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false start in ~3 s and take ~0.5 GB instead of
~6 s and ~2.4 GB (docs/MEASURED.md); telemetry is off because tests must not reach the network.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

START_TIMEOUT_S = 90.0  # two shared cores: a cold start under load can take much longer than the ~3 s measured


def mlflow_binary() -> str:
    """The venv's `mlflow` console script: next to the running interpreter, else on PATH."""
    here = Path(sys.executable).parent / "mlflow"
    if here.exists():
        return str(here)
    found = shutil.which("mlflow")
    if found is None:
        raise RuntimeError(f"no `mlflow` executable next to {sys.executable} or on PATH")
    return found


def free_port() -> int:
    """A port that was free a moment ago (the server binds it right after; a race is unlikely on a test machine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a light, offline server process."""
    env = dict(os.environ)
    env.update(
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="true",
        PYTHONUNBUFFERED="1",
    )
    # A tracking URI inherited from the caller would not change the server, but keep the child clean anyway.
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra or {})
    return env


@dataclass
class MlflowServer:
    """Handle to a running `mlflow server` process group."""

    uri: str
    port: int
    proc: subprocess.Popen
    root: Path  # holds mlflow.db, artifacts/ and server.log
    log_path: Path
    _log_file: object = field(default=None, repr=False)

    @property
    def backend_store_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def healthy(self, timeout: float = 2.0) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=timeout) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, n_chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the whole process group (uvicorn forks workers): SIGTERM, then SIGKILL if it lingers. Idempotent."""
        if self.proc.poll() is None:
            _signal_group(self.proc, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.proc, signal.SIGKILL)
                self.proc.wait(timeout=timeout)
        # Workers may outlive the leader for a moment: make sure nothing of the group stays behind.
        _signal_group(self.proc, signal.SIGKILL)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def kill(self) -> None:
        """Abrupt death (SIGKILL to the group), to simulate a crashed tracking server."""
        _signal_group(self.proc, signal.SIGKILL)
        self.proc.wait(timeout=15)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # start_new_session=True made the server its own group leader
    except (ProcessLookupError, PermissionError):
        pass


def start_mlflow_server(
    tmpdir: os.PathLike | str, port: int | None = None, timeout: float = START_TIMEOUT_S
) -> MlflowServer:
    """Start `mlflow server` with its store under `tmpdir` and wait until /health answers.

    Restarting on the same `tmpdir` (and port) reuses the same store, e.g. to bring a "down" server back up.
    """
    root = Path(tmpdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    (root / "artifacts").mkdir(exist_ok=True)
    port = port or free_port()
    log_path = root / "server.log"
    log_file = open(log_path, "ab")
    cmd = [
        mlflow_binary(),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        # Proxied artifacts: clients upload through the server, as on a real shared tracking server.
        "--serve-artifacts",
        "--artifacts-destination",
        str(root / "artifacts"),
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=root,
        env=server_env(),
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    server = MlflowServer(
        uri=f"http://127.0.0.1:{port}", port=port, proc=proc, root=root, log_path=log_path, _log_file=log_file
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            server.stop()
            raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{server.log_tail()}")
        if server.healthy():
            return server
        time.sleep(0.25)
    server.stop()
    raise RuntimeError(f"mlflow server not healthy after {timeout:.0f} s:\n{server.log_tail()}")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """One real MLflow server for the whole session; stopped (whole process group) at teardown."""
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow_server"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mlflow_server_factory(tmp_path_factory):
    """Start extra servers inside one test (`factory()` or `factory(root, port=...)`); all are stopped afterwards."""
    started: list[MlflowServer] = []

    def factory(root: os.PathLike | str | None = None, port: int | None = None) -> MlflowServer:
        server = start_mlflow_server(root or tmp_path_factory.mktemp("mlflow_server_extra"), port=port)
        started.append(server)
        return server

    try:
        yield factory
    finally:
        for server in started:
            server.stop()
