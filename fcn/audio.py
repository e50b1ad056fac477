"""Decode any MP3 / WAV file to mono float32 at 12 kHz, and fix its length (PAPER.md, Front ends).

Three decoders behind one contract (`load(path, sr, decoder=...)`, DECODERS): each returns the file's samples at its
own rate, with MP3 encoder priming and padding removed where the file's LAME/Xing tag declares them; downmixing
(channel mean) and resampling are shared, so the decoders differ only in the decoded samples (bench/preprocess.py
measures them side by side: equal within TOLERANCE_DB, see DEFAULT_DECODER for speed):
- "soundfile": the soundfile wheel bundles libsndfile 1.2.2 (mpg123 inside), which reads MP3 and WAV with no system
  package at all (docs/MEASURED.md);
- "pedalboard": Spotify's pedalboard wheel (JUCE's decoders; on Linux its MP3 decoder is JUCE's own). JUCE does not
  read the LAME tag, so its MP3 output starts with the encoder's delay + the decoder's 529 samples (1105 for LAME's
  576) and ends with the padding: trimmed here from the tag (`_lame_gapless`), as libsndfile and FFmpeg do;
- "ffmpeg": FFmpeg through PyAV, whose wheels bundle FFmpeg's libraries (torchaudio.load in 2.11 goes through
  torchcodec, which needs them from the OS instead).
Resampling is torchaudio.functional.resample (windowed-sinc, Hann window, lowpass_filter_width 6, rolloff 0.99: the
torchaudio defaults) [D]: a pure tensor op, no codec needed, and the same resampler on every machine and behind every
decoder. (Resampling inside the decoder, pedalboard's `resampled_to` or FFmpeg's swresample, was measured slower and
is another filter: bench/preprocess.py.)
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from math import gcd

import numpy as np
import soundfile as sf
import torch

SAMPLE_RATE = 12_000  # PAPER.md: audio is resampled to 12 kHz [C]
CLIP_SAMPLES = 349_440  # 29.12 s at 12 kHz -> 1366 frames at hop 256 [C]

DECODERS = ("soundfile", "pedalboard", "ffmpeg")
# [D] by the numbers (bench/preprocess.py's decoder table, results/benchmarks.md section 2): libsndfile's mpg123 is
# the fastest of the three on both MTAT's 16 kHz mono and MSD's 44.1 kHz stereo MP3s (decode only, one core: about
# 8 vs 13 ms per MTAT clip for pedalboard and FFmpeg), and it is what every store before `decoder` was recorded
# used. The other two decode the same samples within TOLERANCE_DB and stay selectable (--decoder).
DEFAULT_DECODER = "soundfile"
# Two decoders agree when, after their priming is trimmed, the residual is this far below the signal (SNR, dB):
# float16 features (the store) resolve about 66 dB, so a difference this small cannot change a stored feature
# beyond its own rounding. Measured: 100-130 dB (bench/preprocess.py).
TOLERANCE_DB = 90.0
MP3_DECODER_DELAY = 529  # samples every MPEG layer III decoder adds in front (the LAME tag's delay excludes it)


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
    """A decoder's error as one short line, for a file already known to exist and be non-empty."""
    msg = " ".join(str(e).split()) or type(e).__name__
    for noise in (f"Error opening {path!r}: ", f": {path!r}", f'file "{path}" ', "Failed to open audio file: "):
        msg = msg.replace(noise, "")
    msg = re.sub(r"^\[Errno -?\d+\] ", "", msg)  # FFmpeg's error number says nothing its text does not
    if "does not exist" in msg:  # libsndfile's MP3 probe says this for any unrecognised bytes; the file does exist
        msg = "format not recognised"
    return f"not audio or unreadable ({msg})"


def _check_decoder(decoder: str) -> None:
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}: choose from {', '.join(DECODERS)}")


# ---------------------------------------------------------------- the decoders: (frames, channels) float32, rate


def _read_soundfile(path: str) -> tuple[np.ndarray, int]:
    data, sr = sf.read(path, dtype="float32", always_2d=True)
    return data, int(sr)


def _lame_gapless(path: str) -> tuple[int, int] | None:
    """(samples to drop in front, samples to drop at the end) of an MP3 from its LAME/Xing tag, or None without one.

    The tag sits in the first frame after the side information; LAME (and FFmpeg's encoder) store a 12-bit encoder
    delay and padding 21 bytes into their extension. The decoder's own delay (529) comes on top of the encoder's."""
    with open(path, "rb") as f:
        head = f.read(10)
        start = 0
        if head[:3] == b"ID3" and len(head) == 10:  # ID3v2 tag in front: skip it (syncsafe size, optional footer)
            start = 10 + ((head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7 | head[9] & 0x7F)
            start += 10 if head[5] & 0x10 else 0
        f.seek(start)
        b = f.read(4096)
    i = next((k for k in range(len(b) - 4) if b[k] == 0xFF and b[k + 1] & 0xE0 == 0xE0), None)
    if i is None or (b[i + 1] >> 1) & 3 != 1:  # no frame sync, or not layer III
        return None
    mpeg1, mono, crc = (b[i + 1] >> 3) & 3 == 3, b[i + 3] >> 6 == 3, not b[i + 1] & 1
    j = i + 4 + (2 if crc else 0) + ((17 if mono else 32) if mpeg1 else (9 if mono else 17))
    if b[j : j + 4] not in (b"Xing", b"Info"):
        return None
    flags = int.from_bytes(b[j + 4 : j + 8], "big")
    k = j + 8 + 4 * bool(flags & 1) + 4 * bool(flags & 2) + 100 * bool(flags & 4) + 4 * bool(flags & 8)
    if len(b) < k + 24 or b[k : k + 4] not in (b"LAME", b"Lavc", b"Lavf", b"GOGO", b"L3.9"):
        return None  # a Xing tag without the LAME extension declares no delay
    delay = b[k + 21] << 4 | b[k + 22] >> 4
    padding = (b[k + 22] & 0x0F) << 8 | b[k + 23]
    return delay + MP3_DECODER_DELAY, max(0, padding - MP3_DECODER_DELAY)


def _read_pedalboard(path: str) -> tuple[np.ndarray, int]:
    from pedalboard.io import AudioFile  # an optional decoder: imported only when chosen (see DECODERS)

    with AudioFile(path) as f:
        sr, chunks = int(round(f.samplerate)), [np.zeros((f.num_channels, 0), np.float32)]
        n = f.frames  # read(0) would mean "everything", which pedalboard refuses
        while n > 0:  # an MP3's frame count can be an estimate (f.exact_duration_known): read until nothing comes
            chunks.append(f.read(n))
            n = 10 * sr if chunks[-1].shape[1] else 0
    data = np.concatenate(chunks, axis=1) if len(chunks) > 2 else chunks[-1]
    gap = _lame_gapless(path) if data.shape[1] else None
    if gap:
        head, tail = gap
        data = data[:, head : data.shape[1] - tail]
    return np.ascontiguousarray(data.T, dtype=np.float32), sr


def _read_ffmpeg(path: str) -> tuple[np.ndarray, int]:
    import av  # an optional decoder: imported only when chosen (see DECODERS)

    with av.open(path) as c:
        if not c.streams.audio:
            raise AudioError(path, f"not audio or unreadable (no audio stream in this {c.format.name} file)")
        s = c.streams.audio[0]
        # planar float32 at the file's own rate and layout: a pass-through for MP3 (its decoder's native format),
        # a sample-format conversion for integer WAV
        to_float = av.AudioResampler(format="fltp")
        parts = [o.to_ndarray() for fr in c.decode(s) for o in to_float.resample(fr)]
        parts += [o.to_ndarray() for o in to_float.resample(None)]
        sr, channels = int(s.rate), int(s.channels)
    if not parts:
        return np.zeros((0, channels), np.float32), sr
    return np.ascontiguousarray(np.concatenate(parts, axis=1).T, dtype=np.float32), sr


_READERS = {"soundfile": _read_soundfile, "pedalboard": _read_pedalboard, "ffmpeg": _read_ffmpeg}


# ---------------------------------------------------------------- header metadata


def info(path, decoder: str = DEFAULT_DECODER) -> AudioInfo:
    """Header metadata only (no decoding): sample rate, channels, frames, container format, as `decoder` reads it."""
    _check_decoder(decoder)
    path = os.fspath(path)
    _check_file(path)
    try:
        if decoder == "soundfile":
            i = sf.info(path)
            return AudioInfo(int(i.samplerate), int(i.channels), int(i.frames), str(i.format))
        if decoder == "pedalboard":
            from pedalboard.io import AudioFile  # an optional decoder: imported only when chosen (see DECODERS)

            with AudioFile(path) as f:
                sr, channels, frames = int(round(f.samplerate)), int(f.num_channels), int(f.frames)
            head, tail = _lame_gapless(path) or (0, 0)  # as _read_pedalboard trims them
            return AudioInfo(sr, channels, max(0, frames - head - tail), os.path.splitext(path)[1][1:].upper())
        import av  # an optional decoder: imported only when chosen (see DECODERS)

        with av.open(path) as c:
            if not c.streams.audio:
                raise AudioError(path, f"not audio or unreadable (no audio stream in this {c.format.name} file)")
            s = c.streams.audio[0]
            seconds = float(s.duration * s.time_base) if s.duration else (c.duration or 0) / 1e6
            return AudioInfo(int(s.rate), int(s.channels), int(round(seconds * s.rate)), str(c.format.name).upper())
    except AudioError:
        raise
    except Exception as e:  # each library raises its own kinds (LibsndfileError, ValueError, av.FFmpegError)
        raise AudioError(path, _why(path, e)) from None


def resample(x: np.ndarray, orig_sr: int, sr: int) -> np.ndarray:
    """Resample a 1-D float32 signal with torchaudio's windowed-sinc resampler (see the module docstring)."""
    if orig_sr == sr:
        return x

    g = gcd(int(orig_sr), int(sr))  # torchaudio reduces by the gcd itself; doing it here keeps the kernel explicit
    y = _resampler(int(orig_sr) // g, int(sr) // g)(torch.from_numpy(np.ascontiguousarray(x)))
    return y.numpy().astype(np.float32, copy=False)


@functools.lru_cache(maxsize=8)
def _resampler(orig: int, new: int):
    """torchaudio's Resample module: AF.resample's windowed sinc with its defaults, the kernel computed once per
    pair of rates instead of on every clip (a quarter of the resampling's time, bench/preprocess.py)."""
    import torchaudio.transforms as T  # ~0.2 s to import: only resampling needs it, not every importer of fcn.audio

    return T.Resample(
        orig, new, dtype=torch.float32
    )  # the kernel in float32, as AF.resample makes it for a float32 wave


def decode(path, decoder: str = DEFAULT_DECODER) -> tuple[np.ndarray, int]:
    """(mono float32 samples, the file's sample rate): `load` without the resampling."""
    _check_decoder(decoder)
    path = os.fspath(path)
    _check_file(path)
    try:
        data, orig_sr = _READERS[decoder](path)
    except AudioError:
        raise
    except Exception as e:
        raise AudioError(path, _why(path, e)) from None
    if data.shape[0] == 0:
        raise AudioError(path, "decodes to zero frames")
    x = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.all(np.isfinite(x)):  # a corrupt float WAV could carry NaN/inf; they would poison every feature
        raise AudioError(path, "contains NaN or infinite samples")
    return x, int(orig_sr)


def load(path, sr: int = SAMPLE_RATE, decoder: str = DEFAULT_DECODER) -> np.ndarray:
    """Decode `path` (MP3, WAV; any rate, any channel count) with `decoder` (DECODERS) to mono float32 at `sr`.

    Channels are averaged (downmix by mean) [D: the usual choice; PAPER.md only says mono]. Silent audio is valid and
    comes back as zeros. Raises AudioError (one line: file + reason) for a missing or empty file, a file that is not
    audio, or one that decodes to zero frames.
    """
    x, orig_sr = decode(path, decoder)
    return resample(x, orig_sr, int(sr))


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
    return x[start : start + n]
