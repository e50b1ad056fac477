"""Train and evaluate one cell of the paper's grid: `train(config) -> metrics`.

    python -m fcn.train                                           # FCN-4 on mel, built-in synthetic MTAT, demo scale
    python -m fcn.train --dataset mtat --data-root /data/mtat --preset paper --depth 4 --input mel
    torchrun --nproc_per_node 2 -m fcn.train --depth 4            # DDP (gloo on CPU, NCCL on CUDA); srun works too

Reproduces Choi, Fazekas & Sandler 2016: FCN-3..7 on mel / STFT / MFCC, Adam + binary cross-entropy, early stopping
on validation macro ROC-AUC, test macro ROC-AUC of the best checkpoint. Rerunning the same command resumes from the
last epoch's checkpoint, or, if the cell is finished, prints its result again without training.

Read `train` first: set up → resume → epoch loop → test → publish, one helper each. `train_step` and `predict` are
the steps that ship (bench/ times `train_step` itself). What a checkpoint holds is fcn/checkpoint.py's; what a cell is
(key, run dir, lock, finished), fcn/cell.py's; the MLflow end of a run, fcn/tracker.py's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from fcn import cell, checkpoint, dist, tracker, tracking
from fcn import metrics as M
from fcn.batching import BatchPlan, plan_batch
from fcn.cell import run_dir
from fcn.checkpoint import Progress
from fcn.config import RunConfig, add_config_arguments, config_from_args
from fcn.errors import UserError, run_cli
from fcn.loader import device_inputs, make_loader
from fcn.malloc import keep_freed_memory
from fcn.models import FCN, n_params
from fcn.precision import apply_precision, autocast, channels_last, describe
from fcn.preprocess import ensure_feature_store
from fcn.run_store import check_buildable
from fcn.store import FeatureDataset, check_store

# [D] Below this many clips per process, batch statistics are too noisy per GPU: BatchNorm becomes SyncBatchNorm.
SYNC_BN_BELOW = 8


# --- the steps that ship ----------------------------------------------------------------------------------------------


def train_step(net, opt, x: torch.Tensor, y: torch.Tensor, config: RunConfig, device: torch.device) -> torch.Tensor:
    """One optimisation step: forward (autocast as config.amp says), binary cross-entropy on fp32 logits, backward
    (DDP all-reduces here), Adam. Returns the batch's mean loss, detached and left on the device: reading it here
    would stall a GPU every step."""
    with autocast(config, device):
        logits = net(x)
    loss = F.binary_cross_entropy_with_logits(logits.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


@torch.no_grad()
def predict(
    model, loader, config: RunConfig, d: dist.Dist, fmt: torch.memory_format
) -> tuple[np.ndarray, np.ndarray, float]:
    """(indices, sigmoid scores, mean BCE) over the whole split, gathered from every rank to every rank."""
    model.eval()
    idx, scores, n = [], [], 0
    loss_sum = torch.zeros((), dtype=torch.float64, device=d.device)  # summed on the device: no sync per batch
    for x, y, i in loader:
        x = device_inputs(x, loader, fmt, d)
        y = y.to(d.device)
        with autocast(config, d.device):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.binary_cross_entropy_with_logits(logits, y, reduction="sum").double() / y.shape[1]
        n += len(y)
        idx.append(i.numpy())
        scores.append(torch.sigmoid(logits).cpu().numpy())
    parts = dist.gather((np.concatenate(idx), np.concatenate(scores), float(loss_sum), n), d)
    all_idx = np.concatenate([p[0] for p in parts])
    all_scores = np.concatenate([p[1] for p in parts])
    # DistributedSampler pads the last round with repeats: keep each clip once, in dataset order
    uniq, first = np.unique(all_idx, return_index=True)
    return uniq, all_scores[first], sum(p[2] for p in parts) / max(1, sum(p[3] for p in parts))


# --- rules of a run over several processes ----------------------------------------------------------------------------


def sync_bn_possible(config: RunConfig, world: int, device: torch.device) -> bool:
    """Whether SyncBatchNorm can carry a per-process share too small for BatchNorm (fcn/batching.py)."""
    return world > 1 and device.type == "cuda" and config.sync_bn != "off"


def use_sync_bn(config: RunConfig, world: int, batch: int, device: torch.device) -> bool:
    """config.sync_bn: auto = SyncBatchNorm when world > 1, on CUDA, and the per-process batch < SYNC_BN_BELOW."""
    if config.sync_bn == "off" or world == 1:
        return False
    if device.type != "cuda":
        if config.sync_bn == "on":
            raise UserError("--sync-bn on needs CUDA (torch's SyncBatchNorm runs on GPUs only): use auto or off")
        return False
    return config.sync_bn == "on" or batch < SYNC_BN_BELOW


# --- the run ----------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One cell's training on this process: what the helpers below read and change."""

    config: RunConfig
    d: dist.Dist
    rdir: Path
    trial: str
    uri: str  # MLflow tracking URI
    store: Path  # the feature store
    meta: dict  # the store's tags and front end
    data: dict  # split name → FeatureDataset ("test" absent in a search trial)
    model: torch.nn.Module  # the bare model: checkpoints hold its weights
    opt: torch.optim.Optimizer
    fmt: torch.memory_format  # the model's and every batch's layout, decided once
    progress: Progress = field(default_factory=Progress)
    batch: int = 0  # training clips per process per step
    plan: BatchPlan | None = None  # how the global batch is shared among the processes (fcn/batching.py)
    net: torch.nn.Module | None = None  # what trains: the model, or DDP around it
    loaders: dict = field(default_factory=dict)
    tracker: Any = None
    run_id: str | None = None
    writer: checkpoint.Writer = field(default_factory=checkpoint.Writer)  # rank 0's checkpoints, in the background

    def log(self, msg: str) -> None:
        _log(self.d, self.rdir, msg)


def train(config: RunConfig, *, trial: str = "", on_epoch=None) -> dict:
    """Train one cell to its early-stopping point, evaluate the best checkpoint on the test split, return metrics.

    trial: a search trial's name (harness/search.py): its own run dir and MLflow run (`<key>-<trial>`), and the test
    split is never opened (a recipe is chosen on validation only); it returns the validation history instead.
    on_epoch(row): called after each epoch's checkpoint is on disk (a search reports to its scheduler there, which may
    stop the trial by raising out of it); on a resume, first once for each epoch the checkpoint already holds, so the
    caller sees every epoch even when the run had none left to train.
    """
    # credentials in the tracking URI move to MLflow's environment variables: the config (checkpoints, metrics.json,
    # MLflow params) never holds them
    config = tracking.without_credentials(config)
    d = dist.setup(config.device)
    run = None
    try:
        rdir = _claim(config, d, trial)
        done = _finished(rdir, config, d)
        if done is not None:
            _log(d, rdir, f"{config.key} is finished (test ROC-AUC {done['test_roc_auc']:.4f}); nothing to do")
            return done
        run = _set_up(config, d, rdir, trial)
        resumed = _resume(run)
        _start(run, resumed)
        if resumed and on_epoch is not None:  # the caller sees every epoch, the checkpoint's first
            for row in run.progress.history:
                on_epoch(row)
        for epoch in range(run.progress.epoch, config.epochs):
            if run.progress.bad >= config.patience:
                break
            row = _epoch(run, epoch)
            if on_epoch is not None:
                run.writer.wait()  # on_epoch's promise: the epoch's checkpoint is on disk
                on_epoch(row)
        run.writer.wait()  # the last epoch's files whole (and a failed write's one line) before the test reads them
        if trial:  # the search's caller ends the trial's MLflow run, with why it stopped
            return _trial_result(run)
        result, files = _test(run)
        _publish(run, result, files)
        return result
    finally:
        if run is not None:
            run.writer.close()  # an error elsewhere: the epoch in flight still lands, so a rerun resumes after it
        if run is not None and run.tracker is not None:
            run.tracker.close()  # MLflow's queued calls written (fcn.tracker.Tracker logs in the background)
        dist.cleanup()
        while _LOCKS:
            _LOCKS.pop().close()


# --- set up -----------------------------------------------------------------------------------------------------------

_LOCKS: list = []  # the cell lock's open file, closed when train() returns


def _claim(config: RunConfig, d: dist.Dist, trial: str) -> Path:
    """This process's threads and allocator; the cell's run dir, made and locked (rank 0 holds the lock)."""
    if d.world > 1:  # which host each rank runs on (a multi-node job's log shows the spread)
        print(
            f"rank {d.rank}/{d.world} on host {socket.gethostname()} ({d.device}), master "
            f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}",
            file=sys.stderr,
            flush=True,
        )
    threads = (
        config.threads
        or int(os.environ.get("SLURM_CPUS_PER_TASK", 0))
        or max(1, (os.cpu_count() or 1) // d.local_world)
    )
    torch.set_num_threads(threads)
    if d.device.type == "cpu":
        keep_freed_memory()  # fcn/malloc.py: the step stops re-faulting its activations
    rdir = run_dir(config, trial)
    if d.main:
        (rdir / "ckpt").mkdir(parents=True, exist_ok=True)
    dist.barrier(d)
    if d.main:
        _LOCKS.append(cell.acquire_lock(rdir))  # held until train() returns or the process dies
    return rdir


def _finished(rdir: Path, config: RunConfig, d: dist.Dist) -> dict | None:
    """A finished cell's metrics (re-synced to MLflow if the server missed the end), or None."""
    result = cell.finished_metrics(rdir)
    if result is not None and d.main:
        tracker.sync_finished(result, rdir, config)
    return result


def _set_up(config: RunConfig, d: dist.Dist, rdir: Path, trial: str) -> Run:
    """The tracking server checked, the feature store (built if missing), the splits, a fresh model and optimiser."""
    uri = tracking.resolve_uri(config.tracking_uri, config.out_dir)
    if d.main:
        tracking.check_reachable(uri)
    # Global rank 0 alone builds a missing store; the others wait for its finished file (not in a collective
    # barrier, which would time out during a paper-scale MSD build; not on the file lock alone, which some
    # shared file systems keep per node).
    check_buildable(config)  # every rank: a missing store that must not be built in this job ends all of them
    store = ensure_feature_store(config, progress=d.main, build_here=d.main)
    dist.barrier(d)
    meta = check_store(store, input=config.input, params=config.frontend, dataset=config.dataset)
    torch.manual_seed(config.seed)  # identical initial weights on every rank
    np.random.seed(config.seed)
    random.seed(config.seed)
    data = _splits(config, store, trial)
    model = FCN(config.depth, config.width, n_tags=len(meta["tags"]), **config.model_options).to(d.device)
    # the layout is decided once: the model's parameters and every input batch share it
    fmt = torch.channels_last if channels_last(config, d.device) else torch.contiguous_format
    model = model.to(memory_format=fmt)
    apply_precision(config, d.device)  # --amp off on CUDA: TF32 off too, full fp32 as the paper trained
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    return Run(
        config=config,
        d=d,
        rdir=rdir,
        trial=trial,
        uri=uri,
        store=store,
        meta=meta,
        data=data,
        model=model,
        opt=opt,
        fmt=fmt,
    )


def _splits(config: RunConfig, store: Path, trial: str) -> dict:
    data = {
        "train": FeatureDataset(store, config.input, "train", fraction=config.train_fraction, seed=config.seed),
        "valid": FeatureDataset(store, config.input, "valid"),
    }
    if not trial:  # a search trial never opens the test split
        data["test"] = FeatureDataset(store, config.input, "test")
    for name, ds in data.items():
        if len(ds) == 0:
            raise UserError(f"the {name} split of {store} is empty: check the split lists of the data set")
    return data


# --- resume -----------------------------------------------------------------------------------------------------------


def _resume(run: Run) -> bool:
    """Continue from the newest usable last.pt, if any (weights, optimiser, this rank's RNG, progress, MLflow run);
    the run's global batch is kept whatever the process count now. True when there was one."""
    c, d = run.config, run.d
    # the newest usable generation (one line if it falls back, a warning if none is usable: start from scratch)
    state = checkpoint.load_last(cell.ckpt(run.rdir, cell.LAST), warn=run.log)
    # config.batch_size is the global batch (fcn/batching.py): the same recipe on any number of processes
    run.progress = Progress(global_batch=c.batch_size, world=d.world)
    if state is not None:
        changed = checkpoint.config_changes(state["config"], c)
        if changed:
            raise UserError(
                f"{run.rdir} holds a checkpoint of another configuration ({', '.join(changed)}); "
                f"use another --out-dir or --experiment, or delete {run.rdir}"
            )
        run.model.load_state_dict(state["model"])
        run.opt.load_state_dict(state["optimizer"])
        checkpoint.set_rng_state(state["rng"][min(d.rank, len(state["rng"]) - 1)], d.device)
        run.progress = Progress.from_dict(state["progress"], defaults=run.progress)
        run.run_id = state.get("run_id")
    p = run.progress
    # the checkpoint's global batch is kept (one made before batch_size became global recorded batch_size × processes)
    run.plan = plan_batch(p.global_batch, d.world, sync_bn_possible(c, d.world, d.device))
    run.batch = run.plan.per_process
    if p.world != d.world:
        run.log(
            f"{c.key}: resuming on {d.world} process(es), the checkpoint was made on {p.world}: global batch "
            f"{p.global_batch} kept, {run.batch} clips per process"
        )
        p.world = d.world
    return state is not None


def _start(run: Run, resumed: bool) -> None:
    """The cell's MLflow run (continued, or its first), DDP around the model, the loaders, and one line of where."""
    c, d = run.config, run.d
    run.tracker = tracker.Tracker(run.uri, c.experiment, c.out_dir, enabled=d.main)
    tags = {"run_dir": str(run.rdir.resolve())}
    if c.parent_run_id:
        tags["mlflow.parentRunId"] = c.parent_run_id
    # the global batch is a param of its own: it identifies the result (harness/tables never pool two of them), and
    # on a run resumed from a checkpoint made before batch_size became global it differs from batch_size
    params = {**c.to_dict(), "key": run.rdir.name, "global_batch": run.progress.global_batch}
    run.run_id = run.tracker.start(run.rdir.name, params, tags, run_id=run.run_id)
    if d.main and not resumed:
        run.tracker.metrics({"n_params": n_params(run.model)})
    if d.main and resumed:  # epochs the checkpoint holds but MLflow missed (their queued calls died with a process)
        tracker.log_missing_epochs(run.tracker, run.progress.history)
    run.net = run.model
    if run.plan.sync_bn or use_sync_bn(c, d.world, run.batch, d.device):
        run.net = run.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(run.model)
    if d.world > 1:
        run.net = torch.nn.parallel.DistributedDataParallel(
            run.model, device_ids=[d.device.index] if d.device.type == "cuda" else None
        )
    run.loaders = {
        name: make_loader(ds, c, d, shuffle=name == "train", batch=run.batch if name == "train" else 0)
        for name, ds in run.data.items()
    }
    host = socket.gethostname()  # where the cell (rank 0) runs: after a requeue, possibly another node
    p = run.progress
    if resumed:
        run.log(
            f"{c.key}: resuming after epoch {p.epoch} (best valid ROC-AUC {p.best:.4f} at epoch "
            f"{p.best_epoch}) on host {host}"
        )
    else:
        n = {k: len(ds) for k, ds in run.data.items()}
        run.log(
            f"{c.key}: {n_params(run.model):,} parameters, {n['train']}/{n['valid']}/{n.get('test', '-')} "
            f"clips, {d.world} process(es) on {d.device} on host {host}, {run.plan.describe()}, "
            f"{describe(c, d.device)}, store {run.store}; splits held: "
            + ", ".join(f"{k} {ds.held}" for k, ds in run.data.items())
        )


# --- the epoch loop ---------------------------------------------------------------------------------------------------


def _epoch(run: Run, epoch: int) -> dict:
    """Train one epoch, validate, keep the best, checkpoint, log; returns the epoch's history row."""
    c, p = run.config, run.progress
    t0 = time.time()
    train_loss = _train_epoch(run, epoch)
    vi, vs, vloss = predict(run.net, run.loaders["valid"], c, run.d, run.fmt)
    valid = M.macro(run.data["valid"].labels[vi], vs)
    improved = valid["roc_auc"] > p.best
    p.train_time += time.time() - t0
    p.epoch = epoch + 1
    if improved:
        p.best, p.best_epoch, p.bad = valid["roc_auc"], epoch + 1, 0
    else:
        p.bad += 1
    row = dict(
        epoch=epoch + 1,
        train_loss=train_loss,
        valid_loss=vloss,
        valid_roc_auc=valid["roc_auc"],
        valid_pr_auc=valid["pr_auc"],
        epoch_time_s=time.time() - t0,
    )
    p.history.append(row)
    line = (
        f"{c.key} epoch {epoch + 1}: train loss {train_loss:.4f}, valid loss {vloss:.4f}, valid ROC-AUC "
        f"{valid['roc_auc']:.4f} (best {p.best:.4f} at epoch {p.best_epoch}), {row['epoch_time_s']:.1f} s"
    )
    _checkpoint(run, row, improved, line)
    dist.barrier(run.d)  # every rank leaves the epoch together (rank 0's files are being written meanwhile)
    return row


def _train_epoch(run: Run, epoch: int) -> float:
    """One pass over this rank's share of the training split; the mean loss over all ranks."""
    c, d, dl = run.config, run.d, run.loaders["train"]
    dl.sampler.sampler.set_epoch(epoch)  # the BatchSampler's DistributedSampler
    run.net.train()
    # summed on the device and read once per epoch: a .item() per step would stall the GPU every step
    loss_sum, n, steps = torch.zeros((), dtype=torch.float64, device=d.device), 0, 0
    bar = tqdm(
        dl,
        desc=f"{c.key} epoch {epoch + 1}/{c.epochs}",
        leave=False,
        disable=not d.main or not sys.stderr.isatty(),
        unit="batch",
        file=sys.stderr,
    )
    for x, y, _ in bar:
        if len(y) < run.plan.min_step_clips:
            # A last batch of one clip can't be batch-normalised (fcn/batching.py); every rank has the same batch
            # sizes (DistributedSampler pads), so all ranks skip it together and DDP stays in step.
            continue
        x = device_inputs(x, dl, run.fmt, d)
        y = y.to(d.device, non_blocking=True)
        loss = train_step(run.net, run.opt, x, y, c, d.device)
        loss_sum += loss.double() * len(y)
        n += len(y)
        steps += 1
        if not bar.disable and bar.n % 50 == 0:  # a terminal's bar: one sync every 50 steps
            bar.set_postfix(loss=f"{float(loss_sum) / n:.4f}")
    if steps == 0:
        # every rank skipped every batch (the same sizes on all ranks): an epoch that changed no weight would
        # still be checkpointed, tested and published as a finished cell at chance AUC
        raise UserError(
            f"{c.key}: epoch {epoch + 1} made no optimiser step ({len(run.data['train'])} training clips, "
            f"{run.plan.describe()}, batches under {run.plan.min_step_clips} clips skipped): use more training "
            "clips or a process count that leaves at least 2 clips per process"
        )
    return sum(dist.gather(float(loss_sum), d)) / max(1, sum(dist.gather(n, d)))


def _checkpoint(run: Run, row: dict, improved: bool, line: str) -> None:
    """best.pt when validation improved, last.pt always (rank 0 writes, in the background: checkpoint.Writer says
    why; every rank gives its RNG state); once they are on disk, the epoch's log line and its metrics to MLflow."""
    rngs = dist.gather(checkpoint.rng_state(run.d.device), run.d)  # a collective: every rank, before rank 0 alone
    if not run.d.main:
        return
    files = [(checkpoint.last(run.model, run.opt, rngs, run.progress, run.config, run.run_id), cell.LAST)]
    if improved:
        files.insert(0, (_best(run, row["epoch"], row["valid_roc_auc"]), cell.BEST))

    def logged() -> None:
        run.log(line)
        run.tracker.metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])

    run.writer.submit([(state, cell.ckpt(run.rdir, name)) for state, name in files], then=logged)


def _best(run: Run, epoch: int, valid_roc_auc: float, fallback: str = "") -> checkpoint.Best:
    train = run.data["train"]
    return checkpoint.best(
        run.model,
        run.config,
        epoch=epoch,
        meta=run.meta,
        norm=(train.mean, train.std),
        valid_roc_auc=valid_roc_auc,
        run_id=run.run_id,
        fallback=fallback,
    )


def _trial_result(run: Run) -> dict:
    p = run.progress
    return dict(
        key=run.rdir.name,
        run_id=run.run_id,
        best_epoch=p.best_epoch,
        best_valid_roc_auc=p.best,
        epochs_run=p.epoch,
        early_stopped=p.bad >= run.config.patience,
        train_time_s=p.train_time,
        history=p.history,
        run_dir=str(run.rdir.resolve()),
        config=run.config.to_dict(),
    )


# --- test -------------------------------------------------------------------------------------------------------------


def _test(run: Run) -> tuple[dict, dict]:
    """The test split scored once, with the best checkpoint's weights (early stopping on validation ROC-AUC):
    the result (metrics.json) and what the result files hold."""
    c, d, p = run.config, run.d, run.progress
    _load_best(run)
    ti, ts, tloss = predict(run.net, run.loaders["test"], c, d, run.fmt)
    test_ds = run.data["test"]
    y = test_ds.labels[ti].astype(np.uint8)
    roc, pr = M.per_tag(y, ts)  # once: the macro figures and per_tag_auc.csv both come from it
    test = M.summarise(roc, pr)
    result = dict(
        key=c.key,
        run_id=run.run_id,
        test_roc_auc=test["roc_auc"],
        test_pr_auc=test["pr_auc"],
        test_loss=tloss,
        tags_evaluated=test["tags_evaluated"],
        best_epoch=p.best_epoch,
        best_valid_roc_auc=p.best,
        epochs_run=p.epoch,
        train_time_s=p.train_time,
        n_params=n_params(run.model),
        world_size=d.world,
        global_batch=p.global_batch,
        batch_per_process=run.batch,
        run_dir=str(run.rdir.resolve()),
        config=c.to_dict(),
    )
    files = dict(roc=roc, pr=pr, clip_id=np.asarray(test_ds.clip_ids[ti]).astype(str), y_true=y, y_score=ts)
    return result, files


def _load_best(run: Run) -> None:
    """The best epoch's weights into the model; with no best epoch at all, the last epoch's, kept as best.pt."""
    c, d, p = run.config, run.d, run.progress
    best = checkpoint.load_best(cell.ckpt(run.rdir, cell.BEST), warn=run.log)
    dist.barrier(d)  # every rank has looked for best.pt before rank 0 may write the fallback below
    if best is None and p.best_epoch > 0:
        raise UserError(
            f"{run.rdir / 'ckpt'} holds no usable best.pt; delete {run.rdir / 'ckpt'} and rerun to train {c.key} again"
        )
    if best is not None:
        run.model.load_state_dict(best["model"])
        return
    # No epoch improved on -1: validation ROC-AUC was NaN every epoch (no validation tag had both a positive and a
    # negative clip). Defined fallback: the last epoch's weights are the model that is tested and kept.
    run.log(
        f"{c.key}: validation ROC-AUC was undefined (NaN) in all {p.epoch} epochs, so there is no best epoch: "
        f"testing the last epoch's weights (epoch {p.epoch}); check that the validation split has positive and "
        "negative clips for some tag"
    )
    p.best, p.best_epoch = float("nan"), p.epoch
    if d.main:
        checkpoint.save(_best(run, p.epoch, float("nan"), fallback="last epoch"), cell.ckpt(run.rdir, cell.BEST))


# --- publish ----------------------------------------------------------------------------------------------------------


def _publish(run: Run, result: dict, files: dict) -> None:
    """Rank 0 writes the result files, metrics.json last (its presence means the cell is finished), then logs the
    end to MLflow."""
    # The last collective: after it rank 0 writes the results and talks to MLflow alone, so a dead server or a
    # failure there never leaves the other ranks waiting in a barrier until the process-group timeout.
    dist.barrier(run.d)
    if not run.d.main:
        return
    rdir, tags = run.rdir, run.meta["tags"]
    with open(rdir / "per_tag_auc.csv", "w") as f:
        f.write("tag,roc_auc,pr_auc\n")
        for tag, r, p in zip(tags, files["roc"], files["pr"]):
            f.write(f"{tag},{r:.6f},{p:.6f}\n")
    np.savez_compressed(
        rdir / "test_predictions.npz",
        clip_id=files["clip_id"],
        y_true=files["y_true"],
        y_score=files["y_score"].astype(np.float32),
        tags=np.array(tags),
    )
    tmp = rdir / (cell.METRICS + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, rdir / cell.METRICS)  # written last: its presence means the cell is finished
    tracker.log_final(run.tracker, result, rdir)
    run.log(
        f"{run.config.key}: test ROC-AUC {result['test_roc_auc']:.4f}, PR-AUC {result['test_pr_auc']:.4f} "
        f"(best epoch {result['best_epoch']})"
    )


def _log(d: dist.Dist, rdir: Path, msg: str) -> None:
    if d.main:
        print(msg, file=sys.stderr, flush=True)
        try:
            with open(rdir / cell.LOG, "a") as f:
                f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + msg + "\n")
        except OSError:
            pass  # a full disk: the line is on stderr; the checkpoint write right after says what is wrong


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m fcn.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_arguments(ap)
    config = config_from_args(ap.parse_args(argv))
    result = train(config)
    if int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) or 0) == 0:
        print(json.dumps({k: v for k, v in result.items() if k != "config"}), flush=True)


if __name__ == "__main__":
    run_cli(main)
