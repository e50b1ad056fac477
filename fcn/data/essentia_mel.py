"""MTG-Jamendo's mel-spectrograms as the dataset computed them, reimplemented in numpy (no Essentia needed).

MTG's `scripts/melspectrograms.py` (MTG/mtg-jamendo-dataset, read at commit 0213104) makes each `NN/<id>.npy` of the
`melspecs` download with Essentia, from the whole track ("--full"; 229 GB for 55k tracks of mean 245 s fits that and
not its 29.1-s option):
  MonoLoader(sampleRate=12000, resampleQuality=4)       12 kHz mono; quality 4 is libsamplerate's SRC_LINEAR
  FrameGenerator(frameSize=512, hopSize=256, startFromZero=False)   frames centred at 0, 256, ...: ceil(m/256) + 1
  Windowing(type='hann', normalized=False)              a symmetric Hann (denominator 511), zero-phase (phase only)
  Spectrum()                                            |rfft|, 257 bins
  MelBands(96 bands, 0-6000 Hz, slaneyMel, weighting 'linear', normalize 'unit_tri', type 'power')
  UnaryOperator(type='lin2db', scale=2)                 scale multiplies the RESULT: 2 · 10·log10(x), floor -200
  numpy.save(npy, pool['mel'].T)                        float32 (96, frames), written Fortran-ordered
What each Essentia step does was READ from Essentia's source (MTG/essentia at b9fa6cb: windowing.cpp's hann() divides
by size - 1; unaryoperator.cpp applies `scale` after the operator; essentiamath.h's lin2db gives -100 dB under 1e-10;
triangularbands.cpp's 'unit_tri' divides each triangle by half its width in Hz, librosa's Slaney normalisation;
framecutter.cpp ends with the first frame whose centre is at or past the end; resample.cpp passes the quality to
libsamplerate, where 4 is SRC_LINEAR). Essentia itself is not a dependency and was not run here [U: the real NPYs are
not checked against this code; a user with the melspecs download can: `fcn.melspecs.clip` refuses malformed files].
So a stored NPY value is 20·log10(max(mel, 1e-10)) of the power mel: twice this project's plain-db value, i.e. the
authors' doubled scale (their 10·log10(mel²)) without the authors' per-clip 80-dB floor. fcn/melspecs.py converts.

`melspectrogram` below is that pipeline from a 12 kHz signal (the resampling is the caller's): the synthetic MTG-Jamendo
(fcn/data/synth_jamendo.py) writes its NPYs with it. It computes in float64 and rounds at the end (Essentia: float32).
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 12_000  # [C] MTG's script, as Choi 2016
FRAME = 512
HOP = 256
N_MELS = 96
LIN2DB_FLOOR = 1e-10  # Essentia's lin2db: values under it give -100 dB
SCALE = 2.0  # UnaryOperator(type='lin2db', scale=2): the dB value is doubled
CHUNK_FRAMES = 4096  # frames analysed at once: a 69-min track never needs its whole frame matrix in memory


def hz_to_mel(f):
    """Slaney's mel scale (Auditory Toolbox; librosa htk=False, Essentia 'slaneyMel'): linear below 1 kHz, log above."""
    f = np.asarray(f, dtype=np.float64)
    lin = f / (200.0 / 3)
    return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-12) / 1000.0) / (np.log(6.4) / 27.0), lin)


def mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), (200.0 / 3) * m)


def filterbank(
    sr: int = SAMPLE_RATE, n_fft: int = FRAME, n_mels: int = N_MELS, fmax: float | None = None
) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1): triangles evenly spaced in Slaney mel between 0 and fmax (default Nyquist), linear
    in Hz, each scaled by 2 / its width in Hz (unit area) — Essentia's MelBands 'unit_tri' with 'linear' weighting,
    as measured (module docstring)."""
    fmax = sr / 2 if fmax is None else fmax
    edges = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(fmax), n_mels + 2))
    freqs = np.linspace(0.0, sr / 2, n_fft // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rise = (freqs[None, :] - lo) / (mid - lo)
    fall = (hi - freqs[None, :]) / (hi - mid)
    return np.maximum(0.0, np.minimum(rise, fall)) * (2.0 / (hi - lo))


def window(size: int = FRAME) -> np.ndarray:
    """Essentia's Hann (symmetric: 0.5 - 0.5 cos(2πi / (size - 1))); torch's and this project's is the periodic one
    (denominator `size`): the one difference fcn/melspecs.py cannot convert away."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(size) / (size - 1))


def n_frames(n_samples: int) -> int:
    """Frames FrameGenerator cuts from n samples with startFromZero=False (fcn/crop.py, track_frames)."""
    return -(-int(n_samples) // HOP) + 1


def melspectrogram(audio: np.ndarray) -> np.ndarray:
    """The NPY MTG's script writes for a 12 kHz mono signal: float32 (96, frames), 2·10·log10 of the power mel."""
    x = np.asarray(audio, dtype=np.float64)
    t = n_frames(len(x))
    # frame k covers samples [k·hop - hop, k·hop + hop): pad one hop in front and enough behind for the last frame
    padded = np.zeros(HOP + (t - 1) * HOP + FRAME, dtype=np.float64)
    padded[HOP : HOP + len(x)] = x
    fb, w = filterbank(), window()
    out = np.empty((t, N_MELS), dtype=np.float32)
    for a in range(0, t, CHUNK_FRAMES):
        b = min(t, a + CHUNK_FRAMES)
        idx = (np.arange(a, b) * HOP)[:, None] + np.arange(FRAME)[None, :]
        power = np.abs(np.fft.rfft(padded[idx] * w, axis=1)) ** 2
        mel = power @ fb.T
        out[a:b] = SCALE * 10.0 * np.log10(np.maximum(mel, LIN2DB_FLOOR))
    return out.T  # (96, frames), a Fortran-ordered view, as pool['mel'].T is


def save(path, mel: np.ndarray) -> None:
    """Write an NPY as MTG's script does: numpy.save of the (96, frames) transposed view, so Fortran-ordered."""
    np.save(path, mel, allow_pickle=False)
