"""A built-in synthetic MTG-Jamendo in the real on-disk layout: split TSVs, full tracks as MP3 and low MP3, mel NPYs.

    python -m fcn.data.synth --layout jamendo --out DIR [--n 600 --seconds 4 --seed 0]

What it writes under `root` (fcn/data/jamendo.py has the real layout), everything [D]:
- `splits/autotagging_top50tags-{train,validation,test}.tsv`: the real format (CRLF, header, one tab-separated tag
  column per tag, `genre---rock`-style names from fcn.data.jamendo.TOP50); artist-disjoint splits of about 60 / 20 /
  20 % of the tracks (split-0: 59 / 20 / 21 %); every track has at least one top-50 tag.
- per track `NN/<id>.mp3` (stereo, 22.05 kHz, every 8th 44.1 kHz: both exercise the downmix and resampler),
  `NN/<id>.low.mp3` (mono, VBR, as the `audio-low` download) and `NN/<id>.npy` (as the `melspecs` download: MTG's
  Essentia pipeline, fcn/data/essentia_mel.py, float32 (96, frames), Fortran-ordered). The tracks are "full tracks":
  1 to 2.5 × `seconds` long, so the crop to the clip is exercised, and every 16th is 0.75 × `seconds` (shorter than
  the clip; real tracks never are). NN is the id's last two digits, as in the dataset (`41/241.mp3`).
- The NPY is computed from the `.mp3` decoded and resampled to 12 kHz by fcn.audio.load, the very samples the audio
  path analyses: a store built from the NPYs and one built from the audio then differ by the dB convention, the
  window and the crop's edge frames only, what fcn/melspecs.py states (the real NPYs' own resampler is measured
  apart, in results/jamendo_mel.md).
The audio comes from fcn.data.signals (tag slot k = TOP50[k]), deterministic from the seed.
"""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
import soundfile as sf

from fcn.audio import load
from fcn.data import SPLITS, essentia_mel
from fcn.data.jamendo import SPLIT_FILES, SUFFIX, TOP50
from fcn.data.signals import render, sample_labels

SPLIT_FRACTIONS = (0.6, 0.2, 0.2)  # [D] by tracks, whole artists at a time
FULL_MP3 = dict(format="MP3", subtype="MPEG_LAYER_III", bitrate_mode="CONSTANT", compression_level=0.5)
LOW_MP3 = dict(format="MP3", subtype="MPEG_LAYER_III", bitrate_mode="VARIABLE", compression_level=0.7)


def _track_rng(seed: int, i: int) -> np.random.Generator:
    return np.random.default_rng([seed, 3, i])  # one stream per track: independent of the worker count


def _write_track(job) -> None:
    base, labels, sr, n, seed, i = job
    x = render(labels, sr, n, _track_rng(seed, i), channels=2)
    base.parent.mkdir(parents=True, exist_ok=True)
    full, low, npy = (Path(str(base) + SUFFIX[k]) for k in ("audio", "audio-low", "melspecs"))
    for path, data, fmt in ((full, x, FULL_MP3), (low, x.mean(axis=1), LOW_MP3)):
        tmp = path.with_name(path.name + ".part.mp3")  # a crash leaves no truncated file behind
        sf.write(tmp, data, sr, **fmt)
        tmp.replace(path)
    mel = essentia_mel.melspectrogram(load(str(full), sr=essentia_mel.SAMPLE_RATE))
    tmp = npy.with_name(npy.name + ".part.npy")
    essentia_mel.save(tmp, mel)
    tmp.replace(npy)


def _write_all(jobs, workers: int) -> None:
    if workers > 1 and len(jobs) > 1:
        with mp.get_context("spawn").Pool(workers) as pool:
            for _ in pool.imap_unordered(_write_track, jobs, chunksize=4):
                pass
    else:
        for job in jobs:
            _write_track(job)


def _artists(rng, n: int) -> np.ndarray:
    """Artist number of each track: runs of 1-6 tracks (an artist's tracks are listed together, as in the dataset)."""
    out, a = [], 0
    while len(out) < n:
        out += [a] * int(rng.integers(1, 7))
        a += 1
    return np.array(out[:n])


def _split_by_artist(rng, artist: np.ndarray) -> np.ndarray:
    """Each artist's tracks all in one split, about SPLIT_FRACTIONS of the tracks each; none empty from 3 artists."""
    ids = rng.permutation(np.unique(artist))
    counts = np.array([np.sum(artist == a) for a in ids])
    cum = np.cumsum(counts) / len(artist)
    which = np.where(cum <= SPLIT_FRACTIONS[0], 0, np.where(cum <= SPLIT_FRACTIONS[0] + SPLIT_FRACTIONS[1], 1, 2))
    if len(ids) >= 3:  # tiny sets: make sure valid and test get an artist each
        which[0], which[-1] = 0, 2
        if not np.any(which == 1):
            which[-2] = 1
    split = np.empty(len(artist), dtype=object)
    for a, w in zip(ids, which, strict=True):
        split[artist == a] = SPLITS[w]
    return split


def make_jamendo(root, n_tracks: int = 600, seconds: float = 4.0, seed: int = 0, *, workers: int = 1) -> Path:
    """Write a synthetic MTG-Jamendo at `root` (module docstring) and return it (resolved)."""
    root = Path(root).resolve()
    (root / "splits").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 3])
    y = sample_labels(rng, n_tracks, min_tags=1)  # a top-50 list holds only tracks with a top-50 tag
    artist = _artists(rng, n_tracks)
    album = artist * 4 + rng.integers(0, 2, n_tracks)
    split = _split_by_artist(rng, artist)
    ids = 200 + np.cumsum(rng.integers(1, 40, n_tracks))
    length = seconds * rng.uniform(1.0, 2.5, n_tracks)
    length[np.arange(n_tracks) % 16 == 5] = 0.75 * seconds  # shorter than the clip: zero-padded by both paths
    rows = {s: [] for s in SPLITS}
    jobs = []
    for i in range(n_tracks):
        rel = f"{ids[i] % 100:02d}/{ids[i]}"
        tags = [TOP50[k] for k in np.flatnonzero(y[i])]
        rows[split[i]].append(
            [f"track_{ids[i]:07d}", f"artist_{artist[i]:06d}", f"album_{album[i]:06d}", rel + ".mp3"]
            + [f"{length[i]:.1f}", *tags]
        )
        sr = 44_100 if i % 8 == 0 else 22_050
        jobs.append((root / rel, y[i], sr, int(round(length[i] * sr)), seed, i))
    for s in SPLITS:
        header = "TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS"
        text = "".join(line + "\r\n" for line in [header, *("\t".join(r) for r in rows[s])])  # CRLF, as the dataset
        (root / "splits" / SPLIT_FILES[s]).write_bytes(text.encode())
    _write_all(jobs, workers)
    meta = dict(layout="jamendo", generator="fcn.data.synth_jamendo", n_tracks=n_tracks, seconds=seconds, seed=seed)
    (root / "SYNTHETIC.json").write_text(json.dumps(meta, indent=1) + "\n")
    return root
