"""RunConfig: the one frozen, serialisable description of a training run (logged to MLflow, saved in checkpoints).

Defaults are the demo scale on the built-in synthetic data (so `python -m fcn.train` finishes in minutes on a laptop
CPU); `--preset paper` sets the paper's scale. Paper facts cite PAPER.md; [D]/[U] mark derived/unknown choices.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from fcn import cell
from fcn.batching import RECIPE_BATCH
from fcn.errors import UserError
from fcn.flags import add_arguments, given, option
from fcn.frontends import DELTAS, INPUTS, VARIANTS, FrontEndParams
from fcn.models import DEPTHS, INITS, KERAS1_BN_EPSILON, KERAS1_BN_MOMENTUM, TORCH_BN_EPSILON, TORCH_BN_MOMENTUM

DATASETS = ("mtat", "msd", "jamendo")
JAMENDO_TYPES = (
    "audio",
    "audio-low",
    "melspecs",
)  # fcn.data.jamendo.TYPES: what the dataset's download script's --type gets

# Paper scale [C]: the full model on 29.12 s clips.
PAPER_WIDTH = 1.0
PAPER_CLIP_SECONDS = 29.12
# [U] The paper does not give its training recipe. The sibling CRNN paper used Adam with defaults and early stopping
# on validation AUC [C2]; Won et al. 2020 used batch 16. Max epochs and patience are ours.
PAPER_LR = 1e-3
PAPER_BATCH = RECIPE_BATCH  # the global batch (fcn/batching.py)
PAPER_EPOCHS = 100
PAPER_PATIENCE = 10

PAPER_DROPOUT = 0.5  # after every max-pool [C]
# The MTAT split of the paper preset, decided once and named the same everywhere (README, fcn.preprocess, the sbatch
# headers, the tables' provenance) [D]: `folder` (0-b train, c valid, d-f test, every clip), PAPER.md's "common
# convention" of 2016 and the only MTAT split that existed when the paper was written; Lee/Won's `clean` lists
# (a subset: clips with a top-50 tag) came later (2017-2020) and stay one flag away (--split clean).
PAPER_MTAT_SPLIT = "folder"
# Where torch's and today's librosa's defaults differ from what the authors ran in 2016:
# [D] Δ/ΔΔ of librosa 0.4 (fcn.frontends.LfilterDelta): their features came from librosa of 2016 (their
# audio_processor.py), but their MFCC code itself is not known (PAPER.md);
# [C] Keras 1's glorot-uniform weights with zero biases and BatchNorm epsilon 1e-6 (fcn/models.py cites the source).
PAPER_DELTAS = "librosa-0.4"
PAPER_INIT = "keras1"

# Demo scale [D]: an eighth of the widths on 4 s clips, so a cell trains on 2 CPU cores in a minute or two.
DEMO_WIDTH = 0.125
DEMO_CLIP_SECONDS = 4.0
# [D] At an eighth of the widths (16 maps in the first block), the paper's dropout of 0.5 after every pool stalls
# learning: measured on the built-in set, FCN-4 mel reached test ROC-AUC 0.69 after 6 epochs with 0.5, 0.91 with 0.1.
DEMO_DROPOUT = 0.1


@dataclass(frozen=True)
class RunConfig:
    # Every field is a --flag (fcn/flags.py's `option`). `resume=True` marks a field that says where or how fast a run
    # goes, not what it computes: a resume may change it (fcn.checkpoint.config_changes), any other field must match
    # the checkpoint's.

    # --- what to run (the cell) ---
    dataset: str = option(
        "mtat",
        "data set layout: mtat (MagnaTagATune), msd (Million Song Dataset) or jamendo (MTG-Jamendo top-50, split-0)",
        choices=DATASETS,
    )
    input: str = option("mel", "front end: mel (96 rows), stft (128 rows) or mfcc (30+Δ+ΔΔ = 90 rows)", choices=INPUTS)
    depth: int = option(4, "FCN depth, 3..7 (PAPER.md's architecture table)", choices=DEPTHS)
    seed: int = option(0, "seed of weights, data order and dropout")
    # --- data ---
    data_root: str = option(
        "",
        "root of the real data set (MTAT: folder with annotations_final.csv and 0..f/; MSD: "
        "folder with lastfm_tags.db; MTG-Jamendo: the folder its download script unpacked into, NN/<id>.mp3, "
        ".low.mp3 or .npy); empty = the built-in synthetic set in the same layout",
        resume=True,
    )
    splits_dir: str = option(
        "",
        "folder of split lists (MTAT clean split: Lee/Won lists; MSD: Choi's lists; MTG-Jamendo: "
        "autotagging_top50tags-{train,validation,test}.tsv); "
        "empty = <data_root>/splits if it holds them, else the lists shipped in fcn/data/splits",
        resume=True,
    )
    tags_db: str = option("", "MSD: the Last.fm tag database (SQLite); empty = <data_root>/lastfm_tags.db", resume=True)
    audio_root: str = option(
        "", "MSD: folder of the 7digital previews, d1/d2/<7digital id>.clip.mp3; empty = <data_root>/audio", resume=True
    )
    id_map: str = option(
        "",
        "MSD: CSV 'msd_id,path' of previews stored elsewhere (relative paths: from the CSV's "
        "folder); the ids it lists override the d1/d2 layout",
        resume=True,
    )
    # [D] the dataset README's recommended download, and its download script's default --type
    jamendo_type: str = option(
        "audio",
        "MTG-Jamendo: which download --data-root holds: audio (NN/<id>.mp3, 320 kbps), audio-low (NN/<id>.low.mp3) "
        "or melspecs (NN/<id>.npy, the dataset's own mel-spectrograms: the mel input only, no decoding; "
        "fcn/melspecs.py)",
        choices=JAMENDO_TYPES,
    )
    split: str = option(
        "folder",
        "MTAT split: folder (0-b / c / d-f, every clip: the 2016 convention) or clean (Lee/Won lists); MSD "
        "always uses Choi's split, MTG-Jamendo its split-0 (or the lists in --splits-dir) [paper preset: folder]",
        choices=("folder", "clean"),
    )
    store: str = option("", "HDF5 feature store; empty = <data_dir>/<name>.h5, built on first use", resume=True)
    build_store: str = option(
        "auto",
        "a missing store: auto (built here on first use, except in a Slurm job on real data: hours of CPU decoding "
        "do not belong on a GPU allocation, so the job stops and names the command that builds it; harness.grid "
        "builds it as a CPU job first), here, or never",
        choices=("auto", "here", "never"),
        resume=True,
    )
    data_dir: str = option("data", "where built-in data sets and derived feature stores are kept", resume=True)
    synth_clips: int = option(1200, "size of the built-in synthetic data set (clips)")
    train_fraction: float = option(1.0, "fraction of the training split used (RQ4: data size)")
    # --- model and front end ---
    width: float = option(DEMO_WIDTH, "channel multiplier; 1.0 is the paper's model [demo 0.125]")
    clip_seconds: float = option(DEMO_CLIP_SECONDS, "clip length fed to the front end; the paper's is 29.12 [demo 4.0]")
    frontend_variant: str = option(
        "plain-db",
        "log-mel variant: authors (their released code: 10·log10(mel²) with a "
        "per-clip floor 80 dB below the peak) or plain-db (10·log10(mel), no "
        "floor); fcn/frontends.py [paper preset: authors]",
        choices=VARIANTS,
    )
    dropout: float = option(DEMO_DROPOUT, "dropout after every max-pool; the paper's is 0.5 [demo 0.1]")
    deltas: str = option(
        "librosa",
        "MFCC Δ/ΔΔ: librosa (today's Savitzky-Golay), librosa-0.4 (2016 librosa's regression filter, ΔΔ by filtering "
        "twice: what the authors' tool computed in 2016) or nested; fcn/frontends.py [paper preset: librosa-0.4]",
        choices=DELTAS,
    )
    init: str = option(
        "torch",
        "initial weights: torch (PyTorch's defaults) or keras1 (glorot-uniform weights, zero biases: the authors' "
        "Keras 1) [paper preset: keras1]",
        choices=INITS,
    )
    bn_epsilon: float = option(
        TORCH_BN_EPSILON, "BatchNorm epsilon: torch's 1e-5, or Keras 1's 1e-6 [paper preset: 1e-6, the authors' Keras]"
    )
    bn_momentum: float = option(
        TORCH_BN_MOMENTUM,
        "BatchNorm running-statistics momentum, torch's convention (running = (1-m)·running + m·batch): 0.1 is "
        "torch's default and Keras 1's momentum=0.9 [paper preset: 0.1]",
    )
    # --- optimisation ---
    batch_size: int = option(
        RECIPE_BATCH,
        "GLOBAL batch: clips per optimiser step over all processes, each training global / processes "
        "(fcn/batching.py); part of the cell key when not 16 [U: 16 as in Won et al. 2020]",
    )
    sync_bn: str = option(
        "auto",
        "SyncBatchNorm across processes: auto (on CUDA when several processes train with "
        "fewer than 8 clips each [D]), on, or off",
        choices=("auto", "on", "off"),
    )
    lr: float = option(PAPER_LR, "Adam learning rate [U: Adam defaults, as in the sibling CRNN paper]")
    epochs: int = option(8, "maximum epochs [paper preset 100, U]")
    patience: int = option(3, "early stopping: epochs without a better validation ROC-AUC [paper preset 10, U]")
    # --- runtime ---
    device: str = option("auto", "auto (cuda if available), cpu, or cuda", choices=("auto", "cpu", "cuda"), resume=True)
    # [D] bf16 autocast on CUDA, and on CPUs with bf16 arithmetic, is our speed choice; the paper trained in fp32
    # (--amp off)
    amp: str = option(
        "auto",
        "autocast: auto (bf16 on CUDA and on a CPU with bf16 arithmetic, AVX-512 BF16 or AMX, "
        "where bench/train_step.py measured it faster at equal AUC: fcn/precision.py; else fp32) "
        "[D: our speed choice], bf16, or off (fp32, the paper's precision)",
        choices=("auto", "bf16", "off"),
    )
    memory_format: str = option(
        "auto",
        "activations' layout: auto (channels_last on CUDA and at demo width; contiguous "
        "at full width on a CPU without AVX-512, bench/train_step.py), channels_last, or "
        "contiguous",
        choices=("auto", "channels_last", "contiguous"),
        resume=True,
    )
    num_workers: int = option(0, "DataLoader worker processes per training process", resume=True)
    threads: int = option(0, "torch CPU threads per process; 0 = all cores divided among local processes", resume=True)
    # --- where results go ---
    out_dir: str = option(
        cell.OUT_DIR, "run directories (checkpoints, metrics.json) and the default SQLite MLflow store", resume=True
    )
    experiment: str = option(cell.CELL_EXPERIMENT, "MLflow experiment name", resume=True)
    tracking_uri: str = option(
        "", "MLflow tracking URI; empty = $MLFLOW_TRACKING_URI or sqlite:///<out_dir>/mlflow.db", resume=True
    )
    parent_run_id: str = option("", "MLflow parent run (set by the harness for sweeps)", resume=True)
    recipe: str = option(
        "",
        "where lr, dropout and batch size came from: empty = the preset and flags; set by "
        "`harness.grid --configs-from` to a search's recipe file (logged, shown in the tables)",
        resume=True,
    )

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type == "float" and isinstance(v, int) and not isinstance(v, bool):
                object.__setattr__(self, f.name, float(v))
                v = float(v)
            want = {"int": int, "float": float, "str": str, "bool": bool}[f.type]
            if not isinstance(v, want) or (want is int and isinstance(v, bool)):
                raise UserError(f"config field {f.name}={v!r} must be {f.type}")
            choices = f.metadata.get("choices")
            if choices and v not in choices:
                raise UserError(f"unknown {f.name} {v!r}: choose one of {', '.join(map(str, choices))}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"dropout={self.dropout} must be in [0, 1)")
        if not 0 < self.bn_epsilon < 1 or not 0 < self.bn_momentum <= 1:
            raise UserError(f"bn_epsilon={self.bn_epsilon} must be in (0, 1), bn_momentum={self.bn_momentum} in (0, 1]")
        if not 0 < self.train_fraction <= 1:
            raise UserError(f"train_fraction={self.train_fraction} must be in (0, 1]")
        for name in ("width", "clip_seconds", "lr"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be positive")
        for name in ("batch_size", "epochs", "patience", "synth_clips"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1")
        if self.dataset == "jamendo" and self.jamendo_type == "melspecs" and self.input != "mel":
            raise UserError(
                f"--jamendo-type melspecs gives the mel input only (MTG-Jamendo's own mel-spectrograms); input "
                f"{self.input!r} needs the audio: --jamendo-type audio or audio-low (a grid: --inputs mel)"
            )

    # The cell's stable key, e.g. mtat-mel-fcn4-s0 (fcn/cell.py; RQ4 runs on part of the data, and runs at a global
    # batch other than the recipe's 16, get a suffix).
    @property
    def key(self) -> str:
        return cell.make_key(self.dataset, self.input, self.depth, self.seed, self.train_fraction, self.batch_size)

    @property
    def model_options(self) -> dict:
        """fcn.models.FCN's keyword arguments beyond depth and width (training and prediction build the same net)."""
        return dict(dropout=self.dropout, init=self.init, bn_eps=self.bn_epsilon, bn_momentum=self.bn_momentum)

    @property
    def frontend(self) -> FrontEndParams:
        # full tracks are cut on the frame grid of the dataset's own mel-spectrograms (fcn/crop.py) [D]
        crop = "track-centre" if self.dataset == "jamendo" else "centre"
        return FrontEndParams.for_seconds(
            self.clip_seconds, variant=self.frontend_variant, deltas=self.deltas, crop=crop
        )

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise UserError(f"unknown config key(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def replace(self, **kw) -> RunConfig:
        unknown = set(kw) - {f.name for f in fields(self)}
        if unknown:
            raise UserError(f"unknown config key(s): {', '.join(sorted(unknown))}")
        return replace(self, **kw)


# Presets are plain override sets applied before command-line flags; the resulting config records every value.
PRESETS: dict[str, dict[str, Any]] = {
    "demo": {},
    # [D] the embedded 30-cell grid: half the clips, 3 s, 6 epochs, so all cells fit in ~10 minutes on 2 cores
    "grid-demo": dict(synth_clips=600, clip_seconds=3.0, epochs=6, patience=3),
    "paper": dict(
        width=PAPER_WIDTH,
        clip_seconds=PAPER_CLIP_SECONDS,
        dropout=PAPER_DROPOUT,
        batch_size=PAPER_BATCH,
        lr=PAPER_LR,
        epochs=PAPER_EPOCHS,
        patience=PAPER_PATIENCE,
        num_workers=4,
        # the authors' released preprocessing, taken as the input behind the published numbers [D]
        frontend_variant="authors",
        split=PAPER_MTAT_SPLIT,
        deltas=PAPER_DELTAS,
        init=PAPER_INIT,
        bn_epsilon=KERAS1_BN_EPSILON,
        bn_momentum=KERAS1_BN_MOMENTUM,
    ),
}


def add_config_arguments(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One --flag per RunConfig field (type-checked by argparse; unknown flags are errors) plus --preset."""
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="demo",
        help="demo: small model on 4 s clips (CPU minutes); grid-demo: lighter, for 30 cells at once; "
        "paper: the paper's scale (GPU)",
    )
    parser.add_argument(
        "--config",
        default="",
        metavar="JSON",
        help="a whole run config as a JSON file (as saved in metrics.json); flags override it",
    )
    # unset: a flag not given leaves the preset's (or the --config file's) value
    add_arguments(parser, RunConfig, skip=skip, unset=True)


def config_from_args(args: argparse.Namespace, **extra) -> RunConfig:
    values = dict(PRESETS[args.preset])
    if getattr(args, "config", ""):
        try:
            with open(args.config) as f:
                values.update(RunConfig.from_dict(json.load(f)).to_dict())
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read --config {args.config}: {e}") from e
    values.update(given(RunConfig, args))
    values.update(extra)
    return RunConfig(**values)
