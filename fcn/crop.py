"""How a decoded recording becomes the front end's fixed-length clip: the crop rules (FrontEndParams.crop).

- "centre" [C] (PAPER.md, Front ends): zero-pad at the end if short, centre-crop at sample precision if long
  (fcn.audio.fix_length). For clips and previews: MTAT's 29.1 s, MSD's 30-60 s. A file over 600 s is refused as not
  a clip at all (a whole album in the wrong place).
- "track-centre" [D], for full tracks (MTG-Jamendo: mean 245 s, 1,077 of 54,380 over 600 s, the longest 69 min): the
  clip's `n_frames` frames at the centre of the track's own frame grid, the grid of the data set's precomputed
  mel-spectrograms. Those NPYs frame the whole track as Essentia's FrameGenerator does in MTG's
  `scripts/melspectrograms.py` (startFromZero=False): frames centred at 0, hop, 2·hop, ..., the last one the first
  whose centre is at or past the end, so a track of m samples has ceil(m / hop) + 1 of them (`track_frames`). The
  crop takes frames f0 .. f0 + n_frames - 1 with f0 = (track_frames - n_frames) // 2 (`first_frame`): from audio,
  the samples f0·hop .. f0·hop + n_samples (a centre crop whose start is a whole number of hops); from an NPY, those
  columns. Both then hold the same frames, centred on the same samples, and a store built from the NPYs matches one
  built from the audio (fcn/melspecs.py; only the two edge frames differ: the audio crop's are zero-padded at the
  crop's ends, the NPY's see the track around them). Why the centre: it is MTG's own rule for Choi's model (their
  script, without --full, cuts a centred 29.1-s segment), and the paper's for MSD. Won et al. 2020 instead
  test on the mean of 16 chunks of 29 s (at 16 kHz) starting at i·(L - 29 s) // 16, i = 0..15 (their
  training/eval.py, minzwon/sota-music-tagging-models), and train on a random 29-s chunk at every step [U: their
  loader, not re-read here]; this project's stores hold one clip per track, so that rule is not offered and the two
  are not measured against each other ([U] how much it changes the AUCs here: a 16-chunk test is a later option).
  Tracks shorter than the clip (none in MTG-Jamendo's raw_30s, all >= 30 s) are zero-padded at the end, as "centre".

The preprocessing workers and the NPY path share it.
"""

from __future__ import annotations

import numpy as np

from fcn.audio import fix_length

CROPS = ("centre", "track-centre")
# [D] the longest file "track-centre" decodes (fcn.preprocess.MAX_SECONDS, 600 s, bounds "centre"): MTG-Jamendo's
# longest track (4,140 s) with room to spare. A 69-min 44.1-kHz stereo MP3 decodes to ~1.5 GB of float32 in one
# worker, briefly.
MAX_TRACK_SECONDS = 7200.0


def check_crop(crop: str) -> str:
    if crop not in CROPS:
        raise ValueError(f"unknown crop rule {crop!r}: choose one of {', '.join(CROPS)}")
    return crop


def track_frames(n: int, hop: int) -> int:
    """Frames of a whole track of `n` samples on Essentia's centred grid: ceil(n / hop) + 1 (module docstring)."""
    return -(-int(n) // int(hop)) + 1


def first_frame(n_track_frames: int, n_clip_frames: int) -> int:
    """The first of the clip's frames in the track's grid: the clip's frames sit at the grid's centre (rounded down);
    0 for a track with fewer frames than the clip."""
    return max(0, (int(n_track_frames) - int(n_clip_frames)) // 2)


def cut(x: np.ndarray, params) -> np.ndarray:
    """`x` (mono, at params.sample_rate) cut to exactly params.n_samples by the params' crop rule."""
    n = params.n_samples
    if check_crop(params.crop) == "centre":
        return fix_length(x, n)
    start = first_frame(track_frames(len(x), params.hop), params.n_frames) * params.hop
    return fix_length(x[start : start + n], n)  # zero-padded at the end when the track is short
