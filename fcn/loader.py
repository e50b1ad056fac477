"""Training and evaluation batches from a feature store split: whole float16 batches (fcn.store.Batches) in an
order that is an exact function of (seed, epoch, rank), standardised on the device."""
from __future__ import annotations

import torch

from fcn import dist
from fcn.config import RunConfig


def make_loader(ds, config: RunConfig, d: dist.Dist, shuffle: bool, batch: int = 0):
    """Whole float16 batches of `ds` (fcn.store.Batches), standardised later on the device (`device_inputs`)."""
    from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

    from fcn.store import Batches

    # One sampler for every world size: the epoch's order depends only on (seed, epoch), so a resumed run sees
    # exactly the batches an uninterrupted one would.
    sampler = DistributedSampler(ds, num_replicas=d.world, rank=d.rank, shuffle=shuffle, seed=config.seed,
                                 drop_last=False)
    return DataLoader(Batches(ds), batch_size=None,
                      sampler=BatchSampler(sampler, batch or config.batch_size, drop_last=False),
                      num_workers=config.num_workers, pin_memory=d.device.type == "cuda",
                      persistent_workers=config.num_workers > 0)


def device_inputs(x: torch.Tensor, loader, fmt: torch.memory_format, d: dist.Dist) -> torch.Tensor:
    """A loader's float16 batch on the device, standardised there, in the model's memory format `fmt`."""
    x = loader.dataset.ds.standardise(x.to(d.device, non_blocking=True))
    return x.contiguous(memory_format=fmt)
