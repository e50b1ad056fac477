"""A supervised pool of worker processes for preprocessing's shard jobs, where one bad file cannot stop a build.

Not multiprocessing.Pool: a worker killed by a crashing decoder makes Pool wait forever for the lost task, and Pool
cannot stop a worker that hangs. Here each worker reports the clip it is decoding, so the parent knows which file
killed or stalled it: that file is skipped, the worker replaced and the shard redone without it.
Spawn, not fork: torch's OpenMP pool does not survive fork.

A job is `(items, params, inputs, dest, decoder)` with `items` a tuple of (clip_id, path); the task that runs it (e.g.
fcn.preprocess._process_shard) is called as `task((*job, preskip), send)` in the worker, `send(kind, ...)` being its
line to the parent: ("clip", j) before decoding item j, ("compute",) after the last decode.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import sys
import time
import traceback
from collections import deque
from multiprocessing.connection import wait

import torch

from fcn.errors import UserError
from fcn.malloc import keep_freed_memory


def _worker_main(conn, task) -> None:
    """A worker process: shard jobs in, progress messages out, until told to stop or the parent is gone."""
    torch.set_num_threads(1)  # one process per core; threads inside would only fight each other
    keep_freed_memory()  # a 32-clip batch's STFTs would otherwise be fresh mmap()s, page-faulted in on every shard
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent stops us cleanly
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return  # the parent was killed: stop instead of lingering as an orphan
        if job is None:
            return
        try:
            task(job, lambda *m: conn.send(m))
            conn.send(("done",))
        except (BrokenPipeError, ConnectionResetError, EOFError):
            return  # the parent is gone (a rerun will redo this shard)
        except OSError as e:  # disk full, permissions: the user's to fix, not a bug
            _send_quietly(conn, ("oserror", f"{type(e).__name__}: {e}"))
        except BaseException:
            _send_quietly(conn, ("error", traceback.format_exc()))


def _send_quietly(conn, msg) -> None:
    try:
        conn.send(msg)
    except OSError:
        pass


class _Worker:
    def __init__(self, ctx, task):
        self.conn, child = ctx.Pipe()
        # daemon: a parent that exits (or is interrupted) takes its workers along
        self.proc = ctx.Process(target=_worker_main, args=(child, task), daemon=True, name="fcn-preprocess")
        self.proc.start()
        child.close()  # only the worker holds its end: when the parent dies, the worker's recv() sees EOF
        self.shard: int | None = None  # shard being processed
        self.clip: int | None = None  # clip (index in the shard) being decoded; None before or after decoding
        self.since = 0.0  # when that clip's decoding started

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        else:
            _send_quietly(self.conn, None)
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


def signal_name(exitcode) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            pass
    return f"exit status {exitcode}"


class _Pool:
    """The supervisor's state: jobs still to run, files found to crash or hang the decoder, deaths per shard."""

    def __init__(self, jobs: dict, n_workers: int, decode_timeout: float, on_done, task):
        self.ctx, self.task = mp.get_context("spawn"), task
        self.jobs, self.decode_timeout, self.on_done = jobs, decode_timeout, on_done
        self.pending = deque(sorted(jobs))
        self.preskip: dict[int, dict[int, str]] = {i: {} for i in jobs}
        self.deaths: dict[int, int] = {i: 0 for i in jobs}
        self.workers = [_Worker(self.ctx, task) for _ in range(min(n_workers, len(self.pending)))]

    def run(self) -> None:
        try:
            while True:
                for w in self.workers:
                    if w.shard is None and self.pending:
                        w.shard, w.clip = self.pending.popleft(), None
                        w.conn.send((*self.jobs[w.shard], self.preskip[w.shard]))
                busy = [w for w in self.workers if w.shard is not None]
                if not busy:
                    return
                wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=0.5)
                for k, w in enumerate(self.workers):
                    if w.shard is not None:
                        self._supervise(k, w)
        finally:
            for w in self.workers:
                w.stop(kill=w.shard is not None)

    def _supervise(self, k: int, w: _Worker) -> None:
        i, gone = w.shard, False
        try:
            while w.conn.poll():  # drain first: the last message before a death names the culprit
                kind, *rest = w.conn.recv()
                if kind == "clip":
                    w.clip, w.since = rest[0], time.monotonic()
                elif kind == "compute":
                    w.clip = None
                elif kind == "done":
                    w.shard = w.clip = None
                    self.on_done(i)
                    break
                elif kind == "oserror":
                    raise UserError(f"preprocessing failed writing {self.jobs[i][3]}: {rest[0]}")
                else:
                    raise RuntimeError(f"a preprocessing worker failed on shard {i}:\n{rest[0]}")
        except (EOFError, OSError):
            gone = True
        if w.shard is None:
            return
        if gone or not w.proc.is_alive():
            self._died(k, w)
        elif w.clip is not None and time.monotonic() - w.since > self.decode_timeout:
            path = self.jobs[i][0][w.clip][1]
            self.preskip[i][w.clip] = (
                f"decoding took over {self.decode_timeout:g} s: the decoder hangs on this file (worker stopped)"
            )
            print(f"warning: the decoder hangs on {path}: skipping it", file=sys.stderr)
            self._replace(k, w)

    def _died(self, k: int, w: _Worker) -> None:
        i = w.shard
        w.proc.join(timeout=5)
        why = signal_name(w.proc.exitcode)
        if w.clip is not None:
            path = self.jobs[i][0][w.clip][1]
            self.preskip[i][w.clip] = f"the decoder crashed on this file (worker died: {why})"
            print(f"warning: the decoder crashed ({why}) on {path}: skipping it", file=sys.stderr)
        else:
            self.deaths[i] += 1
            if self.deaths[i] > 1:
                raise UserError(
                    f"a preprocessing worker died twice ({why}) computing the features of shard {i}, "
                    "after decoding: out of memory? rerun with fewer --workers"
                )
        self._replace(k, w)

    def _replace(self, k: int, w: _Worker) -> None:
        """Stop worker k and start a fresh one; its shard goes back to the front of the queue."""
        i = w.shard
        w.stop(kill=True)
        self.workers[k] = _Worker(self.ctx, self.task)
        self.pending.appendleft(i)


def run_shards(jobs: dict, n_workers: int, decode_timeout: float, on_done, task) -> None:
    """Run shard jobs {index: (items, params, inputs, dest, decoder)} through `task` in `n_workers` spawned worker
    processes; `on_done(index)` after each. A file whose decoding crashes or hangs a worker is skipped (the shard is
    redone with it marked in `preskip`); a worker dying twice on one shard outside decoding is an error (out of
    memory?)."""
    _Pool(jobs, n_workers, decode_timeout, on_done, task).run()
