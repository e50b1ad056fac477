"""What to run: the grid as a pure function from a spec to run configs with stable keys (e.g. `msd-mel-fcn7-s0`), and
the flags that choose it (shared by harness.grid, harness.status and harness.search).

No I/O here (but resolving paths); the local, Ray and Slurm back ends all consume the same list.
"""

from __future__ import annotations

import argparse
import fnmatch
from dataclasses import dataclass
from pathlib import Path

from fcn import cell, tracking
from fcn.config import DATASETS, RunConfig, add_config_arguments, config_from_args
from fcn.errors import UserError
from fcn.frontends import INPUTS
from fcn.models import DEPTHS
from harness.paper import JAMENDO_CELLS, PAPER_CELLS

# [D] The grid's default data sets: the paper's two. MTG-Jamendo (fcn.config.DATASETS' third) is asked for by name,
# `--datasets mtat,msd,jamendo`: a third data set would make the demo grid (README's first command) half again as long.
GRID_DATASETS = ("mtat", "msd")


@dataclass(frozen=True)
class GridSpec:
    datasets: tuple[str, ...] = GRID_DATASETS
    inputs: tuple[str, ...] = INPUTS
    depths: tuple[int, ...] = DEPTHS
    seeds: tuple[int, ...] = (0,)
    fractions: tuple[float, ...] = (1.0,)  # RQ4: training-data size
    paper: bool = False  # keep only the paper's cells
    only: tuple[str, ...] = ()  # glob patterns on keys, e.g. "mtat-*-fcn4-*"
    exclude: tuple[str, ...] = ()


def expand(spec: GridSpec, base: RunConfig) -> list[RunConfig]:
    """The cells of `spec`, each `base` with its axes set, in a stable order; keys are unique."""
    cells = []
    for dataset in spec.datasets:
        for depth in spec.depths:
            for inp in spec.inputs:
                if spec.paper and (dataset, inp, depth) not in PAPER_CELLS | JAMENDO_CELLS:
                    continue
                for seed in spec.seeds:
                    for frac in spec.fractions:
                        cells.append(
                            base.replace(dataset=dataset, input=inp, depth=depth, seed=seed, train_fraction=float(frac))
                        )
    if spec.only:
        cells = [c for c in cells if any(fnmatch.fnmatchcase(c.key, p) for p in spec.only)]
    if spec.exclude:
        cells = [c for c in cells if not any(fnmatch.fnmatchcase(c.key, p) for p in spec.exclude)]
    keys = [c.key for c in cells]
    assert len(set(keys)) == len(keys), "grid keys must be unique"
    return cells


AXES = ("dataset", "input", "depth", "seed", "train_fraction", "data_root")


def _csv(typ, allowed=None):
    def parse(s: str):
        vals = tuple(typ(v) for v in s.split(",") if v.strip())
        bad = [v for v in vals if allowed is not None and v not in allowed]
        if bad or not vals:
            raise argparse.ArgumentTypeError(
                f"unknown value(s) {', '.join(map(str, bad)) if bad else repr(s)}; "
                f"choose from {', '.join(map(str, allowed))}"
            )
        return vals

    return parse


def add_grid_arguments(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("grid (what to run)")
    g.add_argument(
        "--datasets",
        type=_csv(str, DATASETS),
        default=GRID_DATASETS,
        help=f"comma list of {', '.join(DATASETS)} (default: {','.join(GRID_DATASETS)})",
    )
    g.add_argument("--inputs", type=_csv(str, INPUTS), default=INPUTS, help="comma list (default: mel,stft,mfcc)")
    g.add_argument("--depths", type=_csv(int, DEPTHS), default=DEPTHS, help="comma list (default: 3,4,5,6,7)")
    g.add_argument("--seeds", type=_csv(int), default=(0,), help="comma list (default: 0)")
    g.add_argument("--fractions", type=_csv(float), default=(1.0,), help="training-data fractions, RQ4 (default: 1.0)")
    g.add_argument(
        "--paper",
        action="store_true",
        help="only the paper's cells (MTAT FCN-3/4/5 mel, FCN-4 "
        "STFT/MFCC; MSD FCN-3..7 mel; MTG-Jamendo, when in --datasets, FCN-3..7 mel), at the paper's scale: "
        "--paper implies --preset paper unless --preset is given",
    )
    g.add_argument("--only", nargs="+", default=(), metavar="GLOB", help="keep keys matching, e.g. 'mtat-*-fcn4-*'")
    g.add_argument("--exclude", nargs="+", default=(), metavar="GLOB", help="drop keys matching")
    g.add_argument("--data-root-mtat", default="", help="real MTAT root (default: the built-in synthetic set)")
    g.add_argument("--data-root-msd", default="", help="real MSD root (default: the built-in synthetic set)")
    g.add_argument(
        "--data-root-jamendo",
        default="",
        help="real MTG-Jamendo root, the folder its download script unpacked into (default: the built-in synthetic set;"
        " which download it holds: --jamendo-type)",
    )
    add_config_arguments(ap.add_argument_group("every cell's run config (fcn.train flags)"), skip=AXES)
    ap.set_defaults(experiment=None, preset=None)  # None: chosen by preset_for (--paper or not)


def preset_for(args) -> str:
    """The preset of a grid: the one named, else `paper` with --paper (the paper's cells at the paper's scale; a
    smoke test of them is `--paper --preset grid-demo`), else `grid-demo`."""
    return args.preset or ("paper" if args.paper else "grid-demo")


def grid_from_args(args) -> list[RunConfig]:
    """The cells, with every path absolute and the tracking URI explicit: jobs start in other directories."""
    args = argparse.Namespace(**{**vars(args), "preset": preset_for(args)})
    base = config_from_args(args, experiment=args.experiment or cell.GRID_EXPERIMENT)
    absolute = {k: str(Path(getattr(base, k)).resolve()) for k in ("out_dir", "data_dir") if getattr(base, k)}
    for k in ("store", "splits_dir", "tags_db", "audio_root", "id_map"):
        if getattr(base, k):
            absolute[k] = str(Path(getattr(base, k)).resolve())
    base = base.replace(**absolute)
    base = base.replace(tracking_uri=tracking.resolve_uri(base.tracking_uri, base.out_dir))
    spec = GridSpec(
        datasets=args.datasets,
        inputs=args.inputs,
        depths=args.depths,
        seeds=args.seeds,
        fractions=args.fractions,
        paper=args.paper,
        only=tuple(args.only),
        exclude=tuple(args.exclude),
    )
    cells = expand(spec, base)
    roots = {"mtat": args.data_root_mtat, "msd": args.data_root_msd, "jamendo": args.data_root_jamendo}
    cells = [c.replace(data_root=str(Path(roots[c.dataset]).resolve())) if roots[c.dataset] else c for c in cells]
    if not cells:
        raise UserError("the grid is empty: check --only / --exclude / --paper")
    return cells
