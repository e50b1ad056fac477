"""fcn/checkpoint.py's schema: what last.pt and best.pt hold, one version number, older files still read, and which
config fields a resume may change (RunConfig's `resume` metadata)."""

from __future__ import annotations

import pytest
import torch


def _model_and_opt():
    from fcn.models import FCN

    torch.manual_seed(0)
    model = FCN(3, 0.125, n_tags=4)
    return model, torch.optim.Adam(model.parameters())


def test_last_round_trips_and_an_older_unversioned_file_still_loads(tmp_path):
    from fcn import checkpoint
    from fcn.checkpoint import Progress
    from fcn.config import RunConfig

    model, opt = _model_and_opt()
    config = RunConfig(depth=3)
    rngs = [checkpoint.encode_rng(checkpoint.rng_state(torch.device("cpu")))]
    progress = Progress(epoch=2, best=0.7, best_epoch=1, bad=1, history=[{"epoch": 1}, {"epoch": 2}], global_batch=32)
    checkpoint.save(checkpoint.last(model, opt, rngs, progress, config, "abc"), tmp_path / "last.pt")
    got = checkpoint.load_last(tmp_path / "last.pt")
    assert set(got) == set(checkpoint.Last.__annotations__) and got["run_id"] == "abc"
    assert Progress.from_dict(got["progress"], Progress()) == progress
    assert all(torch.equal(got["model"][k], v) for k, v in model.state_dict().items())

    # a checkpoint from before the wrapper and the version: a plain torch.save of the same keys, no run_id, and a
    # progress without the global batch (added later): it loads, and the missing keys take the resume's defaults
    old = dict(
        model=model.state_dict(),
        optimizer=opt.state_dict(),
        rng=[],
        config=config.to_dict(),
        progress=dict(epoch=2, best=0.7, best_epoch=1, bad=1, train_time=3.0, history=[]),
    )
    torch.save(old, tmp_path / "old.pt")
    got = checkpoint.load_last(tmp_path / "old.pt")
    assert got is not None and "run_id" not in got
    p = Progress.from_dict(got["progress"], Progress(global_batch=16, world=2))
    assert (p.epoch, p.global_batch, p.world) == (2, 16, 2)


def test_a_newer_version_is_refused_in_one_line_and_the_previous_generation_used(tmp_path, monkeypatch):
    from fcn import checkpoint
    from fcn.config import RunConfig
    from fcn.frontends import FrontEndParams

    model, _ = _model_and_opt()
    path = tmp_path / "best.pt"

    meta = {"tags": ["a", "b", "c", "d"], "frontend": FrontEndParams()}
    b = checkpoint.best(model, RunConfig(depth=3), epoch=1, meta=meta, norm=(0.0, 1.0), valid_roc_auc=0.6, run_id=None)
    checkpoint.save(b, path)  # becomes best.prev.pt below
    monkeypatch.setattr(checkpoint, "CHECKPOINT_VERSION", checkpoint.CHECKPOINT_VERSION + 1)
    checkpoint.save(dict(b, epoch=2), path)  # written by a "newer" fcn
    monkeypatch.undo()
    with pytest.raises(checkpoint.CheckpointError, match="newer than this fcn reads"):
        checkpoint.read_best(path)
    said = []
    got = checkpoint.load_best(path, warn=said.append)
    assert got["epoch"] == 1 and len(said) == 1 and "previous checkpoint best.prev.pt" in said[0]
    assert "fallback" not in got  # only a best.pt of the last epoch (no validation ROC-AUC at all) says so


def test_a_resume_may_change_where_and_how_fast_not_what():
    from fcn.checkpoint import config_changes
    from fcn.config import RunConfig

    saved = RunConfig().to_dict()
    where = RunConfig(
        device="cpu",
        out_dir="elsewhere",
        tracking_uri="http://h:5000",
        threads=3,
        num_workers=2,
        data_dir="d",
        store="s.h5",
        experiment="e",
        tags_db="t.db",
        audio_root="a",
        id_map="m.csv",
        recipe="r.json",
        parent_run_id="p",
        data_root="/x",
        splits_dir="/y",
        memory_format="contiguous",
    )
    assert config_changes(saved, where) == []
    assert config_changes(saved, RunConfig(lr=0.01, batch_size=8)) == ["batch_size=16→8", "lr=0.001→0.01"]
    assert config_changes(saved, RunConfig(train_fraction=0.5, amp="off")) == [
        "train_fraction=1.0→0.5",
        "amp='auto'→'off'",
    ]
    older = {k: v for k, v in saved.items() if k != "sync_bn"}  # a field added since counts as its default
    assert config_changes(older, RunConfig()) == [] and config_changes(older, RunConfig(sync_bn="off")) != []
