"""Loading: how fast the training DataLoader reads paper-scale mel features (1×96×1366) from a warm page cache.

Compared, at 0 and 2 worker processes: our HDF5 store (float16, contiguous) as fcn.train reads it (fcn.store.Batches:
one fetch per batch, standardised by the consumer: on the GPU under CUDA, here on the CPU, and "delivery only"
without it), both ways it can: the split held in RAM (read once in large blocks, each batch gathered by numpy
indexing; fcn.train's path when the split fits fcn.store.memory_budget) and per-row reads from the file (its rows
read in file order into one float16 array; the fallback); the per-clip float32 items it read before (one h5py read,
conversion and standardisation per clip, then collation), and their first numpy version; and the peers' layout, one
float32 .npy file per clip read with np.load.

Target: 3 × what one H100 consumes when it trains FCN-4 at 45 % of its dense bf16 peak, computed below.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from bench.common import Row, Section, allocator_env, apply_allocator, fmt_rate, median, run_worker, worker_main
from fcn.data import MTAT_TOP50
from fcn.frontends import FrontEndParams
from fcn.models import FCN, forward_macs
from fcn.store import BLOCK_BYTES, Batches, FeatureDataset, write_store

H100_BF16_DENSE = 989.4e12  # FLOP/s, H100 SXM5 datasheet (dense, without sparsity)
GPU_MFU = 0.45
HEADROOM = 3.0
BRIEF_FIGURE = 2_600  # clips/s, the figure this target was first quoted with
BATCH = 16
BLOCK_MB = 64  # fcn.store.BLOCK_BYTES, for the details text (checked in run())


def consumption() -> tuple[float, float]:
    """(clips/s one H100 consumes training FCN-4 at 45 % MFU, forward FLOPs per clip)."""
    fwd = 2.0 * forward_macs(FCN(4), 96, 1366)
    return GPU_MFU * H100_BF16_DENSE / (3 * fwd), fwd


# ---------------------------------------------------------------- data sets on disk


def make_data(folder: Path, n: int) -> tuple[Path, Path]:
    """A store of n random mel features in fcn's layout (via fcn.store.write_store) and the same clips as peers'
    per-clip float32 .npy files."""
    rng = np.random.default_rng(0)
    npy = folder / "npy"
    npy.mkdir(parents=True, exist_ok=True)

    def chunks():
        for i in range(0, n, 64):
            x = rng.standard_normal((min(64, n - i), 96, 1366), dtype=np.float32) * 10 - 30
            for j, clip in enumerate(x):
                np.save(npy / f"{i + j:06d}.npy", clip)
            yield {"mel": x.astype(np.float16)}

    store = write_store(
        folder / "store.h5",
        dataset="mtat",
        tags=list(MTAT_TOP50),
        params=FrontEndParams(),
        inputs=["mel"],
        clip_ids=[f"{i:06d}" for i in range(n)],
        paths=[""] * n,
        splits=["train"] * n,
        labels=(rng.random((n, 50)) < 0.1).astype(np.uint8),
        feature_chunks=chunks(),
    )
    return store, npy


def warm(paths) -> None:
    """Read every byte once so the timed reads hit the page cache (the 'warm' case the target is about)."""
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 23):
                pass


# ---------------------------------------------------------------- the readers compared


def _feature_dataset():
    return FeatureDataset


class NumpyConvert:
    """Mixin: FeatureDataset.__getitem__ as it was before bench/loading.py's finding, converting float16 → float32
    with numpy (not vectorised) instead of torch; kept to show the difference."""

    def __getitem__(self, i):
        x = self._file()[self.index[i]].astype(np.float32)
        x = (x - self.mean) / self.std
        return torch.from_numpy(x).unsqueeze(0), torch.from_numpy(self.labels[i]), i


class NpyDataset(torch.utils.data.Dataset):
    """The peers' layout: one float32 .npy per clip, np.load per item (no standardisation: conservative)."""

    def __init__(self, folder: Path, n: int):
        self.paths = [str(folder / f"{i:06d}.npy") for i in range(n)]
        self.labels = np.zeros((n, 50), np.float32)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return torch.from_numpy(np.load(self.paths[i])).unsqueeze(0), torch.from_numpy(self.labels[i]), i


TODAY = "fcn.train's loader, split in RAM: whole float16 batches gathered by numpy indexing, standardised after"
DELIVERY = "fcn.train's loader, split in RAM, delivery only (standardised on the GPU, as fcn.train does on CUDA)"
ROWS = "fcn.train's loader, split not in RAM: per-row HDF5 reads into whole float16 batches, standardised after"
ROWS_DELIVERY = "fcn.train's loader, split not in RAM, delivery only"
DELIVERIES = {DELIVERY: TODAY, ROWS_DELIVERY: ROWS}  # delivery-only row → the reader it times
PER_CLIP = "per-clip float32 items (FeatureDataset.__getitem__; fcn.train's loader before)"
BEFORE = "per-clip, numpy float16 → float32 (the first version)"
PEERS = "peers: one float32 .npy per clip"


def readers(store: Path, npy: Path, n: int) -> dict[str, torch.utils.data.Dataset]:
    FD = _feature_dataset()
    held = FD(store, "mel", "train")
    if not held.hold_in_memory(1 << 62):
        raise RuntimeError("the split was not held in memory")
    out = {
        TODAY: Batches(held),
        ROWS: Batches(FD(store, "mel", "train")),
        PER_CLIP: FD(store, "mel", "train"),
        BEFORE: type("NumpyFD", (NumpyConvert, FD), {})(store, "mel", "train"),
        PEERS: NpyDataset(npy, n),
    }
    return out


def consume(ds, x: torch.Tensor, convert: bool = True) -> torch.Tensor:
    """What the training loop gets: float32 standardised features. float16 batches are converted here when
    `convert` (fcn.train does the same on CPU); without it the batch is what a GPU run copies to the device and
    standardises there."""
    if convert and x.dtype == torch.float16:
        return getattr(ds, "ds", ds).standardise(x)
    return x


def loader(ds, workers: int, g: torch.Generator):
    """A shuffled DataLoader of batch BATCH as fcn.train builds it: whole-batch fetches for fcn.store.Batches."""
    ctx = "fork" if workers else None
    if isinstance(ds, Batches):
        return DataLoader(
            ds,
            batch_size=None,
            sampler=BatchSampler(RandomSampler(ds, generator=g), BATCH, True),
            num_workers=workers,
            multiprocessing_context=ctx,
        )
    return DataLoader(
        ds,
        batch_size=BATCH,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        generator=g,
        multiprocessing_context=ctx,
    )


def clips_per_s(ds, workers: int, epochs: int, convert: bool = True) -> float:
    """Steady-state clips/s of a shuffled DataLoader epoch (the first batch, which pays worker start-up, is not
    timed); the median over `epochs` epochs after one untimed epoch (a keep-memory heap grows during its first)."""
    rates = []
    for e in range(epochs + 1):
        dl = loader(ds, workers, torch.Generator().manual_seed(e))
        it = iter(dl)
        consume(ds, next(it)[0], convert)
        t0, n = time.perf_counter(), 0
        for x, _, _ in it:
            consume(ds, x, convert)
            n += len(x)
        if e:
            rates.append(n / (time.perf_counter() - t0))
        del it, dl
    return median(rates)


def raw_h5_rate(store: Path, n: int, repeat: int = 3) -> float:
    """The ceiling: random single-row float16 reads with h5py into a reused buffer, nothing else."""
    rng = np.random.default_rng(0)
    with h5py.File(store, "r") as h:
        d = h["mel"]
        buf = np.empty((96, 1366), np.float16)
        rates = []
        for _ in range(repeat):
            idx = rng.permutation(n)
            t0 = time.perf_counter()
            for i in idx:
                d.read_direct(buf, np.s_[int(i)])
            rates.append(n / (time.perf_counter() - t0))
    return median(rates)


def raw_gather_rate(ds, n: int, repeat: int = 3) -> float:
    """The in-memory ceiling: numpy gathers of shuffled batches of BATCH rows from the held array, nothing else."""
    rng = np.random.default_rng(0)
    rates = []
    for _ in range(repeat):
        idx = rng.permutation(n)[: n - n % BATCH].reshape(-1, BATCH)
        t0 = time.perf_counter()
        for i in idx:
            ds.features[i]
        rates.append(idx.size / (time.perf_counter() - t0))
    return median(rates)


def hold_rate(store: Path, n: int) -> float:
    """MB/s of FeatureDataset.hold_in_memory reading the whole split (warm page cache)."""
    ds = _feature_dataset()(store, "mel", "train")
    t0 = time.perf_counter()
    ds.hold_in_memory(1 << 62)
    return ds.nbytes() / 1e6 / (time.perf_counter() - t0)


def worker(spec: dict) -> dict:
    """Every reader × workers 0 / 2 under one allocator (it decides how much collate's fresh batches cost)."""
    apply_allocator(spec["allocator"])
    # One torch thread, as in DataLoader workers: a 2-thread conversion of one batch stalls whenever the shared
    # machine's other core is busy, which would measure the neighbours rather than the loader.
    torch.set_num_threads(1)
    folder, n = Path(spec["folder"]), spec["n"]
    ds = readers(folder / "store.h5", folder / "npy", n)
    _check_same(ds)  # every variant must deliver FeatureDataset's features before it is timed
    rates = {}
    for workers in (0, 2):
        for name, d in ds.items():
            rates[f"{name}|{workers}"] = clips_per_s(d, workers, spec["epochs"])
        for name, of in DELIVERIES.items():
            rates[f"{name}|{workers}"] = clips_per_s(ds[of], workers, spec["epochs"], convert=False)
    return {
        "rates": rates,
        "raw": raw_h5_rate(folder / "store.h5", n),
        "gather": raw_gather_rate(ds[TODAY].ds, n),
        "hold_mb_s": hold_rate(folder / "store.h5", n),
    }


# ---------------------------------------------------------------- the benchmark


def run(quick: bool = False) -> Section:
    assert BLOCK_BYTES == BLOCK_MB << 20, "update BLOCK_MB"
    sec = Section("loading", "3. Loading: feature store → training batches (warm page cache, batch 16)")
    n = 256 if quick else 1000
    epochs = 2 if quick else 5
    need, fwd = consumption()
    target = HEADROOM * need
    tmp = Path(tempfile.mkdtemp(prefix="bench-loading-"))
    try:
        store, npy = make_data(tmp, n)
        warm([store, *sorted(npy.iterdir())])
        res = {
            a: run_worker(
                "loading", dict(allocator=a, folder=str(tmp), n=n, epochs=epochs), env=allocator_env(a), timeout=900
            )
            for a in ("glibc", "glibc-keep")
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    tgt = f"≥ {target:,.0f} clips/s"
    for alloc, r in res.items():
        rates = r["rates"]
        for workers in (0, 2) if alloc == "glibc" else (0,):  # the rest is in the details table
            peer, per_clip = rates[f"{PEERS}|{workers}"], rates[f"{PER_CLIP}|{workers}"]
            shown = (
                (BEFORE, PER_CLIP, ROWS, ROWS_DELIVERY, TODAY, DELIVERY, PEERS)
                if alloc == "glibc"
                else (PER_CLIP, TODAY, DELIVERY)
            )
            for name in shown:
                x = rates[f"{name}|{workers}"]
                label = f"{name}, workers {workers}, {alloc}"
                if name == PEERS:
                    sec.rows.append(Row(label, fmt_rate(x, "clips/s"), "—", "—", tgt, x >= target, "the peers' layout"))
                    continue
                note = f"{x / need:.1f}× one H100's need"
                if name in (ROWS, ROWS_DELIVERY) and x < target:
                    note += "; " + _limit(x, r["raw"], workers)
                if name in (TODAY, DELIVERY):
                    note += "; " + _limit_memory(x, r["gather"], workers, x >= target)
                sec.rows.append(
                    Row(
                        label,
                        fmt_rate(x, "clips/s"),
                        f"peers' .npy {fmt_rate(peer, 'clips/s')}; per-clip {fmt_rate(per_clip, 'clips/s')}",
                        f"{x / peer:.2f}× peers, {x / per_clip:.2f}× per-clip",
                        tgt,
                        x >= target,
                        note,
                    )
                )
    sec.details = _details(need, fwd, target, n, res)
    return sec


def _limit(rate: float, raw: float, workers: int) -> str:
    """What holds a loader row under the target, from the ceiling measured in the same process."""
    text = (
        f"limit: h5py's per-row read, {raw:,.0f} clips/s in this process with nothing else (the ceiling of one "
        f"reading process), of which this row reaches {100 * rate / raw:.0f} %; the rest is the DataLoader's "
        f"per-batch Python and the float16 → float32 pass"
    )
    if workers:
        text += (
            f". With {workers} workers on {os.cpu_count()} cores the workers and the consumer share the cores, "
            f"and each batch crosses a pipe: on a GPU node each worker brings a core of its own (the paper "
            f"preset's --num-workers 4)"
        )
    return text


def _limit_memory(rate: float, gather: float, workers: int, met: bool) -> str:
    """What bounds an in-memory loader row: numpy's gather, measured alone in the same process."""
    text = (
        f"{'bound' if met else 'limit'}: numpy's gather of a batch from the held split (one copy), "
        f"{gather:,.0f} clips/s in this process with nothing else, of which this row reaches "
        f"{100 * rate / gather:.0f} %; the rest is the DataLoader's per-batch Python"
        + ("" if workers else " (and, when standardised, the float16 → float32 pass)")
    )
    if workers:
        text += (
            ". Workers add a copy of each batch into shared memory and a pipe round trip: fcn.loader "
            "serves a split held in memory with none"
        )
    return text


def _check_same(ds: dict) -> None:
    ref = ds[PER_CLIP]
    idx = [5, 1, 3, 1]
    want = torch.stack([ref[i][0] for i in idx])
    for name, d in ds.items():
        if name == PEERS:
            continue
        x = d[idx][0] if name in (TODAY, ROWS) else torch.stack([d[i][0] for i in idx])
        if not torch.equal(consume(d, x), want):
            raise RuntimeError(f"{name} returns other features than FeatureDataset")


def _details(need: float, fwd: float, target: float, n: int, res: dict) -> str:
    lines = [
        f"Target: one H100 (dense bf16 {H100_BF16_DENSE / 1e12:.1f} TFLOP/s) training FCN-4 at "
        f"{100 * GPU_MFU:.0f} % MFU consumes {GPU_MFU:.2f} × {H100_BF16_DENSE / 1e12:.1f} TFLOP/s ÷ (3 × "
        f"{fwd / 1e9:.2f} GFLOP) = **{need:,.0f} clips/s**; with {HEADROOM:.0f}× headroom the loader target "
        f"is {target:,.0f} clips/s. (The brief quoted {BRIEF_FIGURE:,} clips/s per GPU; the computation "
        f"gives {need / BRIEF_FIGURE:.1f}× that: {BRIEF_FIGURE:,} clips/s is "
        f"{100 * GPU_MFU * BRIEF_FIGURE / need:.0f} % MFU on an H100.)",
        "",
        f"{n} clips of 96×1366 (store {n * 96 * 1366 * 2 / 1e6:.0f} MB float16; .npy "
        f"{n * 96 * 1366 * 4 / 1e6:.0f} MB float32), read once before timing. Shuffled epochs of batch "
        f"{BATCH}, median of the epochs after an untimed one, first batch of each epoch not timed; the "
        f"consumer standardises "
        f"float16 batches to float32 on the CPU (except the delivery-only row), with one torch thread. Each "
        f"allocator in its own process (bench/common.py ALLOCATORS). Ceiling: h5py random single-row float16 reads "
        f"into a reused buffer, nothing else: "
        + ", ".join(f"{r['raw']:,.0f} clips/s ({a})" for a, r in res.items())
        + ". In-memory ceiling: numpy gathers of shuffled batches from the held split, nothing else: "
        + ", ".join(f"{r['gather']:,.0f} clips/s ({a})" for a, r in res.items())
        + ". Reading the split "
        "into memory (fcn.store.FeatureDataset.hold_in_memory, blocks of "
        f"{BLOCK_MB} MB, warm page cache): "
        + ", ".join(f"{r['hold_mb_s']:,.0f} MB/s ({a})" for a, r in res.items())
        + ".",
        "",
        "| reader | " + " | ".join(f"{a}, workers {w}" for a in res for w in (0, 2)) + " |",
        "|---|" + "---:|" * (2 * len(res)),
    ]
    names = dict.fromkeys(k.split("|")[0] for r in res.values() for k in r["rates"])
    for name in names:
        lines.append(
            f"| {name} | " + " | ".join(f"{res[a]['rates'][f'{name}|{w}']:,.0f}" for a in res for w in (0, 2)) + " |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    worker_main(worker)
