"""fcn.store and the training loader: whole float16 batches are exactly the per-clip standardised items, batched;
the layout fcn.train picks."""

import pytest
import torch

from fcn.config import RunConfig
from tests.conftest import TINY


def test_batches_equal_per_clip_items_in_the_same_order(data_dir):
    from torch.utils.data import DataLoader, DistributedSampler

    from fcn.dist import Dist
    from fcn.loader import device_inputs as _inputs
    from fcn.loader import make_loader as _loader
    from fcn.run_store import store_path
    from fcn.store import FeatureDataset

    config = RunConfig(data_dir=str(data_dir), **TINY).replace(batch_size=7, memory_format="contiguous")
    ds = FeatureDataset(store_path(config), "mel", "train", fraction=0.8, seed=3)
    d = Dist(rank=0, world=1, local_rank=0, local_world=1, device=torch.device("cpu"))
    fast = _loader(ds, config, d, shuffle=True)
    fast.sampler.sampler.set_epoch(2)
    per_clip = DataLoader(ds, batch_size=7, sampler=DistributedSampler(ds, 1, 0, shuffle=True, seed=config.seed))
    per_clip.sampler.set_epoch(2)
    n = 0
    for (x16, y, i), (x, y2, i2) in zip(fast, per_clip, strict=True):
        assert x16.dtype == torch.float16 and x16.shape == x.shape
        torch.testing.assert_close(_inputs(x16, fast, torch.contiguous_format, d), x, rtol=0, atol=0)  # bit-identical
        torch.testing.assert_close(y, y2, rtol=0, atol=0)
        assert torch.equal(i, i2)
        n += len(i)
    assert n == len(ds) > 7  # every clip once, over several batches


def test_memory_format_auto_follows_the_measured_rule(monkeypatch):
    from fcn.precision import channels_last

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    demo, paper = RunConfig(), RunConfig(width=1.0)
    assert channels_last(demo, cpu) and channels_last(paper, cuda)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert not channels_last(paper, cpu)  # full width on an AVX2 CPU: contiguous was 1.4× faster
    assert channels_last(paper.replace(memory_format="channels_last"), cpu)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert channels_last(paper, cpu) and not channels_last(paper.replace(memory_format="contiguous"), cuda)


def _epoch_batches(config, d, epoch: int, mode: str, monkeypatch):
    """Every batch of one epoch of fcn.train's training loader, the split mapped from the store, copied into memory
    or read row by row."""
    import fcn.memory
    from fcn.loader import make_loader
    from fcn.run_store import store_path
    from fcn.store import FeatureDataset

    monkeypatch.setattr(fcn.memory, "IN_MEMORY_FRACTION", 0.0 if mode == "rows" else 0.5)
    ds = FeatureDataset(store_path(config), "mel", "train", fraction=0.8, seed=3)
    if mode == "copied":  # a store that cannot be mapped (chunked, compressed): a private copy
        monkeypatch.setattr(ds, "map_store", lambda budget: False)
    dl = make_loader(ds, config, d, shuffle=True)
    assert (ds.features is not None) == (mode != "rows") and (ds.rows is not None) == (mode == "mapped")
    assert dl.num_workers == (0 if mode != "rows" else config.num_workers)  # a held split is served without workers
    dl.sampler.sampler.set_epoch(epoch)
    return list(dl)


@pytest.mark.parametrize("world,rank", [(1, 0), (2, 1)])
def test_split_in_memory_yields_exactly_the_per_row_batches(data_dir, monkeypatch, world, rank):
    from fcn.dist import Dist

    config = RunConfig(data_dir=str(data_dir), **TINY).replace(batch_size=7, num_workers=1, seed=5)
    d = Dist(rank=rank, world=world, local_rank=0, local_world=1, device=torch.device("cpu"))
    for epoch in (0, 3):
        rows = _epoch_batches(config, d, epoch, "rows", monkeypatch)
        for mode in ("mapped", "copied"):
            held = _epoch_batches(config, d, epoch, mode, monkeypatch)
            assert len(held) == len(rows) > 2
            for (x, y, i), (x2, y2, i2) in zip(held, rows, strict=True):
                assert x.dtype == x2.dtype == torch.float16
                assert torch.equal(i, i2) and torch.equal(x, x2) and torch.equal(y, y2)
    other = _epoch_batches(config, d, 1, "mapped", monkeypatch)  # and the order does change with the epoch
    held = _epoch_batches(config, d, 0, "mapped", monkeypatch)
    assert not torch.equal(torch.cat([b[2] for b in other]), torch.cat([b[2] for b in held]))


def test_a_mapped_split_is_the_store_file_within_the_nodes_budget(data_dir):
    """map_store maps the file's bytes (no copy in the process): the node's processes share its page-cache pages;
    over the budget nothing is mapped; a pickled dataset (a DataLoader worker) carries no copy of the store."""
    import pickle

    import h5py
    import numpy as np

    from fcn.run_store import store_path
    from fcn.store import FeatureDataset

    path = store_path(RunConfig(data_dir=str(data_dir), **TINY))
    ds = FeatureDataset(path, "mel", "valid")
    assert not ds.map_store(ds.nbytes() - 1) and ds.features is None
    assert ds.hold(ds.nbytes(), processes=4) == "mapped"
    assert isinstance(ds.features, np.memmap) and ds.features.filename == str(path.resolve())
    with h5py.File(path, "r") as h:
        want = h["mel"][:][ds.index]
    idx = np.array([3, 0, len(ds) - 1, 3])
    x, _, _ = ds.read_batch(idx)
    assert np.array_equal(x[:, 0].numpy(), want[idx])
    out = torch.empty((4, *ds.row_shape), dtype=torch.float16)
    ds.gather(idx, out)  # the pinned CUDA path
    assert np.array_equal(out.numpy(), want[idx])
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.features is None and len(pickle.dumps(ds)) < ds.nbytes() // 2
    assert np.array_equal(clone.read_batch(idx)[0].numpy(), x.numpy())  # row by row from the file


@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.1])
def test_hold_in_memory_reads_the_split_rows_in_blocks_and_row_by_row(data_dir, monkeypatch, fraction):
    """Blocks of 4 rows: dense splits are read by blocks, a 10 % subset mostly row by row; both give the file's rows.
    The budget is respected, and gather() into a given tensor (the pinned CUDA path) equals numpy indexing."""
    import h5py
    import numpy as np

    import fcn.store
    from fcn.run_store import store_path
    from fcn.store import FeatureDataset

    path = store_path(RunConfig(data_dir=str(data_dir), **TINY))
    ds = FeatureDataset(path, "mel", "train", fraction=fraction, seed=1)
    monkeypatch.setattr(fcn.store, "BLOCK_BYTES", 4 * int(np.prod(ds.row_shape)) * ds.itemsize)
    assert not ds.hold_in_memory(ds.nbytes() - 1) and ds.features is None
    assert ds.hold_in_memory(ds.nbytes())
    with h5py.File(path, "r") as h:
        want = h["mel"][:][ds.index]
    assert np.array_equal(ds.features, want)
    idx = np.array([3, 0, len(ds) - 1, 3])
    out = torch.empty((4, *ds.row_shape), dtype=torch.float16)
    ds.gather(idx, out)
    assert np.array_equal(out.numpy(), want[idx])
    assert torch.equal(ds[2][0], ds.standardise(torch.from_numpy(want[2])).unsqueeze(0))


def test_amp_auto_follows_the_measured_rule(monkeypatch):
    """auto: bf16 on CUDA from compute capability 8.0 (test_cluster_plumbing.py has the rest); on CPU only with
    bf16 arithmetic, from CPU_BF16_MIN_WIDTH up; off and bf16 as
    asked. The run's log line says which, and why."""
    import contextlib

    import fcn.precision as p

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    demo, paper = RunConfig(), RunConfig(width=1.0)
    monkeypatch.setattr(p, "cpu_bf16_arithmetic", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))  # an Ampere GPU
    assert p.amp_dtype(paper, cpu) == torch.bfloat16 and p.amp_dtype(demo, cuda) == torch.bfloat16
    assert (p.amp_dtype(demo, cpu) == torch.bfloat16) == (demo.width >= p.CPU_BF16_MIN_WIDTH)
    assert p.amp_dtype(paper.replace(amp="off"), cpu) is None and p.amp_dtype(demo.replace(amp="off"), cuda) is None
    assert isinstance(p.autocast(paper, cpu), torch.autocast) and p.autocast(paper, cpu).fast_dtype == torch.bfloat16
    assert p.describe(paper, cpu).startswith("bf16 autocast (amp auto: CPU with bf16 arithmetic")
    monkeypatch.setattr(p, "cpu_bf16_arithmetic", lambda: False)  # no bf16 units: emulated bf16 is slower
    assert p.amp_dtype(paper, cpu) is None and p.amp_dtype(paper, cuda) == torch.bfloat16
    assert isinstance(p.autocast(paper, cpu), contextlib.nullcontext)
    assert p.describe(paper, cpu) == "fp32 (amp auto: this CPU has no bf16 arithmetic)"
    assert p.amp_dtype(paper.replace(amp="bf16"), cpu) == torch.bfloat16  # asked for: given, emulated or not


@pytest.mark.parametrize(
    "flags,want",
    [("fpu avx512f avx512_bf16 avx2", True), ("fpu amx_bf16 amx_tile", True), ("fpu avx512f avx512bw avx2", False)],
)
def test_cpu_bf16_arithmetic_reads_cpuinfo_where_torch_has_no_check(monkeypatch, flags, want):
    import fcn.precision as p

    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.setattr(p, "Path", lambda _: type("F", (), {"read_text": lambda self: f"flags\t\t: {flags}\n"})())
    assert p.cpu_bf16_arithmetic() is want
