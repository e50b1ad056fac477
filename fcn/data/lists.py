"""The split and tag lists shipped inside the package (fcn/data/splits/, provenance in its README.md), and reading
any split folder's files whether plain or xz-compressed, with their sha256 verified where a SHA256SUMS lists them.

A user's own folder (`--splits-dir`, `<root>/splits`) takes precedence; the shipped lists are the fallback, so a
clone with nothing beside it runs `--split clean` and MSD.
"""

from __future__ import annotations

import functools
import hashlib
import io
import lzma
from pathlib import Path

import numpy as np

from fcn.data import DataError, DataFileMissing

PACKAGED = Path(__file__).resolve().parent / "splits"
MTAT_LISTS = PACKAGED / "mtat"  # Lee/Won clean split
MSD_LISTS = PACKAGED / "msd"  # Choi's split, valid/test labels, Won's filtered test list
SUMS = "SHA256SUMS"


def exists(path) -> bool:
    """Whether `path` is there plain or as `<path>.xz`."""
    path = Path(path)
    return path.is_file() or path.with_name(path.name + ".xz").is_file()


@functools.lru_cache(maxsize=32)
def _sums(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of `folder/SHA256SUMS` (`sha256sum` output; './' and binary '*' markers allowed)."""
    out = {}
    path = folder / SUMS
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            parts = line.split(maxsplit=1)
            if len(parts) == 2 and len(parts[0]) == 64:
                name = parts[1].strip().lstrip("*")
                out[name[2:] if name.startswith("./") else name] = parts[0].lower()
    return out


def expected_sha256(path) -> str | None:
    """The sha256 that a SHA256SUMS in the file's folder or the one above lists for it, else None."""
    path = Path(path).resolve()
    for folder in (path.parent, path.parent.parent):
        rel = path.relative_to(folder).as_posix()
        digest = _sums(folder).get(rel)
        if digest is not None:
            return digest
    return None


def read_bytes(path) -> bytes:
    """The bytes of `path`, or the decompressed bytes of `<path>.xz`; DataError when a listed checksum differs."""
    path = Path(path)
    if path.is_file():
        data = path.read_bytes()
    elif path.with_name(path.name + ".xz").is_file():
        try:
            data = lzma.decompress(path.with_name(path.name + ".xz").read_bytes())
        except lzma.LZMAError as e:
            raise DataError(f"{path}.xz: cannot decompress ({e}): a damaged copy") from None
    else:
        raise DataFileMissing(f"{path}: not found")
    want = expected_sha256(path)
    if want is not None and hashlib.sha256(data).hexdigest() != want:
        raise DataError(
            f"{path}: sha256 differs from its SHA256SUMS entry: a damaged or edited copy "
            "(restore it, e.g. with git checkout)"
        )
    return data


def read_text(path) -> str:
    return read_bytes(path).decode("utf-8")


def load_npy(path) -> np.ndarray:
    """A plain .npy array (never pickles), plain or xz-compressed."""
    return np.load(io.BytesIO(read_bytes(path)), allow_pickle=False)
