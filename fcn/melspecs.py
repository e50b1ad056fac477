"""The fast path: a feature store straight from MTG-Jamendo's own mel-spectrograms (`--jamendo-type melspecs`).

The `melspecs` download (229 GB) holds each whole track's mel-spectrogram, `NN/<id>.npy`, made by MTG's
`scripts/melspectrograms.py` with Choi's parameters: 12 kHz, frame 512, hop 256, 96 Slaney bands (fcn/data/
essentia_mel.py says exactly how). A build reads no audio: each NPY is opened memory-mapped and only the clip's
frames are read (the files are Fortran-ordered, so those frames are one contiguous block of 96 × 1366 × 4 bytes
≈ 0.5 MB of the track's ~4 MB); nothing but one shard is ever in memory.

Checked on load, per file (a file that fails is skipped and named in the build's report, like an undecodable MP3):
a 2-D float array with 96 rows (bands) and at least one frame, finite values. The run's front end must be the one the
NPYs were made with (`check_params`: 12 kHz, n_fft 512, hop 256, 96 Slaney bands, the "track-centre" crop).

Conversion to this project's dB convention: an NPY value is 2·10·log10(max(mel, 1e-10)) of the power mel (Essentia's
lin2db with scale 2, fcn/data/essentia_mel.py), with the same Slaney filterbank as ours, so
  plain-db: 10·log10(max(mel, 1e-10))                                          = npy / 2
  authors:  10·log10(max(mel², 1e-10)), floored per clip at its peak - 80 dB   = max(npy, -100), then that floor
What cannot be converted: Essentia's window is the symmetric Hann (ours the periodic one), and the real NPYs were
resampled to 12 kHz by libsamplerate's linear interpolator (no anti-aliasing filter), ours by a windowed sinc.
Measured on the synthetic MTG-Jamendo (tests/test_data_jamendo.py; the NPY written from the very samples the audio
path analyses, so the resampler is not in it), interior frames, plain-db, in dB of the power mel:
  NPY / 2 against our front end, float32:              mean |Δ| 0.016, 99th percentile 0.094, max 0.84
  the same with Essentia's window made periodic:        max 0.0006 (float32 rounding): the window is ALL of it
  the two float16 stores (fcn.preprocess builds):       mean |Δ| 0.015, 99th percentile 0.094, max 2.2
The largest differences sit in quiet bands (-40 to -55 dB against a peak near +14 dB), where the two windows' side
lobes leak different amounts of the loud bands. The clip's first and last frame differ more (mean |Δ| 4.5 dB): the
audio crop is zero-padded at the clip's ends, the NPY's frames there see the track around them (fcn/crop.py).

Inputs: only mel. STFT and MFCC come from audio (`--jamendo-type audio` or `audio-low`), so RunConfig refuses
`--jamendo-type melspecs` with another input, in one line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from fcn.crop import first_frame
from fcn.errors import UserError

# The store's `decoder` attribute (and the preprocessing manifest's) for a store built from the NPYs: no audio
# decoder made it. fcn.preprocess runs these shards instead of decoding audio when a build names it.
NPY_DECODER = "melspecs-npy"
INPUTS = ("mel",)
NPY_FLOOR_DB = -200.0  # 2 × lin2db's floor (-100 dB for values under 1e-10)
AUTHORS_FLOOR = -100.0  # ours: 10·log10(max(mel², 1e-10)) never goes under -100
# [C] what MTG's script computed (fcn/data/essentia_mel.py); a run whose front end differs cannot use the NPYs
NPY_FRONT_END = dict(sample_rate=12_000, n_fft=512, hop=256, n_mels=96, mel_scale="slaney", mel_norm="slaney")


def check_params(params) -> None:
    """UserError (one line) when the run's front end is not the one the dataset's mel-spectrograms were made with."""
    bad = [
        f"{k} {getattr(params, k)!r} (the NPYs' is {v!r})" for k, v in NPY_FRONT_END.items() if getattr(params, k) != v
    ]
    if params.crop != "track-centre":
        bad.append(f"crop {params.crop!r} (full tracks are cut by 'track-centre')")
    if bad:
        raise UserError(
            "MTG-Jamendo's mel-spectrograms (--jamendo-type melspecs) cannot give this run's front end: "
            + "; ".join(bad)
            + ": use --jamendo-type audio or audio-low"
        )


def to_variant(npy_db: np.ndarray, variant: str) -> np.ndarray:
    """The (96, frames) NPY values in this project's mel variant (module docstring), float32."""
    x = np.maximum(np.asarray(npy_db, dtype=np.float32), NPY_FLOOR_DB)
    if variant == "plain-db":
        return x / 2
    if variant == "authors":
        x = np.maximum(x, AUTHORS_FLOOR)
        return np.maximum(x, x.max() - 80.0)  # the authors' top_db=80, per clip (fcn/frontends.py)
    raise ValueError(f"unknown front-end variant {variant!r}")


def clip(path: str, params) -> tuple[np.ndarray, str]:
    """(the clip's frames of one NPY in the params' variant, float32 (96, n_frames); a warning or ""). ValueError,
    with the reason, for a file that is not a usable mel-spectrogram."""
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"not a readable NPY ({' '.join(str(e).split()) or type(e).__name__})") from None
    if a.ndim != 2 or a.shape[0] != params.n_mels or a.shape[1] < 1:
        raise ValueError(f"shape {a.shape}, expected ({params.n_mels}, frames): not one of the dataset's mel NPYs")
    if a.dtype.kind != "f":
        raise ValueError(f"dtype {a.dtype}, expected float32")
    f = params.n_frames
    f0 = first_frame(a.shape[1], f)
    x = np.full((params.n_mels, f), NPY_FLOOR_DB, dtype=np.float32)  # past a short track's end: silence, as audio
    got = np.asarray(a[:, f0 : f0 + f], dtype=np.float32)
    x[:, : got.shape[1]] = got
    if not np.all(np.isfinite(got)):
        raise ValueError("contains NaN or infinite values")
    note = "" if got.shape[1] == f else f"short: {a.shape[1]} frames, padded to {f}"
    return to_variant(x, params.variant), note


def process_shard(job, send) -> None:
    """fcn.preprocess's shard task for NPYs: each clip's mel from its NPY, the part written atomically (the same
    part format as audio shards: `status` + `mel`)."""
    items, params, inputs, dest, _decoder, preskip = job
    if tuple(inputs) != INPUTS:
        raise UserError(f"the dataset's mel-spectrograms give only the mel input, not {', '.join(inputs)}")
    mels, status = [], []
    for j, (_cid, path) in enumerate(items):
        if j in preskip:
            status.append(("skip", preskip[j]))
            continue
        send("clip", j)
        try:
            x, note = clip(path, params)
        except ValueError as e:
            status.append(("skip", str(e)))
            continue
        mels.append(x)
        status.append(("ok", note))
    send("compute")
    feats = {"mel": np.stack(mels).astype(np.float16)} if mels else {}  # round to nearest even, as torch's half()
    tmp = Path(f"{dest}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, status=np.array(json.dumps(status)), **feats)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, dest)
