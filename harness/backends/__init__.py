"""Where cells run: one module per back end (local.py, ray_backend.py, slurm.py), each with

- an options dataclass (LocalOptions, RayOptions, SlurmOptions): frozen, everything about *where* cells run on it;
  its fields, made with fcn.flags.option, are the back end's `python -m harness.grid` flags (fcn.flags.add_arguments),
  with their defaults written once;
- `check(opts, cells)`: refuse bad options before anything runs or is submitted;
- `where(opts)`: the words for where cells run ("this machine", "Ray (auto)", "Slurm");
- `run(cells, opts, *, progress) -> list[Outcome]`: each cell through `harness.job.run_cell`.

No heavy imports here or at the top of the back ends (ray, submitit): the parser of `python -m harness.grid` reads
every back end's options.
"""

from __future__ import annotations

import importlib

BACKENDS = ("local", "ray", "slurm")
_MODULES = {
    "local": ("harness.backends.local", "LocalOptions"),
    "ray": ("harness.backends.ray_backend", "RayOptions"),
    "slurm": ("harness.backends.slurm", "SlurmOptions"),
}


def module(name: str):
    """The back end's module (its check, where and run)."""
    return importlib.import_module(_MODULES[name][0])


def options_class(name: str):
    return getattr(module(name), _MODULES[name][1])
