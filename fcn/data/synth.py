"""Built-in synthetic data sets in MagnaTagATune's and the Million Song Dataset's real on-disk layouts.

Deterministic from a seed (same seed -> byte-identical index files and MP3s), no download, ~30 s for 1,200 clips of
4 s on one core. The audio comes from fcn.data.signals (one generator for both): every tag slot has an acoustic
signature, so ROC-AUC on these sets measures something. The readers (fcn.data.mtat / fcn.data.msd) read these exactly
as they read the real data; the layouts follow PAPER.md (Datasets). Everything synthetic is [D].

    python -m fcn.data.synth --layout mtat --out DIR [--n 1200 --seconds 4 --seed 0]
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import sqlite3
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from fcn.data import MSD_TOP50, MTAT_TOP50, SPLITS
from fcn.data.signals import N_SLOTS, render, sample_labels
from fcn.data.synth_jamendo import make_jamendo  # the third layout, in its own module

FOLDERS = "0123456789abcdef"
BROKEN_ID, BROKEN_PATH = "35644", "6/norine_braun-now_and_zen-08-gently-117-146.mp3"  # PAPER.md: an empty file
# Real MTAT tag columns outside the top 50, misspellings included (annotations_final.csv has 188 tag columns);
# they carry no acoustic signature: readers must select the top-50 columns by name.
MTAT_EXTRA_TAGS = (
    "jazz",
    "baroque",
    "hard rock",
    "female opera",
    "banjo",
    "harpsicord",
    "clasical",
    "trance",
    "eerie",
    "world",
)
# Last.fm tags outside the top 50; 'mellow' / 'hip hop' are near-twins of 'Mellow' / 'Hip-Hop': matching is exact.
MSD_EXTRA_TAGS = (
    "seen live",
    "favorites",
    "Awesome",
    "love",
    "british",
    "american",
    "mellow",
    "hip hop",
    "female vocals",
    "singer-songwriter",
    "psychedelic",
    "reggae",
    "trip-hop",
    "soundtrack",
    "post-rock",
    "emo",
    "grunge",
    "piano",
    "lounge",
    "downtempo",
)
SYLLABLES = ("ka", "lo", "mi", "ra", "ven", "do", "sta", "ber", "ni", "qua", "tor", "el", "za", "phi", "mun", "gro")

MTAT_SR = 16_000  # PAPER.md: MTAT clips are 16 kHz mono MP3 at 32 kbps
MTAT_MP3 = dict(format="MP3", subtype="MPEG_LAYER_III", bitrate_mode="CONSTANT", compression_level=0.85)  # 32 kbps
# Real 7digital previews are 44.1 kHz stereo; most of ours are 22.05 kHz stereo to halve the encoding time, every
# 8th is 44.1 kHz: both exercise the decoder's downmix and resampler.
MSD_MP3 = dict(format="MP3", subtype="MPEG_LAYER_III", bitrate_mode="CONSTANT", compression_level=0.5)
MSD_SPLIT_FRACTIONS = (0.7, 0.1, 0.2)  # [D] Choi's is 83/5/12 %: more valid/test keeps small sets' AUCs defined


def _name(rng, n_words: int) -> str:
    words = ["".join(rng.choice(SYLLABLES, rng.integers(2, 4))) for _ in range(n_words)]
    return "_".join(words)


def _write_tsv(path: Path, header, rows) -> None:
    # MTAT's files: tab-separated, every field double-quoted, "\n" line ends
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", quotechar='"', quoting=csv.QUOTE_ALL, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def _clip_rng(seed: int, layout: str, i: int) -> np.random.Generator:
    # one independent stream per clip: a clip's audio does not depend on how many clips come before it or on workers
    return np.random.default_rng([seed, {"mtat": 1, "msd": 2}[layout], i])


def _write_clip(job) -> None:
    path, labels, sr, n, channels, seed, layout, i, mp3 = job
    x = render(labels, sr, n, _clip_rng(seed, layout, i), channels=channels)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(path) + ".part")  # a crash leaves no truncated .mp3 behind
    sf.write(tmp, x, sr, **mp3)
    tmp.replace(path)


def _write_all(jobs, workers: int) -> None:
    if workers > 1 and len(jobs) > 1:
        with mp.get_context("spawn").Pool(workers) as pool:
            for _ in pool.imap_unordered(_write_clip, jobs, chunksize=8):
                pass
    else:
        for job in jobs:
            _write_clip(job)


# ----------------------------------------------------------------------------------------------------- MagnaTagATune


def _mtat_catalogue(rng, n_clips: int):
    """Albums -> tracks -> 29 s segments, like Magnatune: all clips of an album in one folder; albums go round-robin
    over the 16 folders so the folder split is ≈ 12/1/3 sixteenths at any size."""
    clips, album_no, used = [], 0, set()
    while len(clips) < n_clips:
        artist, album = _name(rng, 2), _name(rng, rng.integers(1, 4))
        if (artist, album) in used:  # two albums must never share file names
            continue
        used.add((artist, album))
        folder = FOLDERS[album_no % 16]
        for track in range(1, int(rng.integers(1, 4)) + 1):
            title = _name(rng, rng.integers(1, 4))
            for seg in range(int(rng.integers(1, 4))):
                start = 0 if seg == 0 else 30 + 29 * (seg - 1)  # MTAT's segment names: 0-29, 30-59, 59-88, ...
                path = f"{folder}/{artist}-{album}-{track:02d}-{title}-{start}-{start + 29}.mp3"
                clips.append(
                    dict(
                        track_number=track,
                        title=title,
                        artist=artist,
                        album=album,
                        segmentStart=start,
                        segmentEnd=start + 29,
                        mp3_path=path,
                    )
                )
        album_no += 1
    return clips[:n_clips]


def make_mtat(
    root, n_clips: int = 1200, seconds: float = 4.0, seed: int = 0, *, broken: bool = True, workers: int = 1
) -> Path:
    """Write a synthetic MagnaTagATune copy at `root` and return it (resolved).

    Files: annotations_final.csv (clip_id, 60 tag columns = the top 50 + 10 rarer real ones in a shuffled order,
    mp3_path), clip_info_final.csv, `<folder>/<artist>-<album>-<NN>-<title>-<start>-<end>.mp3` (16 kHz mono, 32 kbps,
    `seconds` long), splits/{train,valid,test}_list_pub.txt (the "clean" lists, made like Lee's: folder split, clips
    with >= 1 top-50 tag, `.npy` names), SYNTHETIC.json (the parameters). broken=True adds MTAT's empty clip 35644.
    """
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 1])
    clips = _mtat_catalogue(rng, n_clips)
    y = sample_labels(rng, n_clips)
    extra = rng.random((n_clips, len(MTAT_EXTRA_TAGS))) < rng.uniform(0.01, 0.03, len(MTAT_EXTRA_TAGS))
    ids = np.cumsum(rng.integers(1, 5, n_clips)) + 1  # integer-like ids with gaps, increasing with row order
    ids[ids >= int(BROKEN_ID)] += 1  # 35644 is reserved for the broken clip
    columns = list(MTAT_TOP50) + list(MTAT_EXTRA_TAGS)
    order = rng.permutation(len(columns))  # the real header is in no useful order either
    header = ["clip_id"] + [columns[j] for j in order] + ["mp3_path"]

    values = np.concatenate([y, extra.astype(np.uint8)], axis=1)[:, order]
    rows = [[str(ids[i])] + [str(v) for v in values[i]] + [c["mp3_path"]] for i, c in enumerate(clips)]
    info = [
        [
            str(ids[i]),
            str(c["track_number"]),
            c["title"].replace("_", " "),
            c["artist"].replace("_", " "),
            c["album"].replace("_", " "),
            f"synthetic://{c['artist']}/{c['album']}",
            str(c["segmentStart"]),
            str(c["segmentEnd"]),
            f"synthetic://{c['artist']}/{c['album']}/{c['track_number']:02d}",
            c["mp3_path"],
        ]
        for i, c in enumerate(clips)
    ]
    if broken:
        b_values = np.zeros(len(columns), dtype=np.uint8)
        b_values[MTAT_TOP50.index("female")] = 1
        pos = int(np.searchsorted(ids, int(BROKEN_ID)))
        rows.insert(pos, [BROKEN_ID] + [str(v) for v in b_values[order]] + [BROKEN_PATH])
        info.insert(
            pos,
            [
                BROKEN_ID,
                "8",
                "gently",
                "norine braun",
                "now and zen",
                "synthetic://broken",
                "117",
                "146",
                "synthetic://broken/08",
                BROKEN_PATH,
            ],
        )
    _write_tsv(root / "annotations_final.csv", header, rows)
    _write_tsv(
        root / "clip_info_final.csv",
        [
            "clip_id",
            "track_number",
            "title",
            "artist",
            "album",
            "url",
            "segmentStart",
            "segmentEnd",
            "original_url",
            "mp3_path",
        ],
        info,
    )

    n = int(round(seconds * MTAT_SR))
    jobs = [(root / c["mp3_path"], y[i], MTAT_SR, n, 1, seed, "mtat", i, MTAT_MP3) for i, c in enumerate(clips)]
    _write_all(jobs, workers)
    if broken:
        (root / BROKEN_PATH).parent.mkdir(parents=True, exist_ok=True)
        (root / BROKEN_PATH).write_bytes(b"")

    split_of = {**{f: "train" for f in FOLDERS[:12]}, "c": "valid", **{f: "test" for f in "def"}}
    lists = {s: [] for s in SPLITS}
    for i, c in enumerate(clips):
        if y[i].any():
            lists[split_of[c["mp3_path"][0]]].append(c["mp3_path"][:-4] + ".npy")
    (root / "splits").mkdir(exist_ok=True)
    for s in SPLITS:
        (root / "splits" / f"{s}_list_pub.txt").write_text("".join(p + "\n" for p in sorted(lists[s])))
    _write_meta(root, "mtat", n_clips=n_clips, seconds=seconds, seed=seed, broken=broken)
    return root


# ----------------------------------------------------------------------------------------------- Million Song Dataset


def _msd_ids(rng, n: int) -> list[str]:
    letters = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    hexd = np.array(list("0123456789ABCDEF"))
    out: set[str] = set()
    while len(out) < n:  # 'TR' + 16: e.g. TRAAAAK128F9318786
        out.add("TR" + "".join(rng.choice(letters, 5)) + "128F" + "".join(rng.choice(hexd, 7)))
    return sorted(out)


def _write_tags_db(path: Path, rng, tids: list[str], y: np.ndarray, extra_tids: list[str]) -> None:
    """lastfm_tags.db with the real schema; values 0-100, positives (> 50) for y's 1s, sub-threshold noise (1-50,
    including exactly 50) for some 0s, and extra tags / tracks the reader must ignore."""
    if path.exists():
        path.unlink()
    con = sqlite3.connect(path)
    con.executescript("""
        CREATE TABLE tids (tid TEXT);
        CREATE TABLE tags (tag TEXT);
        CREATE TABLE tid_tag (tid INT, tag INT, val FLOAT);
    """)
    all_tids = tids + extra_tids
    tid_order = rng.permutation(len(all_tids))  # ROWIDs in no useful order
    con.executemany("INSERT INTO tids (tid) VALUES (?)", [(all_tids[j],) for j in tid_order])
    tid_rowid = {all_tids[j]: r + 1 for r, j in enumerate(tid_order)}
    tag_names = list(MSD_TOP50) + list(MSD_EXTRA_TAGS)
    tag_order = rng.permutation(len(tag_names))
    con.executemany("INSERT INTO tags (tag) VALUES (?)", [(tag_names[j],) for j in tag_order])
    tag_rowid = {tag_names[j]: r + 1 for r, j in enumerate(tag_order)}

    rows = []
    for i, tid in enumerate(tids):
        for k in range(N_SLOTS):
            if y[i, k]:
                val = 100.0 if rng.random() < 0.3 else float(rng.integers(51, 101))
            elif rng.random() < 0.08:
                val = 50.0 if rng.random() < 0.2 else float(rng.integers(1, 50))  # 50 is not > 50: negative
            else:
                continue
            rows.append((tid_rowid[tid], tag_rowid[MSD_TOP50[k]], val))
    for tid in all_tids:  # extra tags on every kind of track; db-only tracks have only these
        for name in rng.choice(MSD_EXTRA_TAGS, rng.integers(0, 4), replace=False):
            rows.append((tid_rowid[tid], tag_rowid[str(name)], float(rng.integers(1, 101))))
    order = rng.permutation(len(rows))
    con.executemany("INSERT INTO tid_tag VALUES (?, ?, ?)", [rows[j] for j in order])
    con.executescript("""
        CREATE INDEX idx_tids_tid ON tids (tid);
        CREATE INDEX idx_tags_tag ON tags (tag);
        CREATE INDEX idx_tid_tag_tid ON tid_tag (tid);
        CREATE INDEX idx_tid_tag_tag ON tid_tag (tag);
    """)
    con.commit()
    con.close()


def make_msd(
    root, n_tracks: int = 600, seconds: float = 4.0, seed: int = 0, *, n_missing: int = 0, workers: int = 1
) -> Path:
    """Write a synthetic Million Song Dataset copy at `root` and return it (resolved).

    Files: lastfm_tags.db (tables tids, tags, tid_tag), splits/ in Choi's format ({train,valid,test}_x_msd_id.txt,
    _x_7d_id.txt, _x_filename.txt, top50_tags.txt, valid_y.npy, test_y.npy), and previews
    audio/<d1>/<d2>/<7digital_id>.clip.mp3 (stereo, 22.05 or 44.1 kHz, `seconds` to 1.25x `seconds` long, so the
    pipeline's centre crop is exercised). Every split track has >= 1 top-50 tag (as in Choi's lists); 10 % more
    tracks live only in the db. n_missing previews are left out (a user's incomplete copy).
    """
    root = Path(root).resolve()
    (root / "splits").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 2])
    n_extra = max(1, n_tracks // 10)
    all_ids = _msd_ids(rng, n_tracks + n_extra)
    pick = rng.permutation(len(all_ids))
    ids = [all_ids[j] for j in sorted(pick[:n_tracks])]
    extra_ids = [all_ids[j] for j in sorted(pick[n_tracks:])]
    sevend = 100_000 + rng.choice(9_900_000, n_tracks, replace=False)  # 7digital ids: 6-7 digits, unique
    y = sample_labels(rng, n_tracks, min_tags=1)
    # exact split sizes, each split non-empty from 3 tracks on, so valid/test metrics exist even for tiny sets
    n_valid = max(1, round(MSD_SPLIT_FRACTIONS[1] * n_tracks)) if n_tracks >= 3 else 0
    n_test = max(1, round(MSD_SPLIT_FRACTIONS[2] * n_tracks)) if n_tracks >= 3 else 0
    split = np.array(["train"] * (n_tracks - n_valid - n_test) + ["valid"] * n_valid + ["test"] * n_test)
    split = split[rng.permutation(n_tracks)]
    _write_tags_db(root / "lastfm_tags.db", rng, ids, y, extra_ids)

    sp = root / "splits"
    for s in SPLITS:
        idx = np.flatnonzero(split == s)  # ids are sorted, so each list is too, like Choi's
        (sp / f"{s}_x_msd_id.txt").write_text("".join(ids[i] + "\n" for i in idx))
        (sp / f"{s}_x_7d_id.txt").write_text("".join(f"{sevend[i]}\n" for i in idx))
        (sp / f"{s}_x_filename.txt").write_text("".join(f"{_d1d2(sevend[i])}/{sevend[i]}.npy\n" for i in idx))
        if s != "train":  # Choi's train_y.npy is too big for the snapshot (README); valid/test ship
            np.save(sp / f"{s}_y.npy", y[idx].astype(bool))
    (sp / "top50_tags.txt").write_text("".join(t + "\n" for t in MSD_TOP50))

    missing = set(rng.choice(n_tracks, min(n_missing, n_tracks), replace=False).tolist()) if n_missing else set()
    jobs = []
    for i in range(n_tracks):
        if i in missing:
            continue
        sr = 44_100 if i % 8 == 0 else 22_050
        n = int(round(seconds * rng.uniform(1.0, 1.25) * sr))
        path = root / "audio" / _d1d2(sevend[i]) / f"{sevend[i]}.clip.mp3"
        jobs.append((path, y[i], sr, n, 2, seed, "msd", i, MSD_MP3))
    _write_all(jobs, workers)
    _write_meta(root, "msd", n_tracks=n_tracks, seconds=seconds, seed=seed, n_missing=n_missing)
    return root


def _d1d2(sevend_id) -> str:
    s = str(int(sevend_id))
    return f"{s[0]}/{s[1]}"


def _write_meta(root: Path, layout: str, **params) -> None:
    meta = dict(layout=layout, generator="fcn.data.synth", **params)
    (root / "SYNTHETIC.json").write_text(json.dumps(meta, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------------------- the CLI


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m fcn.data.synth",
        description=__doc__.split("\n\n")[0],
        epilog="Layouts: PAPER.md (Datasets). Same seed, same bytes.",
    )
    ap.add_argument(
        "--layout", choices=("mtat", "msd", "jamendo"), required=True, help="which data set's on-disk layout"
    )
    ap.add_argument("--out", required=True, help="folder to write (created; existing files are overwritten)")
    ap.add_argument(
        "--n", type=int, default=None, help="clips (MTAT, default 1200) or tracks (MSD, MTG-Jamendo: default 600)"
    )
    ap.add_argument("--seconds", type=float, default=4.0, help="clip length in seconds (default 4)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--workers", type=int, default=1, help="processes writing audio (default 1)")
    ap.add_argument("--missing", type=int, default=0, help="MSD only: previews to leave out (default 0)")
    a = ap.parse_args(argv)
    if (a.n is not None and a.n < 1) or a.seconds <= 0:
        ap.error("--n must be >= 1 and --seconds > 0")
    if a.layout == "mtat":
        root = make_mtat(a.out, a.n or 1200, a.seconds, a.seed, workers=a.workers)
    elif a.layout == "jamendo":
        root = make_jamendo(a.out, a.n or 600, a.seconds, a.seed, workers=a.workers)
    else:
        root = make_msd(a.out, a.n or 600, a.seconds, a.seed, n_missing=a.missing, workers=a.workers)
    print(f"wrote a synthetic {a.layout.upper()} set to {root}", file=sys.stderr)


if __name__ == "__main__":
    main()
