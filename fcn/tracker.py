"""MLflow logging of one cell: the Tracker (rank 0's run, its calls on a background thread) and a finished cell's end
(logged by training, re-synced later when the server missed it).

mlflow is imported inside the methods: heavy (seconds of CPU); by the time they run, `fcn.tracking.client` has
imported it already.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from pathlib import Path

from fcn import cell, checkpoint
from fcn.mlflow_db import check_one_host
from fcn.tracking import artifact_root, cell_runs, client, experiment_id, redact, resolve_uri

# [D] MLflow calls of a run go to a background thread (Tracker); False makes every call synchronous (debugging).
ASYNC = True


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
        self.lost = 0  # calls not written: the failed one and every one skipped after it (said at close())
        self.key = ""
        if enabled:
            check_one_host(uri)  # a SQLite store written from several nodes: refused here, before any training
            self.c = client(uri)
            self.exp_id = experiment_id(self.c, experiment, artifact_root(uri, out_dir))

    def start(self, key: str, params: dict, tags: dict, run_id: str | None = None) -> str | None:
        """Continue `run_id` (from a checkpoint), else the cell's existing unfinished run, else a new one."""
        if not self.enabled:
            return None
        self.key = key
        if run_id is None:
            # its unfinished run, else its finished one (a cell retrained from scratch after losing metrics.json and
            # its checkpoints): a cell never gets a second run
            runs = cell_runs(self.c, self.exp_id, key)
            existing = [r for r in runs if not cell.run_is_finished(r)] or runs
            run_id = existing[-1].info.run_id if existing else None
        if run_id is None:
            run = self.c.create_run(self.exp_id, run_name=key, tags={cell.CELL_TAG: key, **tags})
            run_id = run.info.run_id
            self._submit(self._log_params, run_id, params)
        else:
            self._submit(self.c.update_run, run_id, status="RUNNING")
            # a first attempt that died between creating the run and writing its params (queued calls die with
            # the process) left the run without them: write the ones it lacks (MLflow refuses a param rewritten
            # with another value, and the resume=True fields may differ on a requeue; those keep their first value)
            self._submit(self._log_params, run_id, params, missing_only=True)
        self.run_id = run_id
        return run_id

    def _log_params(self, run_id: str, params: dict, missing_only: bool = False) -> None:
        from mlflow.entities import Param  # heavy: see the module's docstring

        have = self.c.get_run(run_id).data.params if missing_only else {}
        todo = [Param(k, str(v)) for k, v in params.items() if k not in have]
        for i in range(0, len(todo), 100):  # MLflow takes at most 100 params per batch
            self.c.log_batch(run_id, params=todo[i : i + 100])

    def _call(self, fn, *a, **kw):
        if self._down:
            self.lost += 1
            return None
        for attempt in range(3):  # SQLite stores shared by parallel cells can be briefly locked
            try:
                return fn(*a, **kw)
            except Exception as e:  # noqa: BLE001 - any tracking failure is survivable
                if attempt == 2:
                    self.lost += 1
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

    def close(self) -> None:
        """Everything queued written (the thread is a daemon waiting on an empty queue: nothing else to release),
        and, when MLflow gave up, one line saying how many records it lacks and how they get there."""
        self.flush()
        if self.lost:
            print(
                f"warning: {self.lost} MLflow record(s) of {self.key or 'this run'} could not be written to "
                f"{redact(self.uri)}; they are kept in the run dir (checkpoints, metrics.json): rerun the same "
                f"command when the server is back to sync them",
                file=sys.stderr,
                flush=True,
            )
            self.lost = 0

    def metrics(self, values: dict, step: int | None = None) -> None:
        if not (self.enabled and self.run_id):
            return
        from mlflow.entities import Metric  # heavy: see the module's docstring

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
    state = checkpoint.load(cell.ckpt(rdir, cell.LAST), ("progress",), warn=lambda msg: None)
    if state is not None:
        log_missing_epochs(t, state["progress"].get("history", []))


def log_missing_epochs(t: Tracker, history: list[dict]) -> None:
    """The rows of a checkpoint's epoch history that the run lacks: the server was down for part of the run, or the
    process died (a node crash, SIGKILL) after an epoch's checkpoint but before its queued metrics were written.
    A resumed run calls this before training on, so every finished epoch is in MLflow once."""
    if not (t.enabled and t.run_id and history):
        return
    # An epoch counts as logged when any of its values is: NaN values are never written (Tracker.metrics skips
    # them), so an epoch whose validation ROC-AUC was NaN (a tag with no positive clip) has no valid_roc_auc step,
    # and asking that one metric alone logged its other values again on every resume.
    keys = {k for row in history for k in row if k != "epoch"}
    logged = set()
    try:
        for k in sorted(keys):
            logged |= {m.step for m in t.c.get_metric_history(t.run_id, k)}
    except Exception:  # noqa: BLE001 - nothing known: log all (the server is up, we were just told so)
        logged = set()
    for row in history:
        if row["epoch"] not in logged:
            t.metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
