"""MLflow: where runs go (the tracking URI, credentials kept out of it), whether the server is up, and the client with
the queries every command shares (a cell's runs, an experiment's runs). Logging a cell's run is fcn/tracker.py's; the
SQLite store's set-up and repair, fcn/mlflow_db.py's.

mlflow is imported inside the functions: heavy (seconds of CPU), and a worker that never logs should not pay it.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import time
import urllib.error
import urllib.request
import warnings
from urllib.parse import unquote, urlsplit, urlunsplit

from fcn import cell
from fcn.cell import CELL_TAG, sqlite_db
from fcn.errors import UserError
from fcn.mlflow_db import RetryingClient, prepare_db


def resolve_uri(tracking_uri: str, out_dir: str) -> str:
    """The --tracking-uri, else $MLFLOW_TRACKING_URI, else a SQLite store beside the run directories."""
    uri = _move_credentials(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", ""))
    return uri or cell.store_uri(out_dir)


def _split_userinfo(uri: str) -> tuple[str, str | None, str | None]:
    """(the URI without `user:password@`, user, password); user and password are None when there are none."""
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
        return cell.artifacts_uri(out_dir)
    return None  # a server decides (--serve-artifacts)


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """One clear line when the tracking server is down, before any work starts."""
    if uri.startswith(("http://", "https://")):
        clean, user, password = _split_userinfo(uri)  # urllib can't take user:pass@ in the URL: send it as a header
        if user is None and os.environ.get("MLFLOW_TRACKING_USERNAME"):
            user, password = os.environ["MLFLOW_TRACKING_USERNAME"], os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
        req = urllib.request.Request(clean.rstrip("/") + "/health")
        if user is not None:
            req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
        elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
            req.add_header("Authorization", "Bearer " + os.environ["MLFLOW_TRACKING_TOKEN"])
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                if r.status != 200:
                    raise OSError(f"HTTP {r.status}")
        except (OSError, urllib.error.URLError) as e:
            reason = getattr(e, "reason", e)
            raise UserError(
                f"MLflow tracking server {redact(uri)} is not reachable ({reason}): start it, or pass "
                f"--tracking-uri of a running one (or leave it empty for a local SQLite store)"
            ) from e
    elif (db := sqlite_db(uri)) is not None:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the MLflow store's folder {db.parent}: {e}") from e


def client(uri: str):
    cell.quiet_mlflow()
    # A server that goes away must cost seconds, not MLflow's default of 7 retries with exponential backoff and a
    # 120 s timeout per call (minutes per logged metric): training goes on and the next run re-syncs (Tracker).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    warnings.filterwarnings("ignore", module="alembic")  # SQLite schema migration chatter, not ours to fix
    from mlflow.tracking import MlflowClient  # heavy: see the module's docstring

    # after the import: mlflow configures its own loggers at import time ("Updating database tables" on every start)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)

    prepare_db(uri)  # a SQLite store is created/migrated once, under its lock, before this process opens it
    # every store: a SQLite file is locked by other writers, a server's SQLite store or connection pool the same way
    return RetryingClient(MlflowClient(tracking_uri=uri))


def experiment_id(c, name: str, artifact_location: str | None) -> str:
    """Get or create; safe when many jobs start at once (the loser of a creation race reads the winner's)."""
    from mlflow.exceptions import MlflowException  # heavy: see the module's docstring

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


def experiment_runs(uri: str, experiment: str, filter_string: str = "") -> list:
    """Every run of an experiment matching `filter_string`, all pages (a sweep with seeds and fractions can pass one
    page of 1,000); one line naming the experiments there are when `experiment` is not one of them."""
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in c.search_experiments())
        raise UserError(
            f"MLflow experiment {experiment!r} not found in {redact(uri)} (it has: "
            f"{', '.join(names) or 'none'}); pass --experiment with one of them"
        )
    runs, token = [], None
    while True:
        page = c.search_runs([exp.experiment_id], filter_string=filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs
