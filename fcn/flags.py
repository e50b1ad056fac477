"""Options dataclasses → command-line flags, in one place: a field made with `option()` is a typed, documented --flag.

Every options class of the project goes through here: RunConfig (fcn/config.py: `fcn.train`'s flags, and every cell's
in `harness.grid`), the back ends' LocalOptions / RayOptions / SlurmOptions (harness/backends/) and a cluster
preprocessing build's ClusterOptions (harness/preprocess.py). It lives in fcn/ because RunConfig does, and fcn never
imports the harness.

A field's metadata: `help`; `flag` ("" = --field-name, None = no flag); `metavar`; `choices`; anything else the
options class reads itself (RunConfig's `resume`). Field types are the annotations' names (`from __future__ import
annotations`): int, float, str → a type-checked value; bool → a switch (--no-x when its default is True); dict → a
repeatable KEY=VALUE.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, field, fields
from typing import Any

from fcn.errors import UserError

_TYPES = {"int": int, "float": float, "str": str}


def option(
    default: Any = None, help: str = "", *, flag: str | None = "", metavar=None, choices=None, factory=None, **meta
):
    """A field of an options dataclass with its --flag's help text (see the module's docstring for the metadata)."""
    meta = {"help": help, "flag": flag, "metavar": metavar, "choices": choices, **meta}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def flag_of(f) -> str | None:
    """The field's --flag, or None when it has none."""
    flag = f.metadata.get("flag", "")
    return None if flag is None else (flag or "--" + f.name.replace("_", "-"))


def default_of(f):
    return f.default_factory() if f.default is MISSING else f.default


def add_arguments(group, cls, *, skip: tuple[str, ...] = (), unset: bool = False) -> None:
    """One flag per field of `cls` that has one. `unset`: flags default to None (not given), so that what lies
    under them (a preset, a --config file: RunConfig) shows through; the help still names the field's default."""
    for f in fields(cls):
        flag = flag_of(f)
        if flag is None or f.name in skip:
            continue
        default, help = default_of(f), f.metadata["help"]
        if f.type == "bool":
            action = "store_false" if default else "store_true"
            group.add_argument(flag, dest=f.name, action=action, default=None if unset else default, help=help)
        elif f.type == "dict":
            group.add_argument(flag, dest=f.name, action="append", default=[], metavar="KEY=VALUE", help=help)
        else:
            choices = f.metadata.get("choices")
            group.add_argument(
                flag,
                dest=f.name,
                type=_TYPES[f.type],
                default=None if unset else default,
                choices=choices,
                metavar=f.metadata.get("metavar") or (None if choices else f.type.upper()),
                help=f"{help} (default: {default!r})" if default != "" else help,
            )


def from_args(cls, args: argparse.Namespace):
    """`cls` from parsed flags (fields without a flag keep their defaults)."""
    values = {}
    for f in fields(cls):
        if flag_of(f) is not None:
            v = getattr(args, f.name)
            values[f.name] = _key_values(v) if f.type == "dict" else v
    return cls(**values)


def given(cls, args: argparse.Namespace) -> dict:
    """The fields of `cls` whose flags were given (flags added with `unset=True`)."""
    return {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}


def changed_flags(cls, args: argparse.Namespace) -> list[str]:
    """The flags of `cls` given a value other than their default (e.g. options of a back end that was not chosen)."""
    out = []
    for f in fields(cls):
        flag = flag_of(f)
        if flag is not None and getattr(args, f.name) not in (default_of(f), []):
            out.append(flag)
    return out


def _key_values(pairs: list[str]) -> dict:
    out = {}
    for kv in pairs:
        if "=" not in kv:
            raise UserError(f"expected KEY=VALUE (an sbatch option without dashes), got {kv!r}")
        k, v = kv.split("=", 1)
        out[k.strip().lstrip("-")] = v
    return out
