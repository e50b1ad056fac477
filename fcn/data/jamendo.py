"""MTG-Jamendo reader: split-0's top-50 TSVs -> labels in the fixed top-50 order -> audio or NPY paths -> list[Item].

Facts (MTG/mtg-jamendo-dataset at commit 1b4fa8c; fcn/data/splits/README.md): each split is one TSV,
`autotagging_top50tags-{train,validation,test}.tsv`, CRLF line ends, header `TRACK_ID ARTIST_ID ALBUM_ID PATH
DURATION TAGS`, then one track per line: `track_0000241  artist_000005  album_000033  41/241.mp3  340.1  genre---rock`
and as many further tag columns as the track has tags (1 to 16 in split-0). PATH is relative to the folder the
dataset's download script (`scripts/download/download.py --type ... --unpack`) unpacks into; what sits there depends
on the `--type` downloaded [C: the download lists `data/download/*_sha256_tracks.txt`]:
  audio      `41/241.mp3`      320 kbps MP3, full tracks (508 GB for raw_30s)
  audio-low  `41/241.low.mp3`  mono LAME VBR -V 2 MP3 (156 GB)
  melspecs   `41/241.npy`      the track's whole mel-spectrogram, Essentia, float32 (96, frames) (229 GB;
                               fcn/melspecs.py)
All three downloads unpacked into one folder sit side by side. Split-0: 32,136 / 10,888 / 11,356 tracks, no artist in
two splits (checked on every read: lists where an artist crosses splits are refused). The lists ship with the package
(fcn/data/splits/jamendo, checksummed, CC BY-NC-SA 4.0); `<root>/splits/` or --splits-dir take precedence.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fcn.data import SPLITS, DataError, DataFileMissing, Item, Report
from fcn.data import lists as listfiles

# The top 50 in the dataset's own order, data/tags/top50.txt (= its baseline's tag_list_50.npy; Won et al.'s loader
# lists the same 50 in another order): alphabetical, hence 31 genres, 14 instruments, 5 moods/themes. A model's
# output k is tag k of this list; Won's order would only permute the outputs, not change a macro AUC.
TOP50 = (
    *(
        f"genre---{g}"
        for g in (
            "alternative ambient atmospheric chillout classical dance downtempo easylistening electronic "
            "experimental folk funk hiphop house indie instrumentalpop jazz lounge metal newage orchestral pop "
            "popfolk poprock reggae rock soundtrack techno trance triphop world"
        ).split()
    ),
    *(
        f"instrument---{i}"
        for i in (
            "acousticguitar bass computer drummachine drums electricguitar electricpiano guitar keyboard piano "
            "strings synthesizer violin voice"
        ).split()
    ),
    *(f"mood/theme---{m}" for m in "emotional energetic film happy relaxing".split()),
)
assert len(TOP50) == 50 and list(TOP50) == sorted(TOP50)

HEADER = ("TRACK_ID", "ARTIST_ID", "ALBUM_ID", "PATH", "DURATION", "TAGS")
SPLIT_FILES = {
    "train": "autotagging_top50tags-train.tsv",
    "valid": "autotagging_top50tags-validation.tsv",
    "test": "autotagging_top50tags-test.tsv",
}
SPLIT0_SIZES = {"train": 32_136, "valid": 10_888, "test": 11_356}  # [C] the dataset's split-0
SHIPPED = listfiles.PACKAGED / "jamendo"
# What each download type (`download.py --type`) puts at a track's PATH, `NN/<id>.mp3` [C].
TYPES = ("audio", "audio-low", "melspecs")
SUFFIX = {"audio": ".mp3", "audio-low": ".low.mp3", "melspecs": ".npy"}


@dataclass(frozen=True)
class Track:
    """One line of a split TSV."""

    track_id: str
    artist_id: str
    album_id: str
    path: str  # relative, as listed: NN/<id>.mp3
    duration: float  # seconds, as listed
    tags: tuple[str, ...]


def read_split_file(path) -> list[Track]:
    """One split TSV (plain or .xz; its sha256 checked where a SHA256SUMS lists it). CRLF or LF line ends; DataError
    for a wrong header or a line with fewer than six fields (every track of a top-50 list has at least one tag)."""
    path = Path(path)
    if not listfiles.exists(path):
        raise DataFileMissing(f"{path}: MTG-Jamendo split list not found")
    lines = listfiles.read_text(path).splitlines()  # splits "\r\n" too: the dataset's files end lines with CRLF
    if not lines or tuple(lines[0].split("\t")) != HEADER:
        raise DataError(f"{path}: expected the header {' '.join(HEADER)} (tab-separated) on line 1")
    tracks = []
    for no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        f = line.split("\t")
        if len(f) < 6:
            raise DataError(f"{path}: line {no} has {len(f)} fields, expected the 5 columns and at least one tag")
        try:
            duration = float(f[4])
        except ValueError:
            raise DataError(f"{path}: line {no}: DURATION {f[4]!r} is not a number") from None
        tracks.append(Track(f[0], f[1], f[2], f[3], duration, tuple(t for t in f[5:] if t)))
    return tracks


def read_splits(splits_dir) -> dict[str, list[Track]]:
    """The three split lists; DataError when a track is in two of them or an artist has tracks in two of them (the
    point of the dataset's splits: no artist is seen in training and then tested)."""
    d = Path(splits_dir)
    splits = {s: read_split_file(d / name) for s, name in SPLIT_FILES.items()}
    where: dict[str, str] = {}
    for s, tracks in splits.items():
        for t in tracks:
            if t.track_id in where:
                raise DataError(f"{d}: track {t.track_id} is listed twice (in the {where[t.track_id]} and {s} lists)")
            where[t.track_id] = s
    artists = {s: {t.artist_id for t in tracks} for s, tracks in splits.items()}
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            both = sorted(artists[a] & artists[b])
            if both:
                raise DataError(
                    f"{d}: {len(both)} artist(s) have tracks in both the {a} and the {b} list (first: "
                    f"{', '.join(both[:3])}): MTG-Jamendo's splits are artist-disjoint; these lists are not one of them"
                )
    return splits


def default_splits_dir(root) -> Path:
    """`<root>/splits` when it holds the three TSVs (the synthetic set writes its own there), else the shipped ones."""
    own = Path(root) / "splits"
    return own if all(listfiles.exists(own / name) for name in SPLIT_FILES.values()) else SHIPPED


def file_path(root: Path, listed: str, kind: str) -> str:
    """Where a listed PATH (`41/241.mp3`) is for a download type: `.mp3`, `.low.mp3` or `.npy` in the same folder."""
    stem = listed[:-4] if listed.endswith(".mp3") else listed
    return str(root / (stem + SUFFIX[kind]))


def read(root, splits_dir=None, kind: str = "audio") -> tuple[list[str], list[Item], list[str]]:
    """Read an MTG-Jamendo download at `root` for one download type (`kind`: TYPES). Returns (tags, items, problems).

    tags: TOP50. items: the lists' order, train then valid then test; labels uint8 (50,) in TOP50 order; clip_id is
    TRACK_ID. problems: tags outside the top 50 (ignored) and tracks whose file is missing (left out, one summary
    line); nothing there is fatal. Fatal: a missing or malformed list, a track or artist in two splits.
    """
    if kind not in TYPES:
        raise DataError(f"unknown MTG-Jamendo download type {kind!r}: choose one of {', '.join(TYPES)}")
    root = Path(root).resolve()
    splits_dir = Path(splits_dir) if splits_dir is not None else default_splits_dir(root)
    splits = read_splits(splits_dir)
    report = Report(str(splits_dir))
    col = {t: i for i, t in enumerate(TOP50)}
    on_disk = set()
    # one walk, not 54,380 stat calls (network file systems); NN/ folders may be symlinks to other disks
    for dirpath, _, files in os.walk(root, followlinks=True):
        on_disk.update(os.path.join(dirpath, f) for f in files)
    items: list[Item] = []
    missing: list[str] = []
    for s in SPLITS:
        for t in splits[s]:
            y = np.zeros(len(TOP50), dtype=np.uint8)
            for tag in t.tags:
                if tag in col:
                    y[col[tag]] = 1
                else:
                    report.add(t.track_id, f"tag {tag!r} is not one of the top 50: ignored")
            path = file_path(root, t.path, kind)
            if path not in on_disk:
                missing.append(t.track_id)
                continue
            y.setflags(write=False)
            items.append(Item(t.track_id, path, y, s))
    total = sum(len(v) for v in splits.values())
    report.summary(
        f"tracks without their {SUFFIX[kind]} file under {root} (--jamendo-type {kind}): left out", missing, total
    )
    return list(TOP50), items, report.lines()
