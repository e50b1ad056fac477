"""MLflow: where runs go, whether the server is up, the one run of each cell (never two) and a finished cell's end
(logged by training, re-synced later when the server missed it).

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

from fcn import cell
from fcn.cell import CELL_TAG
from fcn.errors import UserError

# [D] MLflow calls of a run go to a background thread (Tracker); False makes every call synchronous (debugging).
ASYNC = True


def resolve_uri(tracking_uri: str, out_dir: str) -> str:
    """The --tracking-uri, else $MLFLOW_TRACKING_URI, else a SQLite store beside the run directories."""
    uri = _move_credentials(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", ""))
    return uri or cell.store_uri(out_dir)


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
            raise UserError(
                f"MLflow tracking server {redact(uri)} is not reachable ({reason}): start it, or pass "
                f"--tracking-uri of a running one (or leave it empty for a local SQLite store)"
            )
    elif uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the MLflow store's folder {db.parent}: {e}")


def client(uri: str):
    cell.quiet_mlflow()
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

    ensure_store(uri)  # a SQLite store is created/migrated once, under its lock, before this process opens it
    return _Retrying(MlflowClient(tracking_uri=uri)) if uri.startswith("sqlite:") else MlflowClient(tracking_uri=uri)


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


class Tracker:
    """MLflow logging of one cell from rank 0. After the start, a failing server costs a warning, not the run:
    metrics.json and the checkpoints stay the truth, and the next run of the command re-syncs the final result.

    Calls after the run's creation go, in order, to one background thread (ASYNC), so the store's commits (a
    SQLite commit is an fsync: ~10 ms each, a dozen per cell) overlap training instead of adding to every cell's
    time; finish() and close() wait until everything queued is written (train() closes its tracker on any exit).
    Calls still queued when a process is killed are lost with it: a resumed run re-logs the epochs its checkpoint
    holds and MLflow lacks (log_missing_epochs), and a finished cell's end is re-synced (sync_finished).
    """

    def __init__(self, uri: str, experiment: str, out_dir: str, enabled: bool = True):
        self.uri, self.enabled, self.run_id, self._warned = uri, enabled, None, False
        self._down = False  # set after a call failed for good: later calls are skipped, not retried for minutes
        self.exp_id = None
        self._q = None  # the background writer's queue, made with its thread on the first queued call
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
            existing = [r for r in runs if not cell.run_is_finished(r)] or runs
            run_id = existing[-1].info.run_id if existing else None
        if run_id is None:
            run = self.c.create_run(self.exp_id, run_name=key, tags={CELL_TAG: key, **tags})
            run_id = run.info.run_id
            self._submit(self._log_params, run_id, params)
        else:
            self._submit(self.c.update_run, run_id, status="RUNNING")
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
                        print(
                            f"warning: MLflow logging to {redact(self.uri)} failed ({type(e).__name__}: "
                            f"{redact(str(e).splitlines()[0])[:200]}); training goes on, rerun the command to "
                            f"re-sync",
                            file=sys.stderr,
                        )
                        self._warned = True
                    return None
                time.sleep(0.5 * (attempt + 1))

    def _submit(self, fn, *a, **kw) -> None:
        """`_call(fn, ...)` on the background thread (in submission order), or here when ASYNC is off."""
        if not ASYNC:
            self._call(fn, *a, **kw)
            return
        if self._q is None:
            import queue
            import threading

            self._q = queue.Queue()
            threading.Thread(target=self._drain, name="mlflow-log", daemon=True).start()
        self._q.put((fn, a, kw))

    def _drain(self) -> None:
        while True:
            fn, a, kw = self._q.get()
            try:
                self._call(fn, *a, **kw)
            finally:
                self._q.task_done()

    def flush(self) -> None:
        """Wait until every queued call has been made (or given up on)."""
        if self._q is not None:
            self._q.join()

    close = flush  # the thread is a daemon waiting on an empty queue: nothing else to release

    def metrics(self, values: dict, step: int | None = None) -> None:
        if not (self.enabled and self.run_id):
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, step or 0) for k, v in values.items() if v == v]  # skip NaN
        self._submit(self.c.log_batch, self.run_id, metrics=batch)

    def artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled and self.run_id:
            self._submit(self.c.log_artifact, self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        """The run's end, written before this returns (with everything queued before it)."""
        if self.enabled and self.run_id:
            self._submit(self.c.set_terminated, self.run_id, status)
        self.flush()


# --- A finished cell's end in MLflow: logged by training, or re-synced by the next run when the server missed it -----

FINAL_METRICS = ("test_roc_auc", "test_pr_auc", "best_epoch", "best_valid_roc_auc", "train_time_s", "n_params")
FINAL_FILES = (cell.METRICS, "per_tag_auc.csv", "test_predictions.npz")  # beside metrics.json in the run dir


def log_final(t: Tracker, result: dict, rdir: Path) -> None:
    """A finished cell's result: final metrics, the run dir's result files, best.pt as `model/best.pt`, FINISHED."""
    t.metrics({k: result[k] for k in FINAL_METRICS if k in result})
    for name in FINAL_FILES:
        if (rdir / name).exists():
            t.artifact(rdir / name)
    if cell.ckpt(rdir, cell.BEST).exists():
        t.artifact(cell.ckpt(rdir, cell.BEST), "model")
    t.finish("FINISHED")


def sync_finished(result: dict, rdir: Path, config) -> None:
    """A cell finished on disk (metrics.json) whose MLflow run is not: log what the server missed, then its end.
    A server that is down now changes nothing: metrics.json stays the truth and the next run tries again."""
    uri = resolve_uri(config.tracking_uri, config.out_dir)
    try:
        c = client(uri)
        run = c.get_run(result["run_id"]) if result.get("run_id") else None
    except Exception:  # noqa: BLE001 - the server is down: metrics.json is the truth; nothing to do now
        return
    if run is not None and not cell.run_is_finished(run):
        t = Tracker(uri, config.experiment, config.out_dir)
        t.run_id = run.info.run_id
        _log_history(t, rdir)
        log_final(t, result, rdir)


def _log_history(t: Tracker, rdir: Path) -> None:
    """Per-epoch metrics the server missed (it was down for part of the run), from the last checkpoint's history."""
    from fcn import checkpoint

    state = checkpoint.load(cell.ckpt(rdir, cell.LAST), ("progress",), warn=lambda msg: None)
    if state is not None:
        log_missing_epochs(t, state["progress"].get("history", []))


def log_missing_epochs(t: Tracker, history: list[dict]) -> None:
    """The rows of a checkpoint's epoch history that the run lacks: the server was down for part of the run, or the
    process died (a node crash, SIGKILL) after an epoch's checkpoint but before its queued metrics were written.
    A resumed run calls this before training on, so every finished epoch is in MLflow once."""
    if not (t.enabled and t.run_id and history):
        return
    try:
        logged = {m.step for m in t.c.get_metric_history(t.run_id, "valid_roc_auc")}
    except Exception:  # noqa: BLE001 - nothing known: log all (the server is up, we were just told so)
        logged = set()
    for row in history:
        if row["epoch"] not in logged:
            t.metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])


# --- The SQLite store: set up once under a lock, calls retried while another writer holds it (issue 11) -------------
# MLflow creates or migrates a SQLite store's schema in every process that opens it and finds tables missing; two
# processes doing it at once crash in alembic ("table _alembic_tmp_metrics already exists", "duplicate column name:
# step") and can leave the store half-migrated for every later command. Thirty Slurm jobs of a sweep starting on a
# fresh out dir do exactly that. So the first process sets the store up under a file lock beside mlflow.db and the
# others wait for it; SQLite over a network filesystem with writers on several nodes is another matter (README: use a
# tracking server, `harness.grid --tracking-server`).

STORE_LOCK_WAIT_S = 600.0  # a migration takes seconds; a holder stuck this long is a hung process, say so
LEFTOVER = "_alembic_tmp_"  # alembic's SQLite "batch" copy of a table being migrated
_READY: set[str] = set()  # stores this process has set up (once per process and URI)


def ensure_store(uri: str, wait_s: float = STORE_LOCK_WAIT_S) -> None:
    """Create or migrate the SQLite store at `uri` under `<db>.lock`, once per process; repair a store that jobs
    crashing together (or an older version of this code) left half-migrated, or say in one line what to do."""
    if not uri.startswith("sqlite:///") or uri in _READY:
        return
    db = Path(uri[len("sqlite:///") :])
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the MLflow store's folder {db.parent}: {e}")
    # Import the store's modules (seconds of CPU) before the lock, so that waiting jobs don't import them one by one.
    import mlflow.store.db.utils  # noqa: F401
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    import mlflow.store.tracking.sqlalchemy_workspace_store  # noqa: F401

    with _store_lock(db, wait_s):
        backup = _drop_leftovers(db)  # before MLflow's migration meets them (and half-applies itself again)
        try:
            _open_store(uri)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - a broken schema shows as any of alembic's / SQLAlchemy's errors
            _rebuild_or_explain(uri, db, e, backup)
            _open_store(uri)
    _READY.add(uri)


def _open_store(uri: str) -> None:
    """MLflow's own store set-up (create, migrate, verify, default experiment), cached for this process's clients."""
    from mlflow.tracking._tracking_service import utils

    retry_locked(utils._get_store, uri)


class _store_lock:
    """flock on `<db>.lock`, waited for in bounded polls (flock itself would wait forever, silently)."""

    def __init__(self, db: Path, wait_s: float):
        self.path, self.wait_s, self.f = db.with_name(db.name + ".lock"), wait_s, None

    def __enter__(self):
        import fcntl

        self.f = open(self.path, "a")
        t0, told = time.monotonic(), False
        while True:
            try:
                fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except OSError:
                waited = time.monotonic() - t0
                if waited > self.wait_s:
                    self.f.close()
                    raise UserError(
                        f"another process has held the MLflow store lock {self.path} for "
                        f"{waited:.0f} s while setting the store up: if no job of this sweep is "
                        f"alive, stop the stuck process (fuser -v {self.path}) and rerun"
                    )
                if waited > 30 and not told:
                    print(f"waiting for another process to set up the MLflow store ({self.path})", file=sys.stderr)
                    told = True
                time.sleep(0.1 + 0.2 * min(waited, 5) / 5)

    def __exit__(self, *exc):
        self.f.close()  # closing releases the flock


def _tables(con) -> list[str]:
    return [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]


def _holds_nothing(con, tables: list[str]) -> bool:
    """No run and no experiment but MLflow's Default: a store made by jobs that crashed while creating it."""
    runs = "runs" in tables and con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    exps = (
        "experiments" in tables
        and con.execute("SELECT COUNT(*) FROM experiments WHERE experiment_id != 0").fetchone()[0]
    )
    return not runs and not exps


def _drop_all(con, tables: list[str]) -> None:
    for t in tables:
        if not t.startswith("sqlite_"):
            con.execute(f'DROP TABLE IF EXISTS "{t}"')
    con.commit()


def _drop_leftovers(db: Path) -> Path | None:
    """A migration interrupted in alembic's table copy (LEFTOVER) fails every later one: drop the copies whose table
    is still there (a copy from before goes beside the store, returned), or the whole schema if the store holds
    nothing; a table that exists only as its copy is named in one line."""
    import sqlite3

    if not db.exists() or db.stat().st_size == 0:
        return None
    con = sqlite3.connect(db, timeout=30)
    try:
        tables = _tables(con)
        leftovers = [t for t in tables if t.startswith(LEFTOVER)]
        if not leftovers:
            return None
        if _holds_nothing(con, tables):
            _drop_all(con, tables)  # nothing to lose: MLflow creates the schema from the start
            print(
                f"note: the MLflow store {db} was left half-created (by jobs that crashed setting it up "
                f"together); it held no runs and was created again",
                file=sys.stderr,
            )
            return None
        lost = [t for t in leftovers if t[len(LEFTOVER) :] not in tables]
        if lost:
            raise UserError(
                f"the MLflow store {db} was left half-migrated with table(s) "
                f"{', '.join(t[len(LEFTOVER) :] for t in lost)} only in alembic's copy "
                f"{', '.join(lost)}: restore it from a backup, or move it aside to start a new store"
            )
        backup = db.with_name(db.name + ".before-repair")
        with sqlite3.connect(backup) as b:
            con.backup(b)
        for t in leftovers:
            con.execute(f'DROP TABLE "{t}"')
        con.commit()
        print(
            f"note: the MLflow store {db} was left half-migrated; alembic's leftover copies "
            f"({', '.join(leftovers)}) were dropped and the migration runs again (copy from before: {backup})",
            file=sys.stderr,
        )
        return backup
    finally:
        con.close()


def _rebuild_or_explain(uri: str, db: Path, err: Exception, backup: Path | None) -> None:
    """MLflow failed to open the store: create it again if it holds nothing, else one line of what to do."""
    import sqlite3

    first = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
    try:
        con = sqlite3.connect(db, timeout=30)
        tables = _tables(con)
    except sqlite3.Error as e:
        raise UserError(f"cannot open the MLflow store {db} ({e}; MLflow said: {first})")
    try:
        if _holds_nothing(con, tables):
            _drop_all(con, tables)
            print(
                f"note: the MLflow store {db} was left half-created ({first}); it held no runs and was created again",
                file=sys.stderr,
            )
            return
    finally:
        con.close()
    before = f"a copy from before the repair is {backup}; " if backup else ""
    raise UserError(
        f"cannot open the MLflow store {db}: {first}; {before}if another MLflow version made it, back it "
        f"up and run `mlflow db upgrade {uri}`, else restore a backup or move it aside for a new store"
    )


def _locked(e: BaseException) -> bool:
    """SQLite's "another connection holds the lock", however MLflow or SQLAlchemy wrapped it."""
    text = str(e).lower()
    return "database is locked" in text or "database is busy" in text or "database table is locked" in text


def retry_locked(fn, *args, attempts: int = 8, first_s: float = 0.2, **kwargs):
    """Call fn; while SQLite says another writer holds the store, retry with bounded, jittered backoff (~30 s in
    all). SQLite answers a write that would deadlock with "database is locked" at once, whatever its busy timeout;
    such a transaction was rolled back, so calling again is safe."""
    import random

    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - only the lock is retried; anything else propagates as it was
            if attempt == attempts - 1 or not _locked(e):
                raise
            time.sleep(min(first_s * 2**attempt, 6.0) * (0.5 + random.random()))  # jitter: losers don't collide


class _Retrying:
    """An MlflowClient on a SQLite store whose every call retries while the store is locked (retry_locked)."""

    def __init__(self, c):
        self._c = c

    def __getattr__(self, name):
        value = getattr(self._c, name)
        if not callable(value):
            return value
        return lambda *a, **kw: retry_locked(value, *a, **kw)
