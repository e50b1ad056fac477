"""Decode any MP3 / WAV file to mono float32 at 12 kHz, and fix its length (PAPER.md, Front ends).

Why soundfile and not torchaudio.load: the soundfile wheel bundles libsndfile 1.2.2, which reads MP3 and WAV with no
system package at all (a 29 s MP3 decodes in ~4 ms, FACTS.md); torchaudio.load in 2.11 goes through torchcodec, which
needs FFmpeg's shared libraries from the OS. Resampling is torchaudio.functional.resample (windowed-sinc, Hann window,
lowpass_filter_width 6, rolloff 0.99: the torchaudio defaults) [D]: a pure tensor op, no codec needed, and the same
resampler on every machine.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from math import gcd

import numpy as np

SAMPLE_RATE = 12_000  # PAPER.md: audio is resampled to 12 kHz [C]
CLIP_SAMPLES = 349_440  # 29.12 s at 12 kHz -> 1366 frames at hop 256 [C]


class AudioError(Exception):
    """A file that cannot be turned into audio; the message is one line naming the file and the reason."""

    def __init__(self, path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class AudioInfo:
    samplerate: int
    channels: int
    frames: int
    format: str

    @property
    def seconds(self) -> float:
        return self.frames / self.samplerate if self.samplerate else 0.0


def _check_file(path: str) -> None:
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise AudioError(path, "no such file") from None
    except OSError as e:
        raise AudioError(path, f"cannot open: {e.strerror or e}") from None
    if size == 0:
        # MTAT clip 35644 is such a file (PAPER.md); libsndfile's own message for it is cryptic
        raise AudioError(path, "empty file (0 bytes)")


def _why(path: str, e: Exception) -> str:
    """libsndfile's error as one short line, for a file already known to exist and be non-empty."""
    msg = " ".join(str(e).split()) or type(e).__name__
    msg = msg.replace(f"Error opening {path!r}: ", "")
    if "does not exist" in msg:  # its MP3 probe says this for any unrecognised bytes; the file does exist
        msg = "format not recognised"
    return f"not audio or unreadable ({msg})"


def info(path) -> AudioInfo:
    """Header metadata only (no decoding): sample rate, channels, frames, container format."""
    import soundfile as sf

    path = os.fspath(path)
    _check_file(path)
    try:
        i = sf.info(path)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError for non-audio files
        raise AudioError(path, _why(path, e)) from None
    return AudioInfo(int(i.samplerate), int(i.channels), int(i.frames), str(i.format))


def resample(x: np.ndarray, orig_sr: int, sr: int) -> np.ndarray:
    """Resample a 1-D float32 signal with torchaudio's windowed-sinc resampler (see the module docstring)."""
    if orig_sr == sr:
        return x
    import torch
    import torchaudio.functional as AF

    g = gcd(int(orig_sr), int(sr))  # torchaudio reduces by the gcd itself; doing it here keeps the kernel explicit
    y = AF.resample(torch.from_numpy(np.ascontiguousarray(x)), int(orig_sr) // g, int(sr) // g)
    return y.numpy().astype(np.float32, copy=False)


def load(path, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decode `path` (MP3, WAV, anything libsndfile reads; any rate, any channel count) to mono float32 at `sr`.

    Channels are averaged (downmix by mean) [D: the usual choice; PAPER.md only says mono]. Silent audio is valid and
    comes back as zeros. Raises AudioError (one line: file + reason) for a missing or empty file, a file that is not
    audio, or one that decodes to zero frames.
    """
    import soundfile as sf

    path = os.fspath(path)
    _check_file(path)
    try:
        data, orig_sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioError(path, _why(path, e)) from None
    if data.shape[0] == 0:
        raise AudioError(path, "decodes to zero frames")
    x = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.all(np.isfinite(x)):  # a corrupt float WAV could carry NaN/inf; they would poison every feature
        raise AudioError(path, "contains NaN or infinite samples")
    return resample(x, int(orig_sr), int(sr))


def fix_length(x: np.ndarray, n: int = CLIP_SAMPLES) -> np.ndarray:
    """Exactly `n` samples: zero-pad at the end if short, centre-crop if long (PAPER.md: 29.12 s at the centre) [C]."""
    m = len(x)
    if m == n:
        return x
    if m < n:
        out = np.zeros(n, dtype=x.dtype)
        out[:m] = x
        return out
    start = (m - n) // 2
    return x[start:start + n]
