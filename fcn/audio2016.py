"""The authors' input, as 2016 librosa computed it: audio → 1×96×1366 log-mel of their `audio_processor.py`.

    python -m fcn.predict --pretrained choi2016-msd-cnn song.mp3 ...   # uses this for every audio file
    python -m bench.fidelity --authors-dir DIR                         # measures it against their .npy (results/)

Their code (keunwoochoi/music-auto_tagging-keras, audio_processor.py) [C]: `librosa.load(path, sr=12000)`, centre
29.12 s (zero-padded at the end when shorter), `logamplitude(melspectrogram(y, sr, n_fft=512, hop=256, n_mels=96)**2,
ref_power=1.0)`. In 2016 (librosa 0.4.3, resampy 0.1.x) that meant, where it differs from fcn.audio + fcn.frontends:
- decoding through audioread, which hands librosa 16-bit PCM: samples on the int16 grid, clipped at full scale;
- resampling with resampy's `kaiser_best` filter (64 zero crossings, Kaiser β 14.7697, roll-off 0.9476 of Nyquist,
  table precision 2⁹), then librosa's fix to ceil(n · 12000 / sr) samples — not torchaudio's sinc (roll-off 0.99);
- STFT frames centred with *reflect* padding (librosa < 0.10), not zeros.
Measured on their four example clips (bench/fidelity.py, results/fidelity.md): with the delay dropped (below) this
path reproduces their released .npy log-mels within 0.02 dB at every bin, and with it kept their printed tags to the
printed precision. fcn.frontends' `authors` mel, aligned, differs by 0.03-0.04 dB (mean): mostly the resampler.

The MP3 decoder's delay: every MPEG layer III decoder puts 529 samples in front of the music. Ours keep them when the
file has no LAME tag to say so (fcn.audio), and so did the Linux librosa that printed the authors' README output
(`keep`, the default); the decoder that made their released .npy log-mels removed them (`drop`: measured, the .npy
then match within 0.02 dB; without it our crop sits 529 samples at 44.1 kHz early and differs by 2-4.5 dB) [D].
"""

from __future__ import annotations

import functools
from math import gcd

import numpy as np
import torch
import torch.nn.functional as F

from fcn.audio import DEFAULT_DECODER, MP3_DECODER_DELAY, SAMPLE_RATE, _lame_gapless, decode, fix_length, info
from fcn.frontends import FrontEnd, FrontEndParams

# [C] resampy 0.1.x's `kaiser_best` filter, librosa 0.4.3's default resampler (resampy/filters.py, its docstring and
# data/kaiser_best.npz: this construction gives that table to 2e-16)
KAISER_BEST_2016 = dict(num_zeros=64, precision=9, beta=14.769656459379492, rolloff=0.9475937167399596)
INT16_SCALE = 32768.0  # [C] audioread's 16-bit PCM as librosa.util.buf_to_float scales it (1 / 2**15)
MP3_DELAYS = ("keep", "drop")
# [C] audio_processor.py's front end, in fcn.frontends' terms: the `authors` mel (logamplitude of mel**2, top_db 80)
# on frames centred with reflect padding (librosa 0.4.3's stft: np.pad(y, n_fft // 2, mode='reflect'))
PARAMS_2016 = FrontEndParams(variant="authors", pad_mode="reflect")


def _half_window(num_zeros: int, precision: int, beta: float, rolloff: float) -> tuple[np.ndarray, int]:
    """The right half of a Kaiser-windowed sinc, sampled `2**precision` times per zero crossing (resampy's table)."""
    per = 2**precision
    n = per * num_zeros
    sinc = rolloff * np.sinc(rolloff * np.linspace(0, num_zeros, num=n + 1))
    return np.kaiser(2 * n + 1, beta)[n:] * sinc, per


@functools.lru_cache(maxsize=8)
def _polyphase(orig: int, new: int) -> tuple[torch.Tensor, int, int, int]:
    """resampy's interpolation as a polyphase filter bank: (kernel (L, 1, width), L, M, first tap's offset).

    Output sample t = qL + p sits at input position qM + pM/L (L, M: the reduced rates), so each of the L phases
    applies one fixed filter with stride M: the table's two wings at that phase's fractional position, each tap
    linearly interpolated between table entries as resampy does."""
    g = gcd(orig, new)
    big_l, big_m = new // g, orig // g
    win, per = _half_window(**KAISER_BEST_2016)
    ratio = float(new) / orig
    if ratio < 1:
        win = win * ratio  # the filter's gain at the lower rate
    delta = np.append(np.diff(win), 0.0)
    scale = min(1.0, ratio)
    step, nwin = int(scale * per), len(win)
    taps: list[dict[int, float]] = []
    for p in range(big_l):
        base, rem = divmod(p * big_m, big_l)  # the input sample left of the output's position, and how far past it
        phase: dict[int, float] = {}
        for side, frac in ((-1, scale * rem / big_l), (1, scale - scale * rem / big_l)):
            index = frac * per
            offset = int(index)
            eta = index - offset
            k = np.arange((nwin - offset) // step)
            weights = win[offset + k * step] + eta * delta[offset + k * step]
            positions = base - k if side < 0 else base + 1 + k  # left wing: x[n - k]; right wing: x[n + 1 + k]
            for pos, w in zip(positions.tolist(), weights.tolist(), strict=True):
                phase[pos] = phase.get(pos, 0.0) + w
        taps.append(phase)
    first = min(min(t) for t in taps)
    width = max(max(t) for t in taps) - first + 1
    kernel = np.zeros((big_l, 1, width))
    for p, phase in enumerate(taps):
        for pos, w in phase.items():
            kernel[p, 0, pos - first] = w
    return torch.from_numpy(kernel), big_l, big_m, first


def resample_kaiser_best_2016(x: np.ndarray, orig_sr: int, sr: int) -> np.ndarray:
    """`librosa.resample(x, orig_sr, sr)` of librosa 0.4.3 (resampy's kaiser_best, then fixed to ceil(n · sr / orig_sr)
    samples), as float32. Beyond the file's ends the signal is zero, as resampy's wings stop there (resampy 0.1.4's
    last ~240 outputs used a miscounted right wing; a centre crop never reaches them)."""
    x = np.asarray(x, dtype=np.float32)
    if orig_sr == sr:
        return x
    ratio = float(sr) / orig_sr
    n_out, n_fix = int(len(x) * ratio), int(np.ceil(len(x) * ratio))  # resampy's length, then librosa's fix_length
    kernel, big_l, big_m, first = _polyphase(int(orig_sr), int(sr))
    blocks = -(-n_out // big_l)
    need = (blocks - 1) * big_m + kernel.shape[-1]
    left = -first
    xs = torch.from_numpy(x).double()
    xs = F.pad(xs, (left, max(0, need - left - len(x))))[None, None]
    y = F.conv1d(xs, kernel, stride=big_m)[0, :, :blocks]  # (L phases, blocks)
    y = y.T.reshape(-1)[:n_out].float().numpy()
    return np.pad(y, (0, n_fix - n_out))


def to_int16_grid(x: np.ndarray) -> np.ndarray:
    """Float samples as audioread's 16-bit PCM gave them to librosa: rounded to the int16 grid, clipped at full scale
    (a loud MP3 decodes above ±1.0: one of their example clips does)."""
    return (np.clip(np.round(x * INT16_SCALE), -INT16_SCALE, INT16_SCALE - 1) / INT16_SCALE).astype(np.float32)


def _tagless_mp3(path) -> bool:
    """An MP3 without a LAME/Xing tag: the decoders keep the 529-sample decoder delay in front (fcn.audio)."""
    try:
        is_mp3 = info(path, "soundfile").format.upper().startswith("MP3")
    except Exception:  # noqa: BLE001 - libsndfile's own error types; load() then reports the file itself
        return False
    return is_mp3 and _lame_gapless(str(path)) is None


def load_2016(path, sr: int = SAMPLE_RATE, decoder: str = DEFAULT_DECODER, mp3_delay: str = "keep") -> np.ndarray:
    """`librosa.load(path, sr=sr)` as librosa 0.4.3 on audioread computed it (module docstring): mono float32.

    Channels are averaged after the int16 rounding here, before it there (a difference at the 16th bit)."""
    if mp3_delay not in MP3_DELAYS:
        raise ValueError(f"mp3_delay must be one of {', '.join(MP3_DELAYS)}, not {mp3_delay!r}")
    x, orig_sr = decode(path, decoder)
    x = to_int16_grid(x)
    if mp3_delay == "drop" and _tagless_mp3(path):
        d = MP3_DECODER_DELAY  # the stream keeps its length: their decoder's output ended 529 samples later
        x = np.concatenate([x[d:], np.zeros(min(d, len(x)), np.float32)])
    return resample_kaiser_best_2016(x, orig_sr, sr)


@torch.no_grad()
def log_mels(waves: np.ndarray) -> np.ndarray:
    """(N, samples) 12 kHz waves → (N, 1, 96, frames) float32 log-mels of audio_processor.py (module docstring)."""
    x = torch.from_numpy(np.ascontiguousarray(waves, dtype=np.float32))
    return FrontEnd("mel", PARAMS_2016)(x).numpy()


def authors_log_mel(path, decoder: str = DEFAULT_DECODER, mp3_delay: str = "keep") -> np.ndarray:
    """One audio file → its (1, 96, 1366) float32 log-mel as the authors' compute_melgram made it."""
    wave = fix_length(load_2016(path, PARAMS_2016.sample_rate, decoder, mp3_delay), PARAMS_2016.n_samples)
    return log_mels(wave[None])[0]
