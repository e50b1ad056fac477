"""Train and evaluate one cell of the paper's grid: `train(config) -> metrics`.

    python -m fcn.train                                           # FCN-4 on mel, built-in synthetic MTAT, demo scale
    python -m fcn.train --dataset mtat --data-root /data/mtat --preset paper --depth 4 --input mel
    torchrun --nproc_per_node 2 -m fcn.train --depth 4            # DDP (gloo on CPU, NCCL on CUDA); srun works too

Reproduces Choi, Fazekas & Sandler 2016: FCN-3..7 on mel / STFT / MFCC, Adam + binary cross-entropy, early stopping
on validation macro ROC-AUC, test macro ROC-AUC of the best checkpoint. Rerunning the same command resumes from the
last epoch's checkpoint, or, if the cell is finished, prints its result again without training.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fcn import cell, checkpoint, dist, metrics as M
from fcn.cell import run_dir
from fcn.config import RunConfig, add_config_arguments, config_from_args
from fcn.errors import UserError, run_cli
from fcn.loader import device_inputs, make_loader
from fcn.malloc import keep_freed_memory
from fcn.models import FCN, n_params
from fcn.precision import autocast, channels_last

# Fields that say where or how fast a run goes, not what it computes: they may change between a run and its resume.
RUNTIME_FIELDS = {"device", "memory_format", "num_workers", "threads", "out_dir", "tracking_uri", "parent_run_id",
                  "data_dir", "store", "experiment", "data_root", "splits_dir",
                  "tags_db", "audio_root", "id_map", "recipe"}


def _log(d: dist.Dist, rdir: Path, msg: str) -> None:
    if d.main:
        print(msg, file=sys.stderr, flush=True)
        try:
            with open(rdir / "train.log", "a") as f:
                f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + msg + "\n")
        except OSError:
            pass  # a full disk: the line is on stderr; the checkpoint write right after says what is wrong


def _rng_state(device: torch.device) -> dict:
    """This rank's RNG states. CUDA: only its own device's generator (one per rank, gathered by rank 0), so a
    checkpoint resumes with any number of visible GPUs; all devices' states would not fit a machine with fewer."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _set_rng_state(s: dict, device: torch.device) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    cuda = s.get("cuda")
    if cuda is None or device.type != "cuda":
        return
    if isinstance(cuda, (list, tuple)):  # an older checkpoint: every device's state; take this rank's, if there
        cuda = cuda[device.index] if device.index < len(cuda) else None
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


def per_process_batch(global_batch: int, world: int) -> int:
    """The training batch of each process, so that `world` processes keep the run's global batch. A run's global
    batch is fixed when it starts (batch_size × processes) and kept on resume with another process count."""
    if global_batch % world:
        raise UserError(f"this run's global batch of {global_batch} clips cannot be split over {world} processes: "
                        f"resume it on a process count that divides {global_batch}")
    return global_batch // world


# [D] Below this many clips per process, batch statistics are too noisy per GPU: BatchNorm becomes SyncBatchNorm.
SYNC_BN_BELOW = 8


def use_sync_bn(config: RunConfig, world: int, batch: int, device: torch.device) -> bool:
    """config.sync_bn: auto = SyncBatchNorm when world > 1, on CUDA, and the per-process batch < SYNC_BN_BELOW."""
    if config.sync_bn == "off" or world == 1:
        return False
    if device.type != "cuda":
        if config.sync_bn == "on":
            raise UserError("--sync-bn on needs CUDA (torch's SyncBatchNorm runs on GPUs only): use auto or off")
        return False
    return config.sync_bn == "on" or batch < SYNC_BN_BELOW


@torch.no_grad()
def predict(model, loader, config: RunConfig, d: dist.Dist,
            fmt: torch.memory_format) -> tuple[np.ndarray, np.ndarray, float]:
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


def _finished(rdir: Path, config: RunConfig, d: dist.Dist) -> dict | None:
    """A finished cell's metrics (re-synced to MLflow if the server missed the end), or None."""
    result = cell.finished_metrics(rdir)
    if result is None:
        return None
    if d.main:
        sync_finished(result, rdir, config)
    return result


def sync_finished(result: dict, rdir: Path, config: RunConfig) -> None:
    from fcn import tracking

    uri = tracking.resolve_uri(config.tracking_uri, config.out_dir)
    try:
        c = tracking.client(uri)
        run = c.get_run(result["run_id"]) if result.get("run_id") else None
    except Exception:  # noqa: BLE001 - the server is down: metrics.json is the truth; nothing to do now
        return
    if run is not None and not cell.run_is_finished(run):
        t = tracking.Tracker(uri, config.experiment, config.out_dir)
        t.run_id = run.info.run_id
        _log_history(t, rdir)
        _log_final(t, result, rdir)


def _log_history(t, rdir: Path) -> None:
    """Per-epoch metrics the server missed (it was down for part of the run), from the last checkpoint's history."""
    state = checkpoint.load(rdir / "ckpt" / "last.pt", ("progress",), warn=lambda msg: None)
    if state is None:
        return
    try:
        logged = {m.step for m in t.c.get_metric_history(t.run_id, "valid_roc_auc")}
    except Exception:  # noqa: BLE001 - nothing known: log all (the server is up, we were just told so)
        logged = set()
    for row in state["progress"].get("history", []):
        if row["epoch"] not in logged:
            t.metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])


def _log_final(t, result: dict, rdir: Path) -> None:
    t.metrics({k: result[k] for k in ("test_roc_auc", "test_pr_auc", "best_epoch", "best_valid_roc_auc",
                                      "train_time_s", "n_params") if k in result})
    for name in ("metrics.json", "per_tag_auc.csv", "test_predictions.npz"):
        if (rdir / name).exists():
            t.artifact(rdir / name)
    if (rdir / "ckpt" / "best.pt").exists():
        t.artifact(rdir / "ckpt" / "best.pt", "model")
    t.finish("FINISHED")


_LOCKS: list = []  # the cell lock's open file, closed when train() returns


def train(config: RunConfig, *, trial: str = "", on_epoch=None) -> dict:
    """Train one cell to its early-stopping point, evaluate the best checkpoint on the test split, return metrics.

    trial: a search trial's name (harness/search.py): its own run dir and MLflow run (`<key>-<trial>`), and the test
    split is never opened (a recipe is chosen on validation only); it returns the validation history instead.
    on_epoch(row): called after each epoch's checkpoint is on disk (a search reports to its scheduler there, which may
    stop the trial by raising out of it); on a resume, first once for each epoch the checkpoint already holds, so the
    caller sees every epoch even when the run had none left to train.
    """
    from fcn import tracking
    from fcn.run_store import ensure_store
    from fcn.store import FeatureDataset, check_store

    # credentials in the tracking URI move to MLflow's environment variables: the config (checkpoints, metrics.json,
    # MLflow params) never holds them
    config = tracking.without_credentials(config)
    d = dist.setup(config.device)
    try:
        if d.world > 1:  # which host each rank runs on (a multi-node job's log shows the spread)
            import socket

            print(f"rank {d.rank}/{d.world} on host {socket.gethostname()} ({d.device}), master "
                  f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}", file=sys.stderr, flush=True)
        threads = config.threads or int(os.environ.get("SLURM_CPUS_PER_TASK", 0)) or \
            max(1, (os.cpu_count() or 1) // d.local_world)
        torch.set_num_threads(threads)
        if d.device.type == "cpu":
            keep_freed_memory()  # fcn/malloc.py: the step stops re-faulting its activations
        rdir = run_dir(config, trial)
        if d.main:
            (rdir / "ckpt").mkdir(parents=True, exist_ok=True)
        dist.barrier(d)
        if d.main:
            _LOCKS.append(cell.acquire_lock(rdir))  # held until train() returns or the process dies
        done = _finished(rdir, config, d)
        if done is not None:
            _log(d, rdir, f"{config.key} is finished (test ROC-AUC {done['test_roc_auc']:.4f}); nothing to do")
            return done

        uri = tracking.resolve_uri(config.tracking_uri, config.out_dir)
        if d.main:
            tracking.check_reachable(uri)
        # Global rank 0 alone builds a missing store; the others wait for its finished file (not in a collective
        # barrier, which would time out during a paper-scale MSD build; not on the file lock alone, which some
        # shared file systems keep per node).
        store = ensure_store(config, progress=d.main, build_here=d.main)
        dist.barrier(d)
        meta = check_store(store, input=config.input, params=config.frontend, dataset=config.dataset)

        torch.manual_seed(config.seed)  # identical initial weights on every rank
        np.random.seed(config.seed)
        random.seed(config.seed)
        train_ds = FeatureDataset(store, config.input, "train", fraction=config.train_fraction, seed=config.seed)
        valid_ds = FeatureDataset(store, config.input, "valid")
        test_ds = None if trial else FeatureDataset(store, config.input, "test")
        for name, ds in (("train", train_ds), ("valid", valid_ds), ("test", test_ds)):
            if ds is not None and len(ds) == 0:
                raise UserError(f"the {name} split of {store} is empty: check the split lists of the data set")
        model = FCN(config.depth, config.width, n_tags=len(meta["tags"]), dropout=config.dropout).to(d.device)
        # the layout is decided once: the model's parameters and every input batch share it
        fmt = torch.channels_last if channels_last(config, d.device) else torch.contiguous_format
        model = model.to(memory_format=fmt)
        opt = torch.optim.Adam(model.parameters(), lr=config.lr)

        # the newest usable generation (one line if it falls back, a warning if none is usable: start from scratch)
        state = checkpoint.load(rdir / "ckpt" / "last.pt", ("model", "optimizer", "progress", "config", "rng"),
                                warn=lambda msg: _log(d, rdir, msg))
        if state is not None:
            # a field added since the checkpoint was made counts as its default
            saved = {k: state["config"].get(k, v) for k, v in RunConfig().to_dict().items()
                     if k not in RUNTIME_FIELDS}
            now = {k: v for k, v in config.to_dict().items() if k not in RUNTIME_FIELDS}
            if saved != now:
                diff = ", ".join(f"{k}={saved.get(k)!r}→{now.get(k)!r}" for k in now if saved.get(k) != now.get(k))
                raise UserError(f"{rdir} holds a checkpoint of another configuration ({diff}); "
                                f"use another --out-dir or --experiment, or delete {rdir}")
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            _set_rng_state(state["rng"][min(d.rank, len(state["rng"]) - 1)], d.device)
        progress = dict(epoch=0, best=-1.0, best_epoch=-1, bad=0, train_time=0.0, history=[],
                        global_batch=config.batch_size * d.world, world=d.world)
        if state is not None:
            progress.update(state["progress"])
        batch = per_process_batch(progress["global_batch"], d.world)
        if progress["world"] != d.world:
            _log(d, rdir, f"{config.key}: resuming on {d.world} process(es), the checkpoint was made on "
                          f"{progress['world']}: global batch {progress['global_batch']} kept, {batch} clips per "
                          f"process")
            progress["world"] = d.world

        tracker = tracking.Tracker(uri, config.experiment, config.out_dir, enabled=d.main)
        tags = {"run_dir": str(rdir.resolve())}
        if config.parent_run_id:
            tags["mlflow.parentRunId"] = config.parent_run_id
        run_id = tracker.start(rdir.name, {**config.to_dict(), "key": rdir.name}, tags,
                               run_id=state.get("run_id") if state else None)
        if d.main and state is None:
            tracker.metrics({"n_params": n_params(model)})

        net = model
        if use_sync_bn(config, d.world, batch, d.device):
            net = model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if d.world > 1:
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
        train_dl = make_loader(train_ds, config, d, shuffle=True, batch=batch)
        valid_dl = make_loader(valid_ds, config, d, shuffle=False)
        test_dl = None if trial else make_loader(test_ds, config, d, shuffle=False)
        import socket

        host = socket.gethostname()  # where the cell (rank 0) runs: after a requeue, possibly another node
        if state is not None:
            _log(d, rdir, f"{config.key}: resuming after epoch {progress['epoch']} (best valid ROC-AUC "
                          f"{progress['best']:.4f} at epoch {progress['best_epoch']}) on host {host}")
            for row in progress["history"] if on_epoch is not None else ():
                on_epoch(row)
        else:
            _log(d, rdir, f"{config.key}: {n_params(model):,} parameters, {len(train_ds)}/{len(valid_ds)}/"
                          f"{len(test_ds) if test_ds is not None else '-'} clips, {d.world} process(es) on {d.device} "
                          f"on host {host}, store {store}")

        from tqdm import tqdm

        for epoch in range(progress["epoch"], config.epochs):
            if progress["bad"] >= config.patience:
                break
            t0 = time.time()
            train_dl.sampler.sampler.set_epoch(epoch)  # the BatchSampler's DistributedSampler
            net.train()
            # summed on the device and read once per epoch: a .item() per step would stall the GPU every step
            loss_sum, n = torch.zeros((), dtype=torch.float64, device=d.device), 0
            bar = tqdm(train_dl, desc=f"{config.key} epoch {epoch + 1}/{config.epochs}", leave=False,
                       disable=not d.main or not sys.stderr.isatty(), unit="batch", file=sys.stderr)
            for x, y, _ in bar:
                if len(y) < 2:
                    # A last batch of one clip can't be batch-normalised; every rank has the same batch count
                    # (DistributedSampler pads), so all ranks skip it together and DDP stays in step.
                    continue
                x = device_inputs(x, train_dl, fmt, d)
                y = y.to(d.device, non_blocking=True)
                with autocast(config, d.device):
                    logits = net(x)
                loss = F.binary_cross_entropy_with_logits(logits.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.detach().double() * len(y)
                n += len(y)
                if not bar.disable and bar.n % 50 == 0:  # a terminal's bar: one sync every 50 steps
                    bar.set_postfix(loss=f"{float(loss_sum) / n:.4f}")
            train_loss = sum(dist.gather(float(loss_sum), d)) / max(1, sum(dist.gather(n, d)))
            vi, vs, vloss = predict(net, valid_dl, config, d, fmt)
            valid = M.macro(valid_ds.labels[vi], vs)
            improved = valid["roc_auc"] > progress["best"]
            progress["train_time"] += time.time() - t0
            progress["epoch"] = epoch + 1
            if improved:
                progress.update(best=valid["roc_auc"], best_epoch=epoch + 1, bad=0)
            else:
                progress["bad"] += 1
            row = dict(epoch=epoch + 1, train_loss=train_loss, valid_loss=vloss, valid_roc_auc=valid["roc_auc"],
                       valid_pr_auc=valid["pr_auc"], epoch_time_s=time.time() - t0)
            progress["history"].append(row)
            rngs = dist.gather(_rng_state(d.device), d)
            if d.main:
                if improved:
                    checkpoint.save({"model": model.state_dict(), "config": config.to_dict(), "epoch": epoch + 1,
                                     "tags": meta["tags"], "frontend": meta["frontend"].to_dict(),
                                     "norm": (train_ds.mean, train_ds.std),
                                     "valid_roc_auc": valid["roc_auc"], "run_id": run_id}, rdir / "ckpt" / "best.pt")
                checkpoint.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": rngs,
                                 "progress": progress, "config": config.to_dict(), "run_id": run_id},
                                rdir / "ckpt" / "last.pt")
                tracker.metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch + 1)
            _log(d, rdir, f"{config.key} epoch {epoch + 1}: train loss {train_loss:.4f}, valid loss {vloss:.4f}, "
                          f"valid ROC-AUC {valid['roc_auc']:.4f} (best {progress['best']:.4f} at epoch "
                          f"{progress['best_epoch']}), {row['epoch_time_s']:.1f} s")
            dist.barrier(d)  # rank 0's checkpoint is on disk before anyone moves on
            if on_epoch is not None:
                on_epoch(row)

        if trial:  # the search's caller ends the trial's MLflow run, with why it stopped
            return dict(key=rdir.name, run_id=run_id, best_epoch=progress["best_epoch"],
                        best_valid_roc_auc=progress["best"], epochs_run=progress["epoch"],
                        early_stopped=progress["bad"] >= config.patience, train_time_s=progress["train_time"],
                        history=progress["history"], run_dir=str(rdir.resolve()), config=config.to_dict())

        # The test split is scored once, with the best checkpoint (early stopping on validation ROC-AUC).
        best = checkpoint.load(rdir / "ckpt" / "best.pt", warn=lambda msg: _log(d, rdir, msg))
        dist.barrier(d)  # every rank has looked for best.pt before rank 0 may write the fallback below
        if best is None and progress["best_epoch"] > 0:
            raise UserError(f"{rdir / 'ckpt'} holds no usable best.pt; delete {rdir / 'ckpt'} and rerun to train "
                            f"{config.key} again")
        if best is None:
            # No epoch improved on -1: validation ROC-AUC was NaN every epoch (no validation tag had both a positive
            # and a negative clip). Defined fallback: the last epoch's weights are the model that is tested and kept.
            _log(d, rdir, f"{config.key}: validation ROC-AUC was undefined (NaN) in all {progress['epoch']} epochs, "
                          f"so there is no best epoch: testing the last epoch's weights (epoch {progress['epoch']}); "
                          "check that the validation split has positive and negative clips for some tag")
            progress.update(best=float("nan"), best_epoch=progress["epoch"])
            if d.main:
                checkpoint.save({"model": model.state_dict(), "config": config.to_dict(), "epoch": progress["epoch"],
                                 "tags": meta["tags"], "frontend": meta["frontend"].to_dict(),
                                 "norm": (train_ds.mean, train_ds.std), "valid_roc_auc": float("nan"),
                                 "fallback": "last epoch", "run_id": run_id}, rdir / "ckpt" / "best.pt")
        else:
            model.load_state_dict(best["model"])
        ti, ts, tloss = predict(net, test_dl, config, d, fmt)
        y = test_ds.labels[ti].astype(np.uint8)
        roc, pr = M.per_tag(y, ts)  # once: the macro figures and per_tag_auc.csv both come from it
        test = M.summarise(roc, pr)
        result = dict(key=config.key, run_id=run_id, test_roc_auc=test["roc_auc"], test_pr_auc=test["pr_auc"],
                      test_loss=tloss, tags_evaluated=test["tags_evaluated"], best_epoch=progress["best_epoch"],
                      best_valid_roc_auc=progress["best"], epochs_run=progress["epoch"],
                      train_time_s=progress["train_time"], n_params=n_params(model), world_size=d.world,
                      run_dir=str(rdir.resolve()), config=config.to_dict())
        # The last collective: after it rank 0 writes the results and talks to MLflow alone, so a dead server or a
        # failure there never leaves the other ranks waiting in a barrier until the process-group timeout.
        dist.barrier(d)
        if d.main:
            with open(rdir / "per_tag_auc.csv", "w") as f:
                f.write("tag,roc_auc,pr_auc\n")
                for tag, r, p in zip(meta["tags"], roc, pr):
                    f.write(f"{tag},{r:.6f},{p:.6f}\n")
            np.savez_compressed(rdir / "test_predictions.npz", clip_id=np.asarray(test_ds.clip_ids[ti]).astype(str), y_true=y,
                                y_score=ts.astype(np.float32), tags=np.array(meta["tags"]))
            tmp = rdir / "metrics.json.tmp"
            tmp.write_text(json.dumps(result, indent=1) + "\n")
            os.replace(tmp, rdir / "metrics.json")  # written last: its presence means the cell is finished
            _log_final(tracker, result, rdir)
            _log(d, rdir, f"{config.key}: test ROC-AUC {result['test_roc_auc']:.4f}, PR-AUC "
                          f"{result['test_pr_auc']:.4f} (best epoch {result['best_epoch']})")
        return result
    finally:
        dist.cleanup()
        while _LOCKS:
            _LOCKS.pop().close()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m fcn.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(ap)
    config = config_from_args(ap.parse_args(argv))
    result = train(config)
    if int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) or 0) == 0:
        print(json.dumps({k: v for k, v in result.items() if k != "config"}), flush=True)


if __name__ == "__main__":
    run_cli(main)
