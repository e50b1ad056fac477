"""Training and evaluation batches from a feature store split: whole float16 batches (fcn.store.Batches) in an
order that is an exact function of (seed, epoch, rank), standardised on the device.

Where the batches come from is decided per split: held in RAM when it fits (fcn.store.memory_budget), gathered by
numpy indexing in the training process itself; otherwise read row by row from the HDF5 file, in config.num_workers
worker processes. Either way the sampler, and so every batch's clips and their order, is the same.
"""

from __future__ import annotations

import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

from fcn import dist
from fcn.config import RunConfig
from fcn.store import Batches, memory_budget


def make_loader(ds, config: RunConfig, d: dist.Dist, shuffle: bool, batch: int = 0):
    """Whole float16 batches of `ds` (fcn.store.Batches), standardised later on the device (`device_inputs`)."""
    # One sampler for every world size: the epoch's order depends only on (seed, epoch), so a resumed run sees
    # exactly the batches an uninterrupted one would.
    sampler = DistributedSampler(
        ds, num_replicas=d.world, rank=d.rank, shuffle=shuffle, seed=config.seed, drop_last=False
    )
    # Each of the node's training processes holds its own copy of the split, hence the budget's share.
    in_memory = ds.hold_in_memory(memory_budget(d.local_world))
    # A split held in memory is served without workers: gathering a batch is one memcpy-speed numpy copy, and a
    # worker would add a second copy into shared memory plus a pipe round trip per batch, on cores the training
    # process needs (bench/loading.py measures both). Workers would also need fork to share the array: spawn
    # (macOS, Windows) would pickle the whole split into each of them.
    workers = 0 if in_memory else config.num_workers
    cuda = d.device.type == "cuda"
    # On CUDA a held split's batches are gathered straight into pinned memory; DataLoader's pin_memory then passes
    # them through as they are (a pinned tensor is returned unchanged) and pins the per-row path's batches.
    return DataLoader(
        Batches(ds, pin=cuda and in_memory),
        batch_size=None,
        sampler=BatchSampler(sampler, batch or config.batch_size, drop_last=False),
        num_workers=workers,
        pin_memory=cuda,
        persistent_workers=workers > 0,
    )


def device_inputs(x: torch.Tensor, loader, fmt: torch.memory_format, d: dist.Dist) -> torch.Tensor:
    """A loader's float16 batch on the device, standardised there, in the model's memory format `fmt`."""
    x = loader.dataset.ds.standardise(x.to(d.device, non_blocking=True))
    return x.contiguous(memory_format=fmt)
