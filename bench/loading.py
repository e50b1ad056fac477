"""Loading: how fast the training DataLoader reads paper-scale mel features (1×96×1366) from a warm page cache.

Compared: our HDF5 store (float16, contiguous) through fcn.store.FeatureDataset as fcn.train uses it (one h5py read,
float32 conversion and standardisation per clip) at 0 and 2 worker processes; two variants of it measured here:
batched reads (the DataLoader's `__getitems__`: a batch's indices sorted and read with one h5py fancy-index call) and
float16 batches standardised after collation (half the bytes through collate and worker pipes; on a GPU this would
run on the device); and the peers' layout, one float32 .npy file per clip read with np.load.

Target: 3 × what one H100 consumes when it trains FCN-4 at 45 % of its dense bf16 peak, computed below.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import Row, Section, allocator_env, apply_allocator, fmt_rate, median, run_worker, worker_main

H100_BF16_DENSE = 989.4e12  # FLOP/s, H100 SXM5 datasheet (dense, without sparsity)
GPU_MFU = 0.45
HEADROOM = 3.0
BRIEF_FIGURE = 2_600  # clips/s, the figure this target was first quoted with
BATCH = 16


def consumption() -> tuple[float, float]:
    """(clips/s one H100 consumes training FCN-4 at 45 % MFU, forward FLOPs per clip)."""
    from fcn.models import FCN, forward_macs

    fwd = 2.0 * forward_macs(FCN(4), 96, 1366)
    return GPU_MFU * H100_BF16_DENSE / (3 * fwd), fwd


# ---------------------------------------------------------------- data sets on disk

def make_data(folder: Path, n: int) -> tuple[Path, Path]:
    """A store of n random mel features in fcn's layout (via fcn.store.write_store) and the same clips as peers'
    per-clip float32 .npy files."""
    from fcn.data import MTAT_TOP50
    from fcn.frontends import FrontEndParams
    from fcn.store import write_store

    rng = np.random.default_rng(0)
    npy = folder / "npy"
    npy.mkdir(parents=True, exist_ok=True)

    def chunks():
        for i in range(0, n, 64):
            x = (rng.standard_normal((min(64, n - i), 96, 1366), dtype=np.float32) * 10 - 30)
            for j, clip in enumerate(x):
                np.save(npy / f"{i + j:06d}.npy", clip)
            yield {"mel": x.astype(np.float16)}

    store = write_store(folder / "store.h5", dataset="mtat", tags=list(MTAT_TOP50), params=FrontEndParams(),
                        inputs=["mel"], clip_ids=[f"{i:06d}" for i in range(n)], paths=[""] * n,
                        splits=["train"] * n, labels=(rng.random((n, 50)) < 0.1).astype(np.uint8),
                        feature_chunks=chunks())
    return store, npy


def warm(paths) -> None:
    """Read every byte once so the timed reads hit the page cache (the 'warm' case the target is about)."""
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 23):
                pass


# ---------------------------------------------------------------- the readers compared

def _feature_dataset():
    from fcn.store import FeatureDataset

    return FeatureDataset


class BatchRead:
    """Mixin: a whole batch per DataLoader fetch. The DataLoader calls `__getitems__(indices)` when a dataset has
    it. Rows are read in increasing order with `read_direct` into one float16 array (h5py's fancy indexing costs more
    than it saves), standardised in one vectorised pass unless `half`, and handed to collate as per-clip views."""

    half = False

    def _read_batch(self, idx) -> np.ndarray:
        idx = np.asarray(idx)
        order = np.argsort(self.index[idx], kind="stable")
        d = self._file()
        x = np.empty((len(idx), *d.shape[1:]), dtype=d.dtype)
        for k in order:  # increasing file offsets: sequential-ish reads
            d.read_direct(x, np.s_[int(self.index[idx[k]])], np.s_[k])
        return x

    def __getitems__(self, idx):
        xs = torch.from_numpy(self._read_batch(idx)).unsqueeze(1)
        if not self.half:
            xs = xs.float().sub_(self.mean).div_(self.std)
        return [(xs[k], torch.from_numpy(self.labels[i]), int(i)) for k, i in enumerate(idx)]


class WholeBatch(BatchRead):
    """BatchRead that returns the collated batch itself (x, y, idx) and needs the DataLoader's collate_fn to pass it
    through (`collate_fn=passthrough`): no second copy in collate. float16; standardised by the consumer."""

    half = True

    def __getitems__(self, idx):
        x = torch.from_numpy(self._read_batch(idx)).unsqueeze(1)
        return x, torch.from_numpy(self.labels[np.asarray(idx)]), torch.as_tensor(idx)


def passthrough(batch):
    return batch


class NumpyConvert:
    """Mixin: FeatureDataset.__getitem__ as it was before bench/loading.py's finding, converting float16 → float32
    with numpy (not vectorised) instead of torch; kept to show the difference."""

    def __getitem__(self, i):
        x = self._file()[self.index[i]].astype(np.float32)
        x = (x - self.mean) / self.std
        return torch.from_numpy(x).unsqueeze(0), torch.from_numpy(self.labels[i]), i


class Half:
    """Mixin: return the stored float16 clip as is; the consumer standardises the collated batch (see `consume`)."""

    half = True

    def __getitem__(self, i):
        x = self._file()[self.index[i]]
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


TODAY = "FeatureDataset (fcn.store): float32 per clip"
BEFORE = "FeatureDataset before: numpy float16 → float32"
PEERS = "peers: one float32 .npy per clip"


def readers(store: Path, npy: Path, n: int) -> dict[str, torch.utils.data.Dataset]:
    FD = _feature_dataset()
    classes = {
        TODAY: FD,
        BEFORE: type("NumpyFD", (NumpyConvert, FD), {}),
        "+ batch reads (__getitems__), float32": type("BatchFD", (BatchRead, FD), {}),
        "float16 per clip, standardised after collate": type("HalfFD", (Half, FD), {}),
        "+ batch reads, float16, standardised after collate": type("BatchHalfFD", (BatchRead, FD), {"half": True}),
        "whole float16 batches (collate_fn=passthrough), standardised after": type("WholeFD", (WholeBatch, FD), {}),
    }
    out = {name: cls(store, "mel", "train") for name, cls in classes.items()}
    out[PEERS] = NpyDataset(npy, n)
    return out


def consume(ds, x: torch.Tensor, convert: bool = True) -> torch.Tensor:
    """What the training loop gets: float32 standardised features. float16 batches are converted here when
    `convert`; without it the batch is what a GPU run would copy to the device and standardise there."""
    if convert and x.dtype == torch.float16:
        return x.float().sub_(ds.mean).div_(ds.std)
    return x


def clips_per_s(ds, workers: int, epochs: int, convert: bool = True) -> float:
    """Steady-state clips/s of a shuffled DataLoader epoch (the first batch, which pays worker start-up, is not
    timed); the median over `epochs` epochs after one untimed epoch (a keep-memory heap grows during its first)."""
    rates = []
    for e in range(epochs + 1):
        g = torch.Generator().manual_seed(e)
        dl = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=workers, drop_last=True,
                                         generator=g, multiprocessing_context="fork" if workers else None,
                                         collate_fn=passthrough if isinstance(ds, WholeBatch) else None)
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
    import h5py

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
        rates[f"{DELIVERY}|{workers}"] = clips_per_s(ds[WHOLE], workers, spec["epochs"], convert=False)
    return {"rates": rates, "raw": raw_h5_rate(folder / "store.h5", n)}


WHOLE = "whole float16 batches (collate_fn=passthrough), standardised after"
DELIVERY = "whole float16 batches, delivery only (standardised on the GPU)"


# ---------------------------------------------------------------- the benchmark

def run(quick: bool = False) -> Section:
    sec = Section("loading", "3. Loading: feature store → training batches (warm page cache, batch 16)")
    n = 256 if quick else 1000
    epochs = 2 if quick else 5
    need, fwd = consumption()
    target = HEADROOM * need
    tmp = Path(tempfile.mkdtemp(prefix="bench-loading-"))
    try:
        store, npy = make_data(tmp, n)
        warm([store, *sorted(npy.iterdir())])
        res = {a: run_worker("loading", dict(allocator=a, folder=str(tmp), n=n, epochs=epochs),
                             env=allocator_env(a), timeout=900) for a in ("glibc", "glibc-keep")}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    tgt = f"≥ {target:,.0f} clips/s"
    for alloc, r in res.items():
        rates = r["rates"]
        for workers in (0, 2) if alloc == "glibc" else (0,):  # the rest is in the details table
            peer, today = rates[f"{PEERS}|{workers}"], rates[f"{TODAY}|{workers}"]
            best = max((k for k in rates if k.endswith(f"|{workers}") and not k.startswith(PEERS)
                        and not k.startswith(DELIVERY)), key=rates.get)
            shown = (BEFORE, TODAY, best.split("|")[0], DELIVERY, PEERS) if alloc == "glibc" else \
                (TODAY, best.split("|")[0], DELIVERY)
            for name in dict.fromkeys(shown):
                x = rates[f"{name}|{workers}"]
                label = f"{name}, workers {workers}, {alloc}"
                if name == PEERS:
                    sec.rows.append(Row(label, fmt_rate(x, "clips/s"), "—", "—", tgt, x >= target, "the peers' layout"))
                    continue
                note = f"{x / need:.1f}× one H100's need"
                if name == DELIVERY:
                    note += "; standardising float16 → float32 moves to the GPU"
                sec.rows.append(Row(label, fmt_rate(x, "clips/s"),
                                    f"peers' .npy {fmt_rate(peer, 'clips/s')}; fcn.store {fmt_rate(today, 'clips/s')}",
                                    f"{x / peer:.2f}× peers, {x / today:.2f}× fcn.store", tgt, x >= target, note))
    sec.details = _details(need, fwd, target, n, res)
    return sec


def _check_same(ds: dict) -> None:
    ref = ds[TODAY]
    idx = [5, 1, 3, 1]
    want = torch.stack([ref[i][0] for i in idx])
    for name, d in ds.items():
        if name == PEERS:
            continue
        got = d.__getitems__(idx) if hasattr(d, "__getitems__") else [d[i] for i in idx]
        x = got[0] if isinstance(d, WholeBatch) else torch.stack([it[0] for it in got])
        if not torch.allclose(consume(d, x), want, atol=1e-5):
            raise RuntimeError(f"{name} returns other features than FeatureDataset")


def _details(need: float, fwd: float, target: float, n: int, res: dict) -> str:
    lines = [f"Target: one H100 (dense bf16 {H100_BF16_DENSE / 1e12:.1f} TFLOP/s) training FCN-4 at "
             f"{100 * GPU_MFU:.0f} % MFU consumes {GPU_MFU:.2f} × {H100_BF16_DENSE / 1e12:.1f} TFLOP/s ÷ (3 × "
             f"{fwd / 1e9:.2f} GFLOP) = **{need:,.0f} clips/s**; with {HEADROOM:.0f}× headroom the loader target "
             f"is {target:,.0f} clips/s. (The brief quoted {BRIEF_FIGURE:,} clips/s per GPU; the computation "
             f"gives {need / BRIEF_FIGURE:.1f}× that: {BRIEF_FIGURE:,} clips/s is "
             f"{100 * GPU_MFU * BRIEF_FIGURE / need:.0f} % MFU on an H100.)", "",
             f"{n} clips of 96×1366 (store {n * 96 * 1366 * 2 / 1e6:.0f} MB float16; .npy "
             f"{n * 96 * 1366 * 4 / 1e6:.0f} MB float32), read once before timing. Shuffled epochs of batch "
             f"{BATCH}, median of the epochs after an untimed one, first batch of each epoch not timed; the "
             f"consumer standardises "
             f"float16 batches to float32 on the CPU (except the delivery-only row), with one torch thread. Each "
             f"allocator in its own process (bench/common.py ALLOCATORS). Ceiling: h5py random single-row float16 reads into a reused "
             f"buffer, nothing else: " + ", ".join(f"{r['raw']:,.0f} clips/s ({a})" for a, r in res.items()) + ".",
             "", "| reader | " + " | ".join(f"{a}, workers {w}" for a in res for w in (0, 2)) + " |",
             "|---|" + "---:|" * (2 * len(res))]
    names = dict.fromkeys(k.split("|")[0] for r in res.values() for k in r["rates"])
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{res[a]['rates'][f'{name}|{w}']:,.0f}" for a in res
                                                  for w in (0, 2)) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    worker_main(worker)
