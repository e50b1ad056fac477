"""fcn.store and the training loader: whole float16 batches are exactly the per-clip standardised items, batched;
the layout fcn.train picks."""
import torch

from fcn.config import RunConfig
from tests.conftest import TINY


def test_batches_equal_per_clip_items_in_the_same_order(data_dir):
    from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

    from fcn.dist import Dist
    from fcn.run_store import store_path
    from fcn.store import FeatureDataset
    from fcn.loader import device_inputs as _inputs, make_loader as _loader

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
