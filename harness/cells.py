"""What to run: the grid as a pure function from a spec to run configs with stable keys (e.g. `msd-mel-fcn7-s0`).

No I/O here; the local, Ray and Slurm back ends all consume the same list.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from fcn.config import DATASETS, RunConfig
from fcn.frontends import INPUTS
from fcn.models import DEPTHS
from harness.paper import PAPER_CELLS


@dataclass(frozen=True)
class GridSpec:
    datasets: tuple[str, ...] = DATASETS
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
                if spec.paper and (dataset, inp, depth) not in PAPER_CELLS:
                    continue
                for seed in spec.seeds:
                    for frac in spec.fractions:
                        cells.append(base.replace(dataset=dataset, input=inp, depth=depth, seed=seed,
                                                  train_fraction=float(frac)))
    if spec.only:
        cells = [c for c in cells if any(fnmatch.fnmatchcase(c.key, p) for p in spec.only)]
    if spec.exclude:
        cells = [c for c in cells if not any(fnmatch.fnmatchcase(c.key, p) for p in spec.exclude)]
    keys = [c.key for c in cells]
    assert len(set(keys)) == len(keys), "grid keys must be unique"
    return cells
