"""fcn/batching.py: the global batch is the recipe on any number of processes; a process count that cannot train
it is refused in one line; an epoch without an optimiser step fails the cell instead of finishing it at chance AUC.
(Real gloo runs on 2 → 1 → 4 processes at one global batch: tests/test_gpu_ready_resume.py.)"""

from __future__ import annotations

import pytest

from fcn.batching import MIN_CLIPS_PER_PROCESS, RECIPE_BATCH, plan_batch
from fcn.errors import UserError


@pytest.mark.parametrize("world, share", [(1, 16), (2, 8), (4, 4), (8, 2)])
def test_the_recipes_global_batch_is_shared_among_processes(world, share):
    plan = plan_batch(RECIPE_BATCH, world, sync_bn_possible=False)
    assert (plan.global_batch, plan.per_process, plan.sync_bn) == (16, share, False)
    assert plan.per_process * plan.world == 16 and plan.min_step_clips == MIN_CLIPS_PER_PROCESS


def test_16_processes_train_one_clip_each_only_with_sync_batchnorm():
    plan = plan_batch(16, 16, sync_bn_possible=True)  # 16 GPUs: BatchNorm's statistics over all 16 clips
    assert (plan.per_process, plan.sync_bn, plan.min_step_clips) == (1, True, 1)
    assert "16 = 16 × 1, SyncBatchNorm" in plan.describe()
    with pytest.raises(UserError, match="1 clip per process, too few for BatchNorm.*at most 8 processes"):
        plan_batch(16, 16, sync_bn_possible=False)  # CPU (gloo), or --sync-bn off


def test_32_processes_are_refused_for_a_global_batch_of_16():
    for sync in (True, False):  # SyncBatchNorm or not: no process can train half a clip
        with pytest.raises(UserError, match="under one clip per process: use at most 16 processes") as e:
            plan_batch(16, 32, sync_bn_possible=sync)
        assert "\n" not in str(e.value)
        with pytest.raises(UserError, match="cannot be split evenly over 3 processes"):
            plan_batch(16, 3, sync_bn_possible=sync)


def test_a_run_whose_processes_get_one_clip_is_refused_before_training(tiny):
    from fcn.train import train

    with pytest.raises(UserError, match="1 clip per process, too few for BatchNorm"):
        train(tiny(batch_size=1, epochs=1))  # main skipped every batch of one: zero updates, a "finished" cell


def test_an_epoch_without_an_optimiser_step_fails_the_cell(tiny):
    from fcn import cell
    from fcn.train import train

    config = tiny(train_fraction=0.001, epochs=1)  # one training clip: its batch of one is skipped
    with pytest.raises(UserError, match="epoch 1 made no optimiser step"):
        train(config)
    assert not cell.is_finished(cell.run_dir(config))
