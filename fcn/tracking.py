"""MLflow: where runs go, whether the server is up, and the one run of each cell (never two).

mlflow is imported inside the functions: a worker that never logs should not pay its import time.
"""
from __future__ import annotations

import os
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from fcn.errors import UserError

CELL_TAG = "cell_key"


def resolve_uri(tracking_uri: str, out_dir: str) -> str:
    """The --tracking-uri, else $MLFLOW_TRACKING_URI, else a SQLite store beside the run directories."""
    uri = _move_credentials(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", ""))
    return uri or f"sqlite:///{Path(out_dir).resolve() / 'mlflow.db'}"


def _split_userinfo(uri: str) -> tuple[str, str | None, str | None]:
    """(the URI without `user:password@`, user, password); user and password are None when there are none."""
    from urllib.parse import unquote, urlsplit, urlunsplit

    if not uri.startswith(("http://", "https://")):
        return uri, None, None
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri, None, None
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=host)), unquote(user), unquote(password)


_USERINFO = re.compile(r"(https?://)[^/@\s]+@")


def redact(text: str) -> str:
    """A URI (or any text holding URIs) as it may be printed or stored: `http://user:pw@host` → `http://***@host`."""
    return _USERINFO.sub(r"\1***@", text)


def _move_credentials(uri: str) -> str:
    """`uri` without `user:password@`; the credentials go to MLflow's MLFLOW_TRACKING_USERNAME / _PASSWORD, which
    every MlflowClient of this process and of its children (local workers, Ray, Slurm jobs) reads."""
    clean, user, password = _split_userinfo(uri)
    if user is not None:
        os.environ["MLFLOW_TRACKING_USERNAME"] = user
        os.environ["MLFLOW_TRACKING_PASSWORD"] = password or ""
    return clean


def without_credentials(config):
    """`config` with `user:password@` taken out of its tracking URI and put in MLflow's own environment variables
    (MLFLOW_TRACKING_USERNAME / _PASSWORD, which every MlflowClient of this process and its children reads), so that
    configs, checkpoints, metrics.json, MLflow params and job files never hold the password."""
    clean = _move_credentials(config.tracking_uri or "")
    return config if clean == (config.tracking_uri or "") else config.replace(tracking_uri=clean)


def artifact_root(uri: str, out_dir: str) -> str | None:
    """For a local store, artifacts beside it (not in ./mlruns of whatever directory a job starts in)."""
    if uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri:
        return (Path(out_dir).resolve() / "mlartifacts").as_uri()
    return None  # a server decides (--serve-artifacts)


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """One clear line when the tracking server is down, before any work starts."""
    if uri.startswith(("http://", "https://")):
        clean, user, password = _split_userinfo(uri)  # urllib can't take user:pass@ in the URL: send it as a header
        if user is None and os.environ.get("MLFLOW_TRACKING_USERNAME"):
            user, password = os.environ["MLFLOW_TRACKING_USERNAME"], os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
        req = urllib.request.Request(clean.rstrip("/") + "/health")
        if user is not None:
            import base64

            req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
        elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
            req.add_header("Authorization", "Bearer " + os.environ["MLFLOW_TRACKING_TOKEN"])
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                if r.status != 200:
                    raise OSError(f"HTTP {r.status}")
        except (OSError, urllib.error.URLError) as e:
            reason = getattr(e, "reason", e)
            raise UserError(f"MLflow tracking server {redact(uri)} is not reachable ({reason}): start it, or pass "
                            f"--tracking-uri of a running one (or leave it empty for a local SQLite store)")
    elif uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the MLflow store's folder {db.parent}: {e}")


def client(uri: str):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no network at run time
    # A server that goes away must cost seconds, not MLflow's default of 7 retries with exponential backoff and a
    # 120 s timeout per call (minutes per logged metric): training goes on and the next run re-syncs (Tracker).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    import logging

    import warnings

    warnings.filterwarnings("ignore", module="alembic")  # SQLite schema migration chatter, not ours to fix
    from mlflow.tracking import MlflowClient

    # after the import: mlflow configures its own loggers at import time ("Updating database tables" on every start)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)

    return MlflowClient(tracking_uri=uri)


def experiment_id(c, name: str, artifact_location: str | None) -> str:
    """Get or create; safe when many jobs start at once (the loser of a creation race reads the winner's)."""
    from mlflow.exceptions import MlflowException

    for attempt in range(5):
        exp = c.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                c.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        try:
            return c.create_experiment(name, artifact_location=artifact_location)
        except MlflowException:
            time.sleep(0.2 * (attempt + 1))
    raise UserError(f"could not create or find MLflow experiment {name!r}")


def cell_runs(c, exp_id: str, key: str) -> list:
    """All live runs of a cell, oldest first."""
    runs = c.search_runs([exp_id], filter_string=f"tags.{CELL_TAG} = '{key}'", max_results=100)
    return sorted(runs, key=lambda r: r.info.start_time or 0)


def is_finished(run) -> bool:
    return run.info.status == "FINISHED" and "test_roc_auc" in run.data.metrics


class Tracker:
    """MLflow logging of one cell from rank 0. After the start, a failing server costs a warning, not the run:
    metrics.json and the checkpoints stay the truth, and the next run of the command re-syncs the final result."""

    def __init__(self, uri: str, experiment: str, out_dir: str, enabled: bool = True):
        self.uri, self.enabled, self.run_id, self._warned = uri, enabled, None, False
        self._down = False  # set after a call failed for good: later calls are skipped, not retried for minutes
        self.exp_id = None
        if enabled:
            self.c = client(uri)
            self.exp_id = experiment_id(self.c, experiment, artifact_root(uri, out_dir))

    def start(self, key: str, params: dict, tags: dict, run_id: str | None = None) -> str | None:
        """Continue `run_id` (from a checkpoint), else the cell's existing unfinished run, else a new one."""
        if not self.enabled:
            return None
        if run_id is None:
            # its unfinished run, else its finished one (a cell retrained from scratch after losing metrics.json and
            # its checkpoints): a cell never gets a second run
            runs = cell_runs(self.c, self.exp_id, key)
            existing = [r for r in runs if not is_finished(r)] or runs
            run_id = existing[-1].info.run_id if existing else None
        if run_id is None:
            run = self.c.create_run(self.exp_id, run_name=key, tags={CELL_TAG: key, **tags})
            run_id = run.info.run_id
            self._call(self._log_params, run_id, params)
        else:
            self._call(self.c.update_run, run_id, status="RUNNING")
        self.run_id = run_id
        return run_id

    def _log_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        self.c.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def _call(self, fn, *a, **kw):
        if self._down:
            return None
        for attempt in range(3):  # SQLite stores shared by parallel cells can be briefly locked
            try:
                return fn(*a, **kw)
            except Exception as e:  # noqa: BLE001 - any tracking failure is survivable
                if attempt == 2:
                    self._down = True  # the server is gone: metrics.json and the checkpoints carry on
                    if not self._warned:
                        print(f"warning: MLflow logging to {redact(self.uri)} failed ({type(e).__name__}: "
                              f"{redact(str(e).splitlines()[0])[:200]}); training goes on, rerun the command to "
                              f"re-sync",
                              file=sys.stderr)
                        self._warned = True
                    return None
                time.sleep(0.5 * (attempt + 1))

    def metrics(self, values: dict, step: int | None = None) -> None:
        if not (self.enabled and self.run_id):
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, step or 0) for k, v in values.items() if v == v]  # skip NaN
        self._call(self.c.log_batch, self.run_id, metrics=batch)

    def artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled and self.run_id:
            self._call(self.c.log_artifact, self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        if self.enabled and self.run_id:
            self._call(self.c.set_terminated, self.run_id, status)
