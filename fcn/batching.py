"""The global batch is the recipe: how it is shared among a run's processes, and when a process count cannot train it.

A run's `batch_size` is its GLOBAL batch: the clips of one optimiser step over all processes (the paper's recipe: 16
[U: as in Won et al. 2020]). Each of `world` processes trains on `global / world` of them per step, so the same cell
trains with the same recipe on 1, 2, 4 or 16 GPUs, and a result's global batch is part of what identifies it (the
cell key gets `-b<G>` when it is not the recipe's 16: fcn/cell.py; the tables never pool two global batches).

Pure and torch-free: `python -m harness.grid --plan` asks it on a login node before anything is submitted, and
fcn.train asks it again in every process before its first step.
"""

from __future__ import annotations

from dataclasses import dataclass

from fcn.errors import UserError

# [U] the paper gives no batch size; Won et al. 2020 trained with 16. The recipe's global batch: cell keys carry no
# batch suffix at this value (fcn/cell.py), so every key made before the batch became global stays what it was.
RECIPE_BATCH = 16

# [D] BatchNorm in training mode normalises each channel over the clips of the process's batch (and positions): the
# 1×1 blocks of FCN-6/7 see one value per channel per clip, so one clip gives no statistic at all (torch raises), and
# every other block's statistic would come from one clip. A process therefore trains on at least 2 clips per step,
# unless SyncBatchNorm computes the statistics over every process's clips (CUDA only in torch).
MIN_CLIPS_PER_PROCESS = 2


@dataclass(frozen=True)
class BatchPlan:
    """How one global batch is trained by `world` processes."""

    global_batch: int
    world: int
    per_process: int  # clips per process per optimiser step
    sync_bn: bool  # the per-process share is too small for BatchNorm alone: statistics over all processes

    @property
    def min_step_clips(self) -> int:
        """The fewest clips a process's batch may hold and still be trained (a smaller last batch is skipped, by
        every rank at once since DistributedSampler gives every rank the same batch sizes)."""
        return 1 if self.sync_bn else MIN_CLIPS_PER_PROCESS

    def describe(self) -> str:
        bn = ", SyncBatchNorm" if self.sync_bn else ""
        return f"global batch {self.global_batch} = {self.world} × {self.per_process}{bn}"


def plan_batch(global_batch: int, world: int, sync_bn_possible: bool) -> BatchPlan:
    """The per-process share of `global_batch` over `world` processes, or a UserError (one line) when that process
    count cannot train the recipe. sync_bn_possible: SyncBatchNorm can run (CUDA, and --sync-bn not off).

    Gradient accumulation is no way out here: it makes a step's batch larger than what a process holds at once,
    never a process's BatchNorm batch larger than its share of a fixed global batch."""
    if global_batch < 1 or world < 1:
        raise UserError(f"global batch {global_batch} over {world} processes: both must be at least 1")
    if world > global_batch:
        raise UserError(
            f"a global batch of {global_batch} clips over {world} processes is under one clip per process: use at "
            f"most {global_batch} processes, or a larger --batch-size (a different recipe)"
        )
    if global_batch % world:
        raise UserError(
            f"a global batch of {global_batch} clips cannot be split evenly over {world} processes: use a process "
            f"count that divides {global_batch}"
        )
    share = global_batch // world
    if share >= MIN_CLIPS_PER_PROCESS:
        return BatchPlan(global_batch, world, share, sync_bn=False)
    if sync_bn_possible:
        return BatchPlan(global_batch, world, share, sync_bn=True)
    raise UserError(
        f"a global batch of {global_batch} clips over {world} processes leaves {share} clip per process, too few "
        f"for BatchNorm without SyncBatchNorm (CUDA, --sync-bn auto or on): use at most "
        f"{global_batch // MIN_CLIPS_PER_PROCESS} processes"
    )
