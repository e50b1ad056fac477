"""7. Memory per node against ranks per node: a split mapped from the store (fcn.store.FeatureDataset.map_store, what
fcn.train does within the node's budget) against a private copy in every rank (what it did before, and still does
for a store that cannot be mapped).

Each rank is a process that opens the training split of one store, holds it (mapped or copied), reads every clip
once, then waits at a barrier, so all ranks hold their data at once; each then reports its proportional set size
(Pss, /proc/self/smaps_rollup: a page shared by k processes counts 1/k in each) before and after. Σ ΔPss over the
ranks is what the node spends on the data: it grows with the ranks for copies, and stays one copy when mapped.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import Row, Section
from fcn.frontends import FrontEndParams
from fcn.store import FeatureDataset, StoreWriter

MB = 1 << 20
RANKS = (1, 2, 4)


def make_store(
    path: Path, n: int, seconds: float = 29.12, train: float = 0.8, valid: float = 0.1, seed: int = 0
) -> Path:
    """A store of `n` clips of random mel features (96 × frames of `seconds`, float16) in fcn's layout: a fake for
    memory tests, written in seconds where a real build decodes audio. Only mel; 50 random tags per clip; the first
    `train` of the clips are the training split, the next `valid` the validation split, the rest the test split."""
    params = FrontEndParams.for_seconds(seconds)
    rng = np.random.default_rng(seed)
    w = StoreWriter(path, n, params, ["mel"])
    for i in range(0, n, 64):
        m = min(64, n - i)
        w.append({"mel": rng.standard_normal((m, 96, params.n_frames)).astype(np.float16)})
    n_train, n_valid = int(n * train), int(n * valid)
    splits = ["train"] * n_train + ["valid"] * n_valid + ["test"] * (n - n_train - n_valid)
    return w.finish(
        dataset="mtat",
        tags=[f"tag{k:02d}" for k in range(50)],
        clip_ids=[f"{k:07d}" for k in range(n)],
        paths=[f"/fake/{k}.mp3" for k in range(n)],
        splits=splits,
        labels=(rng.random((n, 50)) < 0.1).astype(np.uint8),
    )


def pss() -> int:
    """This process's proportional set size in bytes (Linux)."""
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no Pss in /proc/self/smaps_rollup")


def _rank(path: str, mode: str, barrier, out) -> None:
    ds = FeatureDataset(path, "mel", "train")
    before = pss()
    held = ds.map_store(1 << 62) if mode == "mapped" else ds.hold_in_memory(1 << 62)
    assert held, mode
    for i in range(0, len(ds), 32):  # every clip once, as an epoch does
        ds.read_batch(np.arange(i, min(i + 32, len(ds))))
    barrier.wait()  # every rank holds its data now
    out.put((pss() - before, ds.nbytes()))
    barrier.wait()


def node_memory(path: Path, mode: str, ranks: int) -> tuple[int, int]:
    """(Σ ΔPss over `ranks` processes holding the split as `mode`, the split's bytes)."""
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(ranks), ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(str(path), mode, barrier, out)) for _ in range(ranks)]
    for p in procs:
        p.start()
    got = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
    if any(p.exitcode for p in procs):
        raise RuntimeError(f"a rank failed: exit codes {[p.exitcode for p in procs]}")
    return sum(g[0] for g in got), got[0][1]


def measure(n: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        path = make_store(Path(tmp) / "fake.h5", n)
        res = {}
        for mode in ("mapped", "copied"):
            for r in RANKS:
                res[f"{mode}-{r}"], data = node_memory(path, mode, r)
        res["data"] = data
    return res


def run(quick: bool = False) -> Section:
    sec = Section("memory", "7. Memory per node against ranks per node: the store mapped once vs a copy per rank")
    t0 = time.time()
    n = 200 if quick else 1000
    r = measure(n)
    data = r["data"]
    for k in RANKS:
        mapped, copied = r[f"mapped-{k}"], r[f"copied-{k}"]
        sec.rows.append(
            Row(
                f"{k} rank(s) per node: training split held mapped (Σ ΔPss)",
                f"{mapped / MB:,.0f} MB",
                f"a private copy per rank: {copied / MB:,.0f} MB",
                f"{copied / max(1, mapped):.1f}×",
                "≈ 1 copy",
                mapped <= 1.25 * data,
                f"split {data / MB:,.0f} MB ({int(n * 0.8)} clips × 96 × 1366 float16)",
            )
        )
    sec.details = (
        "Each rank is a process (fork) that holds the training split of one store, reads every clip once and waits at "
        "a barrier; Σ ΔPss is the node's memory for the data (Pss splits a shared page among the processes that map "
        "it). Mapped pages are the store file's, in the page cache: the kernel reclaims them under a memory limit "
        "where a private copy would be OOM-killed."
    )
    sec.seconds = time.time() - t0
    return sec


if __name__ == "__main__" and "--measure" in sys.argv:
    print(json.dumps(measure(int(sys.argv[-1]))))
