"""Reading a sweep's results: its finished cell runs (through fcn/tracking.py) and their artifacts."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fcn import tracking
from fcn.batching import RECIPE_BATCH
from fcn.cell import CELL_TAG, parse_key, run_is_finished
from harness import bootstrap

PREDICTIONS_ARTIFACT = "test_predictions.npz"
PER_TAG_ARTIFACT = "per_tag_auc.csv"
DATASET_NAMES = {"mtat": "MTAT", "msd": "MSD", "jamendo": "MTG-Jamendo"}


@dataclass
class CellRun:
    """One finished run of a cell: one seed of one (dataset, input, depth, training fraction, global batch)."""

    key: str
    dataset: str
    input: str
    depth: int
    seed: int
    run_id: str
    start_time: int
    roc_auc: float
    pr_auc: float | None
    source: str = ""  # which data and scale the run used (from its params), with no machine path
    synthetic: bool = False  # the built-in synthetic data: its numbers are not comparable with the paper's
    scale: str = ""  # "paper scale" or the demo scale's width and clip length, plus the mel variant
    fraction: float = 1.0  # share of the training split it trained on (RQ4); 1.0 = all of it
    batch: int = RECIPE_BATCH  # its global batch (fcn/batching.py): runs of two global batches are two recipes


def run_scale(params: dict) -> str:
    """The run's scale and mel variant; runs logged before the variants existed used the floor-free plain-db mel."""
    width, clip = params.get("width", "?"), params.get("clip_seconds", "?")
    variant = params.get("frontend_variant", "plain-db")
    try:
        paper_scale = float(width) == 1.0 and float(clip) == 29.12
    except ValueError:
        paper_scale = False
    size = "paper scale" if paper_scale else f"width {width}, {clip} s clips"
    recipe = f", recipe {params['recipe']}" if params.get("recipe") else ""  # harness.grid --configs-from
    return f"{size}, {variant} mel{recipe}"


def run_split(params: dict) -> str:
    """The split a run's numbers are on, named as fcn.config names it: MTAT `folder` (the paper preset's) or `clean`;
    MSD always Choi's. Runs logged without the param used the default, `folder`."""
    if params.get("dataset", "mtat") == "msd":
        return "Choi's split"
    return f"{params.get('split', 'folder')} split"


def run_source(params: dict) -> str:
    """What a run's numbers are about: the built-in synthetic data at demo scale are not the paper's data sets. Only
    the data set's name, never the data root's path: results/ must not carry one machine's paths."""
    if not params.get("data_root"):
        return f"built-in synthetic data in the data set's layout ({run_split(params)}, {run_scale(params)})"
    name = DATASET_NAMES.get(params.get("dataset", ""), params.get("dataset", "?"))
    return f"real {name} data ({run_split(params)}, {run_scale(params)})"


def cell_run(run) -> CellRun | None:
    """A CellRun from an mlflow Run, or None if it is not a finished cell run."""
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    key = tags.get(CELL_TAG)
    if not key or not run_is_finished(run):
        return None
    parsed = parse_key(key) or {}
    try:  # params are the source of truth; the key is the fallback for runs logged without them
        dataset = params.get("dataset", parsed.get("dataset"))
        inp = params.get("input", parsed.get("input"))
        depth = int(params.get("depth", parsed.get("depth")))
        seed = int(params.get("seed", parsed.get("seed")))
        fraction = float(params.get("train_fraction", parsed.get("train_fraction", 1.0)))
        # global_batch is logged since the batch became global; before, batch_size was per process and almost every
        # run had one process, so its batch_size was its global batch
        batch = int(params.get("global_batch", params.get("batch_size", parsed.get("batch_size", RECIPE_BATCH))))
    except (TypeError, ValueError):
        return None
    return CellRun(
        key,
        dataset,
        inp,
        depth,
        seed,
        run.info.run_id,
        run.info.start_time or 0,
        float(metrics["test_roc_auc"]),
        metrics.get("test_pr_auc"),
        run_source(params),
        synthetic=not params.get("data_root"),
        scale=run_scale(params),
        fraction=fraction,
        batch=batch,
    )


def finished_cell_runs(experiment_name: str, tracking_uri: str) -> list[CellRun]:
    """Finished cell runs of the experiment; for a key run more than once, the latest run counts."""
    latest: dict[str, CellRun] = {}
    for run in tracking.experiment_runs(tracking_uri, experiment_name, "attributes.status = 'FINISHED'"):
        cr = cell_run(run)
        if cr is not None and (cr.key not in latest or cr.start_time > latest[cr.key].start_time):
            latest[cr.key] = cr
    return sorted(latest.values(), key=lambda r: (r.dataset, r.input, r.depth, r.fraction, r.seed))


class ArtifactCache:
    """Downloads each run's artifacts at most once into a temporary folder; None when absent."""

    def __init__(self, tracking_uri: str, root: Path):
        self.tracking_uri = tracking_uri
        self.root = root
        self._preds: dict[str, bootstrap.Predictions | None] = {}
        self._client = None

    def _download(self, run_id: str, name: str) -> Path | None:
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per artifact drowns the output
        if self._client is None:
            self._client = tracking.client(self.tracking_uri)
        dst = self.root / run_id
        dst.mkdir(parents=True, exist_ok=True)
        try:
            return Path(self._client.download_artifacts(run_id, name, str(dst)))
        except Exception:  # noqa: BLE001 - a missing artifact (any store's error type) just means "no interval"
            return None

    def predictions(self, run_id: str) -> bootstrap.Predictions | None:
        if run_id not in self._preds:
            path = self._download(run_id, PREDICTIONS_ARTIFACT)
            self._preds[run_id] = bootstrap.Predictions.load(path) if path else None
        return self._preds[run_id]

    def per_tag(self, run_id: str) -> tuple[list[str], np.ndarray] | None:
        """Per-tag ROC-AUC: from the predictions if there, else from the `per_tag_auc.csv` artifact."""
        preds = self.predictions(run_id)
        if preds is not None:
            roc, _ = bootstrap.per_tag_auc(preds.y_true, preds.y_score)
            names = list(preds.tags) if preds.tags is not None else [f"tag{i}" for i in range(len(roc))]
            return names, roc
        path = self._download(run_id, PER_TAG_ARTIFACT)
        if path is None:
            return None
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        return [r["tag"] for r in rows], np.array([float(r["roc_auc"]) for r in rows])
