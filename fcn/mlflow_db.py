"""The MLflow SQLite store (`<out_dir>/mlflow.db`): set up once under a lock, repaired when a crash left it half-made,
and every call retried while another writer holds it (issue 11).

MLflow creates or migrates a SQLite store's schema in every process that opens it and finds tables missing; two
processes doing it at once crash in alembic ("table _alembic_tmp_metrics already exists", "duplicate column name:
step") and can leave the store half-migrated for every later command. Thirty Slurm jobs of a sweep starting on a
fresh out dir do exactly that. So the first process sets the store up under a file lock beside mlflow.db and the
others wait for it; SQLite over a network filesystem with writers on several nodes is another matter (README: use a
tracking server, `harness.grid --tracking-server`).

mlflow is imported inside `prepare_db`: heavy (seconds of CPU), and only a SQLite store needs it here.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sqlite3
import sys
import time
from pathlib import Path

from fcn import locks
from fcn.cell import sqlite_db
from fcn.errors import UserError

STORE_LOCK_WAIT_S = 600.0  # a migration takes seconds; a holder stuck this long is a hung process, say so
LEFTOVER = "_alembic_tmp_"  # alembic's SQLite "batch" copy of a table being migrated
_READY: set[str] = set()  # stores this process has set up (once per process and URI)


def prepare_db(uri: str, wait_s: float = STORE_LOCK_WAIT_S) -> None:
    """Create or migrate the SQLite store at `uri` under `<db>.lock`, once per process; repair a store that jobs
    crashing together (or an older version of this code) left half-migrated, or say in one line what to do. Any
    other URI (a server) is left alone."""
    db = sqlite_db(uri)
    if db is None or uri in _READY:
        return
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the MLflow store's folder {db.parent}: {e}") from e
    # Import the store's modules (seconds of CPU) before the lock, so that waiting jobs don't import them one by one.
    import mlflow.store.db.utils  # noqa: F401 - heavy: see the module's docstring
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


WRITERS = ".writers"  # beside mlflow.db: one JSON line per (host, Slurm job) that logged runs into the store


def check_one_host(uri: str) -> None:
    """Refuse, in one line, a SQLite store that jobs on more than one host write: two hosts that see one file share
    its filesystem, and SQLite's locks over NFS / Lustre / GPFS do not hold, so runs go missing or the store is
    corrupted, silently. Each writing process (a cell's rank 0) records its host, Slurm job id and restart count in
    `<db>.writers`; another host is refused unless it is a later start of the same Slurm job (a requeue onto another
    node, whose earlier copy the cell lock keeps out). Ray trials of one slurm/ray_cluster.sh job on several nodes
    share a job id and a restart count (none): they are refused too. The way out is a tracking server
    (harness.grid --tracking-server, README "Tracking on a cluster"). Any other URI (a server) is left alone."""
    db = sqlite_db(uri)
    if db is None:
        return
    env = os.environ
    me = {
        "host": socket.gethostname(),
        "job": env.get("SLURM_JOB_ID", ""),
        "restart": env.get("SLURM_RESTART_COUNT", ""),
    }
    path = db.with_name(db.name + WRITERS)
    try:
        if not path.exists() or json.dumps(me) not in path.read_text().splitlines():
            # recorded before looking, so that two hosts starting together both see each other (and both stop),
            # never both miss the other; one short O_APPEND write keeps lines whole even from concurrent jobs
            with open(path, "a") as f:
                f.write(json.dumps(me) + "\n")
        seen = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip().startswith("{")]
    except OSError:
        return  # unwritable: the store's own errors will say what is wrong with the folder

    def requeued(w: dict) -> bool:  # an earlier start of this same job, elsewhere
        return bool(me["job"]) and w.get("job") == me["job"] and w.get("restart", "") != me["restart"]

    others = sorted({w["host"] for w in seen if w.get("host") != me["host"] and not requeued(w)})
    if others:
        raise UserError(
            f"the MLflow SQLite store {db} is written by jobs on several hosts ({', '.join([*others, me['host']])}): "
            f"SQLite over a shared filesystem loses or corrupts runs; use a tracking server (python -m harness.grid "
            f"--tracking-server, or MLFLOW_TRACKING_URI=http://... for sbatch scripts) or delete {path} if those "
            f"jobs have ended"
        )


def _open_store(uri: str) -> None:
    """MLflow's own store set-up (create, migrate, verify, default experiment), cached for this process's clients."""
    from mlflow.tracking._tracking_service import utils  # heavy: see the module's docstring

    retry_locked(utils._get_store, uri)


class _store_lock:
    """flock on `<db>.lock`, waited for in bounded polls (flock itself would wait forever, silently)."""

    def __init__(self, db: Path, wait_s: float):
        self.path, self.wait_s, self.f = db.with_name(db.name + ".lock"), wait_s, None

    def __enter__(self):
        self.f = open(locks.lock_path(self.path), "a")
        t0, told = time.monotonic(), False
        while True:
            try:
                taken = locks.try_lock(self.f, self.path)  # no cross-node flock: one line now, not after the wait
            except BaseException:
                self.f.close()
                raise
            if taken:
                return self
            waited = time.monotonic() - t0
            if waited > self.wait_s:
                self.f.close()
                raise UserError(
                    f"another process has held the MLflow store lock {self.path} for "
                    f"{waited:.0f} s while setting the store up: if no job of this sweep is "
                    f"alive, stop the stuck process (fuser -v {self.path}) and rerun"
                ) from None
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
    first = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
    try:
        con = sqlite3.connect(db, timeout=30)
        tables = _tables(con)
    except sqlite3.Error as e:
        raise UserError(f"cannot open the MLflow store {db} ({e}; MLflow said: {first})") from e
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
    """SQLite's "another connection holds the lock", however MLflow or SQLAlchemy wrapped it; or, from a tracking
    server, its connection pool's "QueuePool limit ... reached, connection timed out": a request that never got a
    connection changed nothing, so it too is safe to send again (30 cell jobs starting at once against one server,
    tests/test_concurrency_cluster.py, met it while the server was starved of CPU)."""
    text = str(e).lower()
    return (
        "database is locked" in text
        or "database is busy" in text
        or "database table is locked" in text
        or "queuepool limit" in text
    )


def retry_locked(fn, *args, attempts: int = 8, first_s: float = 0.2, **kwargs):
    """Call fn; while SQLite says another writer holds the store, retry with bounded, jittered backoff (~30 s in
    all). SQLite answers a write that would deadlock with "database is locked" at once, whatever its busy timeout;
    such a transaction was rolled back, so calling again is safe."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - only the lock is retried; anything else propagates as it was
            if attempt == attempts - 1 or not _locked(e):
                raise
            time.sleep(min(first_s * 2**attempt, 6.0) * (0.5 + random.random()))  # jitter: losers don't collide


class RetryingClient:
    """An MlflowClient whose every call retries while the store is locked or the server's pool is full
    (retry_locked)."""

    def __init__(self, c):
        self._c = c

    def __getattr__(self, name):
        value = getattr(self._c, name)
        if not callable(value):
            return value
        return lambda *a, **kw: retry_locked(value, *a, **kw)
