"""Where cells run: one module per back end (local.py, ray_backend.py, slurm.py), each with

- an options dataclass (LocalOptions, RayOptions, SlurmOptions): frozen, everything about *where* cells run on it;
  its fields, made with `option()`, are the back end's `python -m harness.grid` flags (`add_arguments`), with their
  defaults written once;
- `check(opts, cells)`: refuse bad options before anything runs or is submitted;
- `where(opts)`: the words for where cells run ("this machine", "Ray (auto)", "Slurm");
- `run(cells, opts, *, progress) -> list[Outcome]`: each cell through `harness.job.run_cell`.

No heavy imports here or at the top of the back ends (ray, submitit): the parser of `python -m harness.grid` reads
every back end's options.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import MISSING, field, fields

from fcn.errors import UserError

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


def option(default, help: str, *, flag: str | None = "", metavar: str | None = None, factory=None):
    """An Options field: its default, its help and its flag (`""`: --<field-name>; None: not a flag)."""
    meta = {"help": help, "flag": flag, "metavar": metavar}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _flag(f) -> str | None:
    flag = f.metadata.get("flag", "")
    return None if flag is None else (flag or "--" + f.name.replace("_", "-"))


def _default(f):
    return f.default_factory() if f.default is MISSING else f.default


def _key_values(pairs: list[str]) -> dict:
    out = {}
    for kv in pairs:
        if "=" not in kv:
            raise UserError(f"expected KEY=VALUE (an sbatch option without dashes), got {kv!r}")
        k, v = kv.split("=", 1)
        out[k.strip().lstrip("-")] = v
    return out


def add_arguments(group, cls) -> None:
    """One flag per field of `cls` that has one: bool → a switch (--no-x when the default is True), dict →
    repeatable KEY=VALUE, else type-checked by argparse."""
    for f in fields(cls):
        flag = _flag(f)
        if flag is None:
            continue
        default, help = _default(f), f.metadata["help"]
        if f.type == "bool":
            group.add_argument(flag, dest=f.name, action="store_false" if default else "store_true", help=help)
        elif f.type == "dict":
            group.add_argument(flag, dest=f.name, action="append", default=[], metavar="KEY=VALUE", help=help)
        else:
            typ = {"int": int, "float": float, "str": str}[f.type]
            group.add_argument(
                flag,
                dest=f.name,
                type=typ,
                default=default,
                metavar=f.metadata.get("metavar") or f.type.upper(),
                help=f"{help} (default: {default!r})" if default != "" else help,
            )


def from_args(cls, args: argparse.Namespace):
    """`cls` from parsed flags (fields without a flag keep their defaults)."""
    values = {}
    for f in fields(cls):
        if _flag(f) is not None:
            v = getattr(args, f.name)
            values[f.name] = _key_values(v) if f.type == "dict" else v
    return cls(**values)


def changed_flags(cls, args: argparse.Namespace) -> list[str]:
    """The flags of `cls` given a value other than their default (options of a back end that was not chosen)."""
    out = []
    for f in fields(cls):
        flag = _flag(f)
        if flag is not None and getattr(args, f.name) not in (_default(f), []):
            out.append(flag)
    return out
