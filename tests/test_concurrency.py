"""Many processes on one fresh SQLite MLflow store at once, and stores that such a start left half-made (issue 11).

Before the store was set up under a lock, 8 processes opening a fresh store together crashed in MLflow's schema
set-up ("table experiments already exists", "duplicate column name: step"): 7 of 8 here.
"""

import multiprocessing as mp
import sqlite3

import pytest

N_PROCS = 8


def _cell(uri: str, out_dir: str, key: str, go, results) -> None:
    """What a cell job does with MLflow: open the store, get-or-create the experiment, one run, a metric, the end."""
    try:
        from fcn import tracker

        go.wait(120)
        t = tracker.Tracker(uri, "sweep", out_dir)
        run_id = t.start(key, {"key": key}, {})
        t.metrics({"valid_loss": 0.5}, step=1)
        t.finish()
        results.put((key, "ok", run_id))
    except BaseException as e:  # noqa: BLE001 - the parent reports every child's error
        results.put((key, "error", f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"))


def test_processes_starting_together_share_a_fresh_store(tmp_path):
    from fcn import mlflow_db, tracking

    tracking.client  # noqa: B018 - imported here; the children are forked with mlflow already imported (seconds each)
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ctx = mp.get_context("fork")
    go, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_cell, args=(uri, str(tmp_path), f"cell{i}", go, results)) for i in range(N_PROCS)]
    for p in procs:
        p.start()
    go.set()  # all at once, on a store that does not exist yet
    got = sorted(results.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(60)
    assert [r for r in got if r[1] != "ok"] == [], got

    c = tracking.client(uri)
    exp = c.get_experiment_by_name("sweep")
    runs = c.search_runs([exp.experiment_id], max_results=100)
    assert sorted(r.data.tags[tracking.CELL_TAG] for r in runs) == [f"cell{i}" for i in range(N_PROCS)]  # no dups
    assert all(r.info.status == "FINISHED" and r.data.metrics["valid_loss"] == 0.5 for r in runs)
    con = sqlite3.connect(tmp_path / "mlflow.db")
    assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert not [t for t in mlflow_db._tables(con) if t.startswith(mlflow_db.LEFTOVER)]
    assert (tmp_path / "mlflow.db.lock").exists()


def _half_migrated(db, with_run: bool, lose_metrics: bool = False) -> None:
    """A store as an interrupted first migration leaves it: MLflow's initial tables, alembic's copy of `metrics`
    from the step that adds metrics.step, no schema version; with or without a run in it."""
    import sqlalchemy
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    engine = sqlalchemy.create_engine(f"sqlite:///{db}")
    InitialBase.metadata.create_all(engine)
    engine.dispose()
    con = sqlite3.connect(db)
    if with_run:
        con.execute("INSERT INTO experiments VALUES (1, 'old', '/tmp/old', 'active')")
        con.execute(
            "INSERT INTO runs (run_uuid, name, source_type, user_id, status, start_time, end_time, "
            "lifecycle_stage, artifact_uri, experiment_id) VALUES (lower(hex(randomblob(16))), 'kept', "
            "'LOCAL', 'u', 'FINISHED', 1, 2, 'active', '/tmp/old/a', 1)"
        )
        con.execute("INSERT INTO metrics SELECT 'test_roc_auc', 0.9, 1, run_uuid FROM runs")
    con.execute("CREATE TABLE _alembic_tmp_metrics AS SELECT * FROM metrics")
    if lose_metrics:
        con.execute("DROP TABLE metrics")
    con.commit()
    con.close()


def test_half_made_stores_are_repaired_or_named(tmp_path, capsys):
    from mlflow import MlflowClient

    from fcn import tracking
    from fcn.errors import UserError

    # 1. left half-created and empty (jobs that crashed setting it up together): MLflow alone can't open it
    empty = tmp_path / "empty" / "mlflow.db"
    empty.parent.mkdir()
    _half_migrated(empty, with_run=False)
    with pytest.raises(Exception, match="_alembic_tmp_metrics already exists"):
        MlflowClient(tracking_uri=f"sqlite:///{empty}")
    c = tracking.client(f"sqlite:///{empty}")
    assert c.create_experiment("fresh")
    assert "held no runs and was created again" in capsys.readouterr().err

    # 2. half-migrated with a run in it: the leftover copy goes, the migration runs again, the run is kept
    kept = tmp_path / "kept" / "mlflow.db"
    kept.parent.mkdir()
    _half_migrated(kept, with_run=True)
    c = tracking.client(f"sqlite:///{kept}")
    runs = c.search_runs([c.get_experiment_by_name("old").experiment_id])
    assert [(r.info.run_name, r.data.metrics["test_roc_auc"]) for r in runs] == [("kept", 0.9)]
    assert "the migration runs again" in capsys.readouterr().err
    assert (kept.parent / "mlflow.db.before-repair").exists()
    assert sqlite3.connect(kept).execute("PRAGMA integrity_check").fetchall() == [("ok",)]

    # 3. a table that exists only in alembic's copy: nothing safe to do, say so in one line
    lost = tmp_path / "lost" / "mlflow.db"
    lost.parent.mkdir()
    _half_migrated(lost, with_run=True, lose_metrics=True)
    with pytest.raises(UserError, match=r"metrics only in alembic's copy _alembic_tmp_metrics") as e:
        tracking.client(f"sqlite:///{lost}")
    assert "\n" not in str(e.value)

    # 4. with a run, and MLflow's own retry already half-applied the step (metrics.step added): named in one line
    twice = tmp_path / "twice" / "mlflow.db"
    twice.parent.mkdir()
    _half_migrated(twice, with_run=True)
    with pytest.raises(Exception, match="_alembic_tmp_metrics already exists"):
        MlflowClient(tracking_uri=f"sqlite:///{twice}")
    with pytest.raises(
        UserError,
        match=r"duplicate column name: step; a copy from before the repair is .*"
        r"mlflow db upgrade",
    ) as e:
        tracking.client(f"sqlite:///{twice}")
    assert "\n" not in str(e.value)


def test_tracking_server_flags_are_checked_in_one_line():
    from fcn.errors import UserError
    from harness import grid, tracking_server

    with pytest.raises(UserError, match="give only one"):
        grid.main(["--tracking-server", "--tracking-uri", "http://127.0.0.1:9"])
    with pytest.raises(UserError, match="drop --no-wait"):
        grid.main(["--cluster", "slurm", "--no-wait", "--tracking-server"])
    assert tracking_server.parse_address("") == ("", 0)
    assert tracking_server.parse_address("10.0.0.5:5000") == ("10.0.0.5", 5000)
    assert tracking_server.parse_address(":5001") == ("", 5001)
    assert tracking_server.parse_address("[::1]:5002") == ("::1", 5002)
    with pytest.raises(UserError, match="HOST:PORT"):
        tracking_server.parse_address("a:b:c")
    assert tracking_server.choose_host("", "local") == "127.0.0.1"  # this machine's own cells: loopback
    assert tracking_server.choose_host("10.0.0.5", "slurm") == "10.0.0.5"


def test_a_full_server_pool_or_a_locked_store_is_retried_and_nothing_else_is():
    """What a tracking server answers when 30 job starts exhaust its connection pool (seen in the two-node burst) is
    retried like SQLite's lock: the request never got a connection, so it changed nothing; other errors are not."""
    from fcn.mlflow_db import retry_locked

    pool = "BAD_REQUEST: QueuePool limit of size 5 overflow 10 reached, connection timed out, timeout 30.00"
    for transient in (pool, "(sqlite3.OperationalError) database is locked"):
        calls = []

        def flaky(msg=transient, calls=calls):
            calls.append(1)
            if len(calls) < 3:
                raise RuntimeError(msg)
            return "done"

        assert retry_locked(flaky, first_s=0.001) == "done" and len(calls) == 3
    calls = []

    def broken():
        calls.append(1)
        raise RuntimeError("RESOURCE_DOES_NOT_EXIST: run not found")

    with pytest.raises(RuntimeError, match="RESOURCE_DOES_NOT_EXIST"):
        retry_locked(broken, first_s=0.001)
    assert len(calls) == 1
