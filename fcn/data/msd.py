"""Million Song Dataset reader: Choi's split lists + lastfm_tags.db labels + 7digital preview paths -> list[Item].

Facts (PAPER.md, Datasets; splits README): labels are Last.fm tags in SQLite `lastfm_tags.db` (tables `tids(tid)`,
`tags(tag)`, `tid_tag(tid -> tids.ROWID, tag -> tags.ROWID, val 0-100)`), positive when val > 50 [C]. Choi's split is
three plain-text id lists per split, same order: `{split}_x_msd_id.txt`, `{split}_x_7d_id.txt`,
`{split}_x_filename.txt` (`d1/d2/<7digital_id>.npy`, d1/d2 the id's first two digits) — 201,680 / 12,634 / 28,540
tracks; `valid_y.npy` / `test_y.npy` are bool N x 50 in `top50_tags.txt` order. Previews sit at
`<audio_root>/d1/d2/<7digital_id>.clip.mp3`; they cannot be downloaded any more, so users bring their own copy.
Choi's lists and y files ship with the package (fcn/data/splits/msd, fcn.data.lists): a user brings the db and audio.
"""

from __future__ import annotations

import csv
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fcn.data import MSD_TOP50, SPLITS, DataError, DataFileMissing, Item, Problem, Report
from fcn.data import lists as listfiles

TAGS_DB = "lastfm_tags.db"
TOP50_FILE = "top50_tags.txt"
THRESHOLD = 50  # a tag counts when its Last.fm value is > 50 [C]


@dataclass(frozen=True)
class SplitList:
    """One split of Choi's lists: three aligned columns."""

    msd_ids: list[str]
    sevend_ids: list[str]
    filenames: list[str]  # d1/d2/<7digital_id>.npy

    def __len__(self) -> int:
        return len(self.msd_ids)


def read_id_list(path) -> list[str]:
    """A plain-text list, one id per line (blank lines ignored), plain or xz-compressed (fcn.data.lists). Fast:
    201,680 ids in ~20 ms plain, ~0.1 s compressed."""
    path = Path(path)
    if not listfiles.exists(path):
        raise DataFileMissing(f"{path}: split list not found")
    return listfiles.read_text(path).split()


def read_split_lists(splits_dir) -> dict[str, SplitList]:
    """Choi's three aligned lists for each split; DataError when their lengths disagree."""
    d = Path(splits_dir)
    out = {}
    for s in SPLITS:
        cols = [read_id_list(d / f"{s}_x_{what}.txt") for what in ("msd_id", "7d_id", "filename")]
        if len({len(c) for c in cols}) != 1:
            raise DataError(
                f"{d}: {s}_x_msd_id / _7d_id / _filename.txt have {[len(c) for c in cols]} lines: "
                "they must be aligned line by line"
            )
        out[s] = SplitList(*cols)
    return out


def read_top50(splits_dir) -> list[str]:
    """top50_tags.txt from the split folder (one tag per line; tags may contain spaces), else MSD_TOP50."""
    path = Path(splits_dir) / TOP50_FILE
    if not listfiles.exists(path):
        return list(MSD_TOP50)
    tags = [ln.strip() for ln in listfiles.read_text(path).splitlines() if ln.strip()]
    if len(tags) != 50 or len(set(tags)) != 50:
        raise DataError(f"{path}: expected 50 distinct tags, found {len(tags)} ({len(set(tags))} distinct)")
    return tags


def read_y(splits_dir, split: str) -> np.ndarray | None:
    """Choi's `{split}_y.npy` (bool N x 50), or None when absent. Plain array: allow_pickle stays False."""
    path = Path(splits_dir) / f"{split}_y.npy"
    if not listfiles.exists(path):
        return None
    y = listfiles.load_npy(path)
    if y.ndim != 2 or y.shape[1] != 50:
        raise DataError(f"{path}: expected an N x 50 array, found shape {y.shape}")
    return y.astype(bool, copy=False)


def labels_from_db(db_path, msd_ids, tags) -> tuple[np.ndarray, np.ndarray]:
    """(labels uint8 len(msd_ids) x len(tags), in_db bool per id) from lastfm_tags.db with the > 50 rule.

    Tag names match exactly (Last.fm case: 'Mellow', 'Hip-Hop') [D: Choi's label code was not published; exact
    match of his top50_tags.txt is the plain reading]. The db is opened read-only."""
    db_path = Path(db_path)
    if not db_path.is_file():
        raise DataFileMissing(f"{db_path}: Last.fm tag database not found (pass tags_db / put {TAGS_DB} in the root)")
    con = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        try:
            tag_rows = con.execute(
                f"SELECT ROWID, tag FROM tags WHERE tag IN ({','.join('?' * len(tags))})", list(tags)
            ).fetchall()
        except sqlite3.DatabaseError as e:
            raise DataError(
                f"{db_path}: not a Last.fm tag database ({e}); expected tables tids, tags, tid_tag"
            ) from None
        col_of_tag = {rowid: tags.index(name) for rowid, name in tag_rows}
        row_of_id = {t: i for i, t in enumerate(msd_ids)}
        # tids ROWID -> our row (-1: not asked for); the real table has 505,216 tracks, we want <= 242,854
        tid_rows = con.execute("SELECT ROWID, tid FROM tids").fetchall()
        max_rowid = max((r for r, _ in tid_rows), default=0)
        row_of_rowid = np.full(max_rowid + 1, -1, dtype=np.int64)
        for rowid, tid in tid_rows:
            row_of_rowid[rowid] = row_of_id.get(tid, -1)
        y = np.zeros((len(msd_ids), len(tags)), dtype=np.uint8)
        if col_of_tag:
            col_lut = np.full(max(col_of_tag) + 1, -1, dtype=np.int64)
            for rowid, col in col_of_tag.items():
                col_lut[rowid] = col
            q = (
                f"SELECT tid, tag FROM tid_tag WHERE val > {THRESHOLD} "
                f"AND tag IN ({','.join(str(int(r)) for r in col_of_tag)})"
            )
            pairs = np.array(con.execute(q).fetchall(), dtype=np.int64).reshape(-1, 2)
            pairs = pairs[(pairs[:, 0] >= 0) & (pairs[:, 0] <= max_rowid)]  # a dangling tid reference is ignored
            rows, cols = row_of_rowid[pairs[:, 0]], col_lut[pairs[:, 1]]
            keep = rows >= 0
            y[rows[keep], cols[keep]] = 1
    finally:
        con.close()
    in_db = np.zeros(len(msd_ids), dtype=bool)
    in_db[row_of_rowid[row_of_rowid >= 0]] = True
    return y, in_db


def default_splits_dir(root) -> Path:
    """`<root>/splits` when it holds Choi's lists (the synthetic set writes its own there), else the shipped lists."""
    own = Path(root) / "splits"
    return own if all(listfiles.exists(own / f"{s}_x_msd_id.txt") for s in SPLITS) else listfiles.MSD_LISTS


def _read_id_map(path) -> dict[str, str]:
    """User CSV `msd_id,path` (header optional); relative paths are relative to the CSV's folder."""
    path = Path(path)
    if not path.is_file():
        raise DataFileMissing(f"{path}: audio id map not found")
    out = {}
    with open(path, newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.reader(f)):
            if not row or (i == 0 and row[0].strip().lower() in ("msd_id", "tid", "track_id")):
                continue
            if len(row) < 2:
                raise DataError(f"{path}: line {i + 1} has {len(row)} field(s), expected 'msd_id,path'")
            p = Path(row[1].strip())
            out[row[0].strip()] = str(p if p.is_absolute() else (path.parent / p).resolve())
    return out


def _files_under(root: Path) -> set[str]:
    """Every file path under `root` (one walk: far cheaper than 242,854 stat calls on a network file system)."""
    found = set()
    for dirpath, _, files in os.walk(root):
        found.update(os.path.join(dirpath, f) for f in files)
    return found


def read(
    root, splits_dir=None, audio_root=None, id_map_csv=None, tags_db=None
) -> tuple[list[str], list[Item], list[str]]:
    """Read an MSD copy. Returns (tags, items, problems).

    Defaults [D]: splits_dir = `<root>/splits` when it holds Choi's lists, else the shipped ones (default_splits_dir),
    audio_root = `<root>/audio`, tags_db = `<root>/lastfm_tags.db`.
    id_map_csv (`msd_id,path`) replaces the d1/d2 preview layout for the ids it lists. Labels come from tags_db; when
    it is absent but every split has `{split}_y.npy`, those are used instead. Tracks whose preview is missing are left
    out and reported as one summary line (count + first ids); nothing there is fatal.
    items: Choi's order, train then valid then test; labels uint8 (50,) in top50_tags.txt order.
    """
    root = Path(root).resolve()
    splits_dir = Path(splits_dir) if splits_dir is not None else default_splits_dir(root)
    audio_root = Path(audio_root).resolve() if audio_root is not None else root / "audio"
    tags_db = Path(tags_db) if tags_db is not None else root / TAGS_DB
    tags = read_top50(splits_dir)
    lists = read_split_lists(splits_dir)
    report = Report(str(splits_dir))

    all_ids = [t for s in SPLITS for t in lists[s].msd_ids]
    if tags_db.is_file():
        y_all, in_db = labels_from_db(tags_db, all_ids, tags)
        report.summary(
            f"tracks not in {tags_db.name}: kept with no tags",
            [all_ids[i] for i in np.flatnonzero(~in_db)],
            total=len(all_ids),
        )
        # Choi's lists hold only tracks with a top-50 tag: a different db copy would show here
        report.summary(
            "tracks with no top-50 tag > 50 in the db: kept as all-negative",
            [all_ids[i] for i in np.flatnonzero(in_db & (y_all.sum(1) == 0))],
            total=len(all_ids),
        )
    else:
        ys = [read_y(splits_dir, s) for s in SPLITS]
        if any(y is None for y in ys):
            raise DataFileMissing(
                f"{tags_db}: Last.fm tag database not found, and {splits_dir} lacks "
                "train_y.npy/valid_y.npy/test_y.npy to fall back on: pass tags_db"
            )
        for s, y in zip(SPLITS, ys):
            if len(y) != len(lists[s]):
                raise DataError(f"{splits_dir}/{s}_y.npy has {len(y)} rows, {s}_x_msd_id.txt {len(lists[s])}")
        y_all = np.concatenate(ys).astype(np.uint8)
        report.add(str(splits_dir), f"no {tags_db.name}: labels taken from the *_y.npy files")
    y_all.setflags(write=False)  # Items share rows of this matrix; frozen means frozen

    id_map = _read_id_map(id_map_csv) if id_map_csv is not None else {}
    on_disk = _files_under(audio_root) if audio_root.is_dir() else set()
    items: list[Item] = []
    missing: list[str] = []
    missing_by_split = dict.fromkeys(SPLITS, 0)
    row = 0
    base = str(audio_root) + os.sep  # plain string joins: pathlib costs ~10 us a path, x 242,854
    for s in SPLITS:
        sl = lists[s]
        for tid, fname in zip(sl.msd_ids, sl.filenames):
            if tid in id_map:
                path = id_map[tid]
                ok = os.path.isfile(path)
            else:  # d1/d2/<7digital_id>.npy -> d1/d2/<7digital_id>.clip.mp3 (Choi's README)
                path = base + (fname[:-4] + ".clip.mp3" if fname.endswith(".npy") else fname).replace("/", os.sep)
                ok = path in on_disk
            if ok:
                items.append(Item(tid, path, y_all[row], s))
            else:
                missing.append(tid)
                missing_by_split[s] += 1
            row += 1
    if missing:
        per = ", ".join(f"{s} {n}" for s, n in missing_by_split.items())
        report.summary(f"tracks without a preview under {audio_root} ({per}): left out", missing, total=len(all_ids))
    return tags, items, report.lines()


@dataclass(frozen=True)
class LabelCheck:
    split: str
    compared: int  # ids present both in the items and in the y file
    mismatched: int  # rows whose 50 labels differ
    first_mismatches: tuple[str, ...]


def check_labels_against(items, tags, splits_dir) -> dict[str, LabelCheck]:
    """Compare the items' labels with Choi's `valid_y.npy` / `test_y.npy` where ids meet (a check that the db and
    the > 50 rule rebuild his labels). Splits without a y file are left out of the result."""
    splits_dir = Path(splits_dir)
    ref_tags = read_top50(splits_dir)
    if list(tags) != ref_tags:
        raise DataError(f"tag order differs from {splits_dir / TOP50_FILE}: cannot compare labels column by column")
    lists = read_split_lists(splits_dir)
    by_id = {(it.split, it.clip_id): it.labels for it in items}
    out = {}
    for s in ("valid", "test"):
        y = read_y(splits_dir, s)
        if y is None:
            continue
        if len(y) != len(lists[s]):
            raise DataError(f"{splits_dir}/{s}_y.npy has {len(y)} rows, {s}_x_msd_id.txt {len(lists[s])}")
        compared, bad = 0, []
        for tid, ref in zip(lists[s].msd_ids, y):
            mine = by_id.get((s, tid))
            if mine is None:
                continue
            compared += 1
            if not np.array_equal(mine.astype(bool), ref):
                bad.append(tid)
        out[s] = LabelCheck(s, compared, len(bad), tuple(bad[:5]))
    return out


def label_check_report(checks: dict[str, LabelCheck], splits_dir) -> tuple[str, list[Problem]]:
    """One summary line of a label check (for the console) and one Problem per split with mismatches (for the
    preprocessing report): the count and the first ids whose 50 labels differ from Choi's y file."""
    if not checks:
        return f"MSD labels: not checked ({splits_dir} has no valid_y.npy / test_y.npy)", []
    parts, problems = [], []
    for s, c in checks.items():
        parts.append(f"{s} {c.mismatched:,} of {c.compared:,} tracks differ")
        if c.mismatched:
            problems.append(
                Problem(
                    f"labels ({s})",
                    f"{c.mismatched:,} of {c.compared:,} tracks' labels from the db "
                    f"differ from Choi's {s}_y.npy (first: "
                    f"{', '.join(c.first_mismatches)})",
                )
            )
    return f"MSD labels from the db checked against Choi's y files in {splits_dir}: {'; '.join(parts)}", problems
