"""The HDF5 feature store: every input type's features, labels, clip ids and splits of one data set in one file.

Layout (DESIGN.md): datasets `mel`/`stft`/`mfcc` (N, rows, frames) float16, `labels` (N, 50) uint8, `clip_id`,
`split`, `path` (N,) str; attrs `format_version`, `dataset`, `tags`, `frontend`, `inputs`, `decoder`.
float16 costs at most 0.016 dB and halves the reads; contiguous (unchunked, uncompressed) datasets gave the fastest
random reads here (docs/MEASURED.md: 2,900-4,300 clips/s cold, 23-35 k warm, vs 1,255-2,230 chunked + compressed).
A split that fits in RAM is read once, in large sequential blocks, and its batches are gathered from memory
(FeatureDataset.hold_in_memory): per-row HDF5 reads cap a loader at 5-10 k clips/s, well under what a GPU consumes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import torch

from fcn.errors import UserError
from fcn.frontends import FrontEndParams

# 2: the MFCC's 80 dB floor is per clip (format 1 floored each 32-clip batch as a whole, so a clip's MFCC depended
# on its neighbours). 3: the front end has named variants (attr `frontend` holds `variant`: the mel is the authors'
# floored log of mel² by default) and Δ/ΔΔ are librosa's. Stores of another format are refused, or rebuilt when they
# are the derived default.
FORMAT_VERSION = 3
SPLITS = ("train", "valid", "test")
# the decoder of stores written before the attr `decoder` existed: fcn.audio had only this one then
OLD_DECODER = "soundfile"
# [D] A split is held in RAM when its features take at most this fraction of the memory available to the process
# (MemAvailable, or a cgroup limit when lower), shared among the node's training processes (each holds its own copy):
# the rest stays for the model, the DataLoader's batches and the page cache. Over it, batches are read row by row
# from the file as before (bench/loading.py measures both).
IN_MEMORY_FRACTION = 0.5
# [D] The one-off read of a split goes through blocks of about this many bytes (sequential reads at disk speed; a
# block where fewer than 1 in BLOCK_MIN_DENSITY rows belong to the split is read row by row instead).
BLOCK_BYTES = 64 << 20
BLOCK_MIN_DENSITY = 4


class StoreWriter:
    """A store being written: `out`.tmp with room for `n` clips' features, filled chunk by chunk (in clip order), then
    given its labels, ids and attributes and renamed to `out` by finish(), so a reader never sees half a store.
    fcn.preprocess fills it while later shards still compute; abort() removes the temporary file."""

    def __init__(self, out: Path, n: int, params: FrontEndParams, inputs: list[str]):
        self.out = Path(out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.out.with_name(self.out.name + ".tmp")
        self.n, self.params, self.inputs, self.filled = n, params, list(inputs), 0
        self.h = h5py.File(self.tmp, "w")
        self.feats = {
            k: self.h.create_dataset(k, (n, params.rows(k), params.n_frames), dtype="float16") for k in self.inputs
        }

    def append(self, chunk: dict) -> None:
        """The next clips' features {kind: (m, rows, frames)}."""
        m = len(next(iter(chunk.values())))
        for k in self.inputs:
            self.feats[k][self.filled : self.filled + m] = chunk[k]
        self.filled += m

    def finish(
        self,
        *,
        dataset: str,
        tags: list[str],
        clip_ids: list[str],
        paths: list[str],
        splits: list[str],
        labels: np.ndarray,
        decoder: str = OLD_DECODER,
    ) -> Path:
        n = self.n
        if self.filled != n or len(clip_ids) != n:
            self.abort()
            raise RuntimeError(f"feature chunks covered {self.filled} of {n} clips ({len(clip_ids)} ids)")
        try:
            self._write_index(
                h5py,
                dataset=dataset,
                tags=tags,
                clip_ids=clip_ids,
                paths=paths,
                splits=splits,
                labels=labels,
                decoder=decoder,
            )
        except BaseException:
            self.abort()
            raise
        os.replace(self.tmp, self.out)
        return self.out

    def _write_index(self, h5py, *, dataset, tags, clip_ids, paths, splits, labels, decoder) -> None:
        """Attributes, labels, ids, paths and splits; then the file is closed."""
        n, h = self.n, self.h
        str_t = h5py.string_dtype("utf-8")
        h.attrs.update(
            format_version=FORMAT_VERSION,
            dataset=dataset,
            tags=json.dumps(list(tags)),
            frontend=self.params.to_json(),
            inputs=json.dumps(self.inputs),
            decoder=decoder,
        )
        h.create_dataset("labels", data=np.asarray(labels, dtype=np.uint8).reshape(n, len(tags)))
        h.create_dataset("clip_id", data=np.array(clip_ids, dtype=object), dtype=str_t)
        h.create_dataset("path", data=np.array(paths, dtype=object), dtype=str_t)
        h.create_dataset("split", data=np.array(splits, dtype=object), dtype=str_t)
        h.close()

    def abort(self) -> None:
        try:
            self.h.close()
        except Exception:  # noqa: BLE001 - closing a file h5py already gave up on
            pass
        self.tmp.unlink(missing_ok=True)


def write_store(
    out: Path,
    *,
    dataset: str,
    tags: list[str],
    params: FrontEndParams,
    inputs: list[str],
    clip_ids: list[str],
    paths: list[str],
    splits: list[str],
    labels: np.ndarray,
    feature_chunks,
    decoder: str = OLD_DECODER,
) -> Path:
    """Write the store to `out` (StoreWriter: a temporary file renamed on success).

    `feature_chunks` yields dicts {kind: (n, rows, frames) array} in clip order, covering all len(clip_ids) clips.
    `decoder` (fcn.audio.DECODERS) is recorded: decoders agree within fcn.audio.TOLERANCE_DB, not bit for bit.
    """
    w = StoreWriter(out, len(clip_ids), params, inputs)
    try:
        for chunk in feature_chunks:
            w.append(chunk)
    except BaseException:
        w.abort()
        raise
    return w.finish(
        dataset=dataset, tags=tags, clip_ids=clip_ids, paths=paths, splits=splits, labels=labels, decoder=decoder
    )


def read_meta(path: str | Path) -> dict:
    """The store's attributes and sizes, with a clear error when the file is missing or not a store."""
    path = Path(path)
    if not path.exists():
        raise UserError(
            f"feature store {path} does not exist: build it with `python -m fcn.preprocess` "
            f"or leave --store empty to build it on first use"
        )
    try:
        with h5py.File(path, "r") as h:
            meta = dict(
                dataset=str(h.attrs["dataset"]),
                tags=json.loads(h.attrs["tags"]),
                frontend=FrontEndParams.from_dict(json.loads(h.attrs["frontend"])),
                inputs=json.loads(h.attrs["inputs"]),
                n=int(h["labels"].shape[0]),
                format_version=int(h.attrs["format_version"]),
                decoder=str(h.attrs.get("decoder", OLD_DECODER)),
            )
    except (OSError, KeyError) as e:
        raise UserError(f"{path} is not an fcn feature store ({e}); rebuild it with `python -m fcn.preprocess`") from e
    return meta


def check_store(path: str | Path, *, input: str, params: FrontEndParams, dataset: str | None = None) -> dict:
    """Refuse a store built with other front-end parameters, another data set or without this input type."""
    meta = read_meta(path)
    if meta["format_version"] != FORMAT_VERSION:
        raise UserError(
            f"feature store {path} has format {meta['format_version']}, and this fcn reads format "
            f"{FORMAT_VERSION} (store.py says what changed); rebuild it with `python -m fcn.preprocess`"
        )
    if meta["frontend"].variant != params.variant:
        raise UserError(
            f"feature store {path} holds the front-end variant {meta['frontend'].variant!r}, and this run "
            f"asks for {params.variant!r} (--frontend-variant): rebuild it for this run or point --store "
            f"at a store of that variant"
        )
    if meta["frontend"] != params:
        a, b = meta["frontend"].to_dict(), params.to_dict()
        diff = ", ".join(f"{k}: store {a[k]!r} vs run {b[k]!r}" for k in a if a[k] != b.get(k))
        raise UserError(
            f"feature store {path} was built with other front-end parameters ({diff}); "
            f"rebuild it for this run or point --store at a matching one"
        )
    if input not in meta["inputs"]:
        raise UserError(f"feature store {path} holds {meta['inputs']}, not {input!r}")
    if dataset is not None and meta["dataset"] != dataset:
        raise UserError(f"feature store {path} holds data set {meta['dataset']!r}, not {dataset!r}")
    return meta


def available_memory() -> int | None:
    """Bytes of memory this process may still use: MemAvailable (Linux), lowered to what a cgroup v2 limit leaves
    (Slurm's --mem, a container's limit); the free physical pages elsewhere; None when unknown."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    try:
        cg = Path("/sys/fs/cgroup")
        limit = (cg / "memory.max").read_text().strip()
        if limit != "max":
            avail = min(avail, int(limit) - int((cg / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return max(0, avail)


def memory_budget(processes: int = 1) -> int:
    """Bytes one of `processes` training processes on this node may spend holding a split (IN_MEMORY_FRACTION)."""
    avail = available_memory()
    return 0 if avail is None else int(IN_MEMORY_FRACTION * avail / max(1, processes))


def _read_rows(d, rows: np.ndarray, out: np.ndarray) -> None:
    """out[k] = d[rows[k]] for increasing `rows`: blocks of BLOCK_BYTES read sequentially, the split's rows copied
    out of each; a sparse block row by row."""
    per_block = max(1, BLOCK_BYTES // (int(np.prod(d.shape[1:])) * d.dtype.itemsize))
    buf = np.empty((per_block, *d.shape[1:]), dtype=d.dtype)
    i = 0
    while i < len(rows):
        s = int(rows[i])
        j = int(np.searchsorted(rows, s + per_block))  # rows[i:j] lie in [s, s + per_block)
        e = int(rows[j - 1]) + 1
        if (j - i) * BLOCK_MIN_DENSITY >= e - s:
            d.read_direct(buf, np.s_[s:e], np.s_[: e - s])
            out[i:j] = buf[rows[i:j] - s]
        else:
            for k in range(i, j):
                d.read_direct(out, np.s_[int(rows[k])], np.s_[k])
        i = j


class FeatureDataset(torch.utils.data.Dataset):
    """One split of one input type. The HDF5 file is opened lazily in each process (h5py handles don't survive fork).

    Features are standardised by one mean and std measured on (up to 256 clips of) the training split [D]: a fixed
    affine map with no parameters, so the model sees unit-scale inputs whatever the front end's dB range.

    `hold_in_memory` reads the split into one float16 array; batches are then gathered from it by numpy indexing
    (the same values in the same order as the per-row reads: only where they come from changes).
    """

    def __init__(self, path: str | Path, input: str, split: str, *, fraction: float = 1.0, seed: int = 0):
        self.path, self.input = str(path), input
        with h5py.File(self.path, "r") as h:
            splits = h["split"].asstr()[:]
            self.tags = json.loads(h.attrs["tags"])
            idx = np.flatnonzero(splits == split)
            if fraction < 1.0:  # RQ4: a seeded subset of the training clips
                keep = max(1, int(round(len(idx) * fraction)))
                idx = np.sort(np.random.default_rng(seed).choice(idx, keep, replace=False))
            self.index = idx
            train = np.flatnonzero(splits == "train")
            sample = train[np.linspace(0, len(train) - 1, min(256, len(train))).astype(int)] if len(train) else idx
            x = h[input][np.unique(sample)].astype(np.float32)
            self.mean, self.std = float(x.mean()), float(x.std() + 1e-6)
            self.labels = h["labels"][:][idx].astype(np.float32)
            self.clip_ids = h["clip_id"].asstr()[:][idx]
            self.row_shape, self.itemsize = tuple(h[input].shape[1:]), h[input].dtype.itemsize
        self._h5 = None
        self._pid = None
        self.features = None  # (len, rows, frames) float16 in split order once hold_in_memory() has read it

    def nbytes(self) -> int:
        """Bytes of this split's features (float16)."""
        return len(self.index) * int(np.prod(self.row_shape)) * self.itemsize

    def hold_in_memory(self, budget: int) -> bool:
        """Read the whole split into RAM if it takes at most `budget` bytes (fcn.store.memory_budget); whether it
        is held. Idempotent."""
        if self.features is None and 0 < self.nbytes() <= budget:
            with h5py.File(self.path, "r") as h:
                d = h[self.input]
                x = np.empty((len(self.index), *d.shape[1:]), dtype=d.dtype)
                _read_rows(d, self.index, x)  # self.index is increasing (flatnonzero, or sorted for a fraction)
            self.features = x
        return self.features is not None

    def __len__(self) -> int:
        return len(self.index)

    def _file(self):
        if self._h5 is None or self._pid != os.getpid():
            self._h5, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._h5[self.input]

    def __getitem__(self, i: int):
        """One clip, standardised float32 (1, rows, frames); training reads whole batches instead (read_batch)."""
        x = self.features[i] if self.features is not None else self._file()[self.index[i]]
        x = self.standardise(torch.from_numpy(x))
        return x.unsqueeze(0), torch.from_numpy(self.labels[i]), i

    def read_batch(self, idx, pin: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Clips `idx` (positions in this split) as one float16 batch (B, 1, rows, frames), their labels (B, 50) and
        `idx`. Standardising is left to the consumer (`standardise`, on the device): half the bytes through worker
        pipes and host-to-device copies, and no per-clip collation (bench/loading.py: 2-3× the clips/s of per-clip
        float32 items). Held in memory: gathered by numpy indexing (one copy), with `pin` straight into page-locked
        memory (CUDA's caching host allocator reuses its blocks, and the DataLoader's own pinning copy is skipped);
        else rows are read in increasing file order with read_direct into one array."""
        idx = np.asarray(idx, dtype=np.int64)
        if self.features is not None:
            if pin:
                x = torch.empty((len(idx), *self.features.shape[1:]), dtype=torch.float16, pin_memory=True)
                self.gather(idx, x)
            else:
                x = torch.from_numpy(self.features[idx])
            return x.unsqueeze(1), torch.from_numpy(self.labels[idx]), torch.from_numpy(idx)
        d = self._file()
        x = np.empty((len(idx), *d.shape[1:]), dtype=d.dtype)
        rows = self.index[idx]
        for k in np.argsort(rows, kind="stable"):  # increasing offsets; h5py's fancy indexing costs more than it saves
            d.read_direct(x, np.s_[int(rows[k])], np.s_[k])
        return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(self.labels[idx]), torch.from_numpy(idx)

    def gather(self, idx: np.ndarray, out: torch.Tensor) -> None:
        """out[k] = features of clip idx[k], from the split held in memory, into a float16 CPU tensor."""
        # mode="clip" only spares numpy a buffered copy into `out` (mode="raise" buffers): idx comes from the
        # sampler and always lies in range
        np.take(self.features, idx, axis=0, out=out.numpy(), mode="clip")

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        """float16 features → standardised float32, on whatever device `x` is on. torch's float16 → float32 is
        vectorised (numpy's is not), and the values are bit-identical to (x.astype(float32) - mean) / std."""
        return x.float().sub_(self.mean).div_(self.std)

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_h5"] = None
        return d


class Batches(torch.utils.data.Dataset):
    """A FeatureDataset served one whole batch per fetch: `DataLoader(Batches(ds), batch_size=None,
    sampler=BatchSampler(sampler, batch_size, drop_last))` yields (float16 x, labels, idx) batches (read_batch).
    `pin`: batches of a split held in memory are gathered into page-locked memory (CUDA only)."""

    def __init__(self, ds: FeatureDataset, pin: bool = False):
        self.ds, self.pin = ds, pin

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, idx):
        return self.ds.read_batch(idx, pin=self.pin)
