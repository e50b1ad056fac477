"""MagnaTagATune reader: annotations_final.csv -> top-50 labels -> folder or "clean" split -> list[Item].

Facts (PAPER.md, Datasets): `annotations_final.csv` is tab-separated with every field double-quoted; header `clip_id`,
188 tag columns (0/1), `mp3_path`; audio at `<root>/<folder>/<artist>-<album>-<NN>-<title>-<start>-<end>.mp3`, folders
0..9, a..f. Splits: "folder" = folders 0-b train, c valid, d-f test (the common convention); "clean" = the Lee / Won
lists (15,244 / 1,529 / 4,332 clips with at least one top-50 tag), read from the plain-text `*_list_pub.txt` files
whose entries are `<folder>/<clip>.npy`. Those lists ship with the package (fcn/data/splits/mtat, fcn.data.lists).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from fcn.data import MTAT_TOP50, SPLITS, DataError, DataFileMissing, Item, Report
from fcn.data import lists as listfiles

ANNOTATIONS = "annotations_final.csv"
CLIP_INFO = "clip_info_final.csv"
# PAPER.md: 35644 is an empty file (folder 6); 55753 (folder 8) and 57881 (folder 9) do not decode.
BROKEN_CLIPS = {"35644": "empty mp3", "55753": "undecodable mp3", "57881": "undecodable mp3"}
FOLDER_SPLIT = {**{f: "train" for f in "0123456789ab"}, "c": "valid", **{f: "test" for f in "def"}}
CLEAN_LISTS = {s: f"{s}_list_pub.txt" for s in SPLITS}


def _open_tsv(path: Path):
    # newline="" is what the csv module wants; utf-8 with replacement because a few real titles are not clean UTF-8
    return open(path, newline="", encoding="utf-8", errors="replace")


def read_annotations(root) -> tuple[list[str], list[list[str]]]:
    """Header and rows of annotations_final.csv, as strings (tab-separated, quoted fields)."""
    path = Path(root) / ANNOTATIONS
    if not path.is_file():
        raise DataFileMissing(f"{path}: not found (MagnaTagATune's {ANNOTATIONS} must sit in the data root)")
    with _open_tsv(path) as f:
        rows = list(csv.reader(f, delimiter="\t", quotechar='"'))
    if not rows:
        raise DataError(f"{path}: empty file, expected a header row")
    return rows[0], rows[1:]


def read_clip_info(root) -> dict[str, dict[str, str]]:
    """clip_info_final.csv (metadata: track_number, title, artist, album, url, segmentStart, segmentEnd,
    original_url, mp3_path) keyed by clip_id; {} when the file is absent (it is optional)."""
    path = Path(root) / CLIP_INFO
    if not path.is_file():
        return {}
    with _open_tsv(path) as f:
        reader = csv.DictReader(f, delimiter="\t", quotechar='"')
        if reader.fieldnames is None or "clip_id" not in reader.fieldnames:
            raise DataError(f"{path}: no 'clip_id' column in the header")
        return {row["clip_id"]: row for row in reader}


def find_splits_dir(root) -> Path:
    """Where the clean lists are when the user named no folder: `<root>/splits` or `<root>/splits/mtat` [D], else
    the lists shipped with the package (fcn/data/splits/mtat)."""
    root = Path(root)
    tried = [root / "splits", root / "splits" / "mtat", listfiles.MTAT_LISTS]
    for d in tried:
        if all(listfiles.exists(d / name) for name in CLEAN_LISTS.values()):
            return d
    raise DataFileMissing(
        f"clean split lists ({', '.join(CLEAN_LISTS.values())}) not found in {' or '.join(map(str, tried))}: "
        "pass the folder that holds them (e.g. won_sota_split/mtat) as splits_dir / --splits-dir"
    )


def read_clean_lists(splits_dir) -> dict[str, list[str]]:
    """The Lee/Won lists as `<folder>/<clip>.mp3` keys per split (entries are stored as `.npy`, the features' name);
    plain or xz-compressed, checksums verified where a SHA256SUMS lists them (fcn.data.lists)."""
    d = Path(splits_dir)
    out = {}
    for split, name in CLEAN_LISTS.items():
        path = d / name
        if not listfiles.exists(path):
            raise DataFileMissing(f"{path}: clean split list not found")
        entries = [ln.strip() for ln in listfiles.read_text(path).splitlines() if ln.strip()]
        out[split] = [e[:-4] + ".mp3" if e.endswith(".npy") else e for e in entries]
    return out


def _header_index(header: list[str], path: Path) -> tuple[int, int, list[int]]:
    col = {name: i for i, name in reversed(list(enumerate(header)))}  # first occurrence wins
    for required in ("clip_id", "mp3_path"):
        if required not in col:
            raise DataError(f"{path}: required column {required!r} is missing from the header")
    missing = [t for t in MTAT_TOP50 if t not in col]
    if missing:
        raise DataError(f"{path}: top-50 tag column(s) {missing} missing from the header")
    return col["clip_id"], col["mp3_path"], [col[t] for t in MTAT_TOP50]


def read(root, split: str = "folder", splits_dir=None) -> tuple[list[str], list[Item], list[str]]:
    """Read a MagnaTagATune copy at `root`. Returns (tags, items, problems).

    tags: the 50 names of MTAT_TOP50 (PAPER.md order). items: one Item per usable clip, in CSV row order, labels
    uint8 (50,). problems: one str per skipped or doubtful row (fcn.data.Problem: "<clip_id or row>: <reason>");
    nothing there is fatal. Fatal (DataError / DataFileMissing): no CSV, a missing required column or top-50 tag.

    split="folder": folders 0-b / c / d-f, every clip kept (zero-tag clips are all-negative examples).
    split="clean": the Lee/Won lists from `splits_dir` (default: see find_splits_dir, ending at the shipped lists);
    clips without any top-50 tag are dropped too, which is how those lists were made (PAPER.md).
    """
    if split not in ("folder", "clean"):
        raise DataError(f"MTAT split must be 'folder' or 'clean', not {split!r}")
    root = Path(root).resolve()
    csv_path = root / ANNOTATIONS
    header, rows = read_annotations(root)
    i_id, i_path, i_tags = _header_index(header, csv_path)
    report = Report(str(csv_path))

    wanted: dict[str, str] | None = None  # mp3_path -> split, for the clean lists
    if split == "clean":
        clean = read_clean_lists(splits_dir if splits_dir is not None else find_splits_dir(root))
        wanted = {}
        for s, keys in clean.items():
            for k in keys:
                wanted.setdefault(k, s)
        found: set[str] = set()

    # One pass over the rows with every rule in order, each reporting what it skips. This function is longer than our
    # ~60 lines on purpose: the order of the checks decides what a bad row is reported as, and it reads top to bottom.
    n_cols = len(header)
    seen: set[str] = set()
    items: list[Item] = []
    for rownum, row in enumerate(rows, start=2):  # row 1 is the header: numbers match a text editor's
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != n_cols:
            report.add(f"line {rownum}", f"{len(row)} fields, the header has {n_cols}: row skipped")
            continue
        cid, mp3 = row[i_id].strip(), row[i_path].strip()
        if not cid:
            report.add(f"line {rownum}", "empty clip_id: row skipped")
            continue
        if cid in seen:
            report.add(cid, f"duplicate clip_id (line {rownum}): first row kept")
            continue
        seen.add(cid)
        if wanted is not None:
            s = wanted.get(mp3)
            if s is None:
                continue  # not in the clean lists: by design, not a problem (an empty mp3_path lands here too)
            found.add(mp3)
        if cid in BROKEN_CLIPS:
            report.add(cid, f"known broken clip ({BROKEN_CLIPS[cid]}, PAPER.md): skipped")
            continue
        if not mp3:
            report.add(cid, "empty mp3_path: skipped")
            continue
        if wanted is None:
            s = FOLDER_SPLIT.get(mp3.split("/", 1)[0] if "/" in mp3 else "")
            if s is None:
                report.add(cid, f"mp3_path {mp3!r} is not in a folder 0..9/a..f: skipped")
                continue
        try:
            y = np.array([int(row[i]) for i in i_tags], dtype=np.int64)
        except ValueError:
            report.add(cid, "a top-50 tag value is not an integer: skipped")
            continue
        y = (y > 0).astype(np.uint8)
        if wanted is not None and not y.any():
            report.add(cid, "in the clean lists but has no top-50 tag here: skipped")
            continue
        path = root / mp3
        if not os.path.isfile(path):
            report.add(cid, "audio file missing")
            continue
        y.setflags(write=False)  # Item is frozen; its labels should not be edited in place either
        items.append(Item(cid, str(path), y, s))

    if wanted is not None:
        absent = [k for k in wanted if k not in found]
        report.summary("clean-list entries have no usable row in annotations_final.csv", absent, total=len(wanted))
    return list(MTAT_TOP50), items, report.lines()
