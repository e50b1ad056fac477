"""The one signal generator behind both synthetic data sets (fcn.data.synth): tag slots -> audio.

Everything here is [D] (a design of this project, not the paper's): the synthetic sets stand in for MTAT / MSD audio
that cannot ship with the code, so they only need to be *learnable from the audio in the same way*: each of the 50 tag
slots owns an acoustic signature (harmonic timbre + pitch range, onset rate + noise band, steady noise band, amplitude
modulation, formant "voices", pitch sweeps), so a CNN on log-mel can find it, while mixtures of 1-5 tags, per-clip
key and gain jitter, confusing non-tag sounds and background noise keep it from being trivial.

Slot k is tag k of the data set's top-50 list (MTAT_TOP50 or MSD_TOP50): the flavour comments follow MTAT's names.
All energy is kept below 5.8 kHz, because the clips are analysed at 12 kHz (Nyquist 6 kHz, PAPER.md).
"""

from __future__ import annotations

from functools import lru_cache
from math import gcd

import numpy as np

N_SLOTS = 50
F_MAX = 5800.0  # every component is low-passed here: the analysis runs at 12 kHz

# Zipf-like marginal frequency of slot k: 25 % for the first tag down to 2 % for the 50th, because both top-50 lists
# are ordered by popularity and are strongly imbalanced (PAPER.md; e.g. Choi's valid_y.npy: 'rock' on ~20 % of tracks).
ZIPF_ALPHA = np.log(0.25 / 0.02) / np.log(50)
TAG_FREQ = 0.25 * np.arange(1, N_SLOTS + 1, dtype=np.float64) ** -ZIPF_ALPHA

# Correlated pairs (a, b, p): when a is on, b is also switched on with probability p. In MTAT's names: female with
# female vocal / female voice / woman, male with male vocal / male voice / man, vocal with vocals / voice / singing,
# choir-choral, classical-classic, beat-beats, no vocals with no vocal / no voice, techno-electronic, opera-classical.
PAIRS = (
    (15, 40, 0.5),
    (15, 48, 0.4),
    (15, 26, 0.4),
    (18, 27, 0.5),
    (18, 39, 0.4),
    (18, 33, 0.4),
    (13, 20, 0.5),
    (13, 36, 0.4),
    (13, 19, 0.4),
    (35, 49, 0.6),
    (1, 34, 0.12),
    (11, 41, 0.3),
    (21, 28, 0.5),
    (21, 44, 0.4),
    (3, 6, 0.5),
    (17, 1, 0.5),
)


def _base_freq() -> np.ndarray:
    """Independent draw probabilities that, with the pairs' extra positives, give back TAG_FREQ as the marginals
    (first-order: P(b) = 1 - (1 - base_b) * prod_a (1 - P(a) p_ab)); never below a fifth of the target."""
    base = TAG_FREQ.copy()
    for b in {b for _, b, _ in PAIRS}:
        keep = np.prod([1 - TAG_FREQ[a] * p for a, bb, p in PAIRS if bb == b])
        base[b] = max(1 - (1 - TAG_FREQ[b]) / keep, TAG_FREQ[b] / 5)
    return base


BASE_FREQ = _base_freq()

# Vowel formants (F1, F2, F3) in Hz, textbook averages.
VOWELS = {
    "a": (800, 1200, 2500),
    "e": (400, 2000, 2600),
    "i": (300, 2300, 3000),
    "o": (450, 800, 2500),
    "u": (325, 700, 2500),
}


def _tone(f0, spread, rate, tilt, cut, odd=False, pluck=0.0, vib=(0.0, 0.0)):
    return ("tone", dict(f0=f0, spread=spread, rate=rate, tilt=tilt, cut=cut, odd=odd, pluck=pluck, vib=vib))


def _voice(f0, vowel, vib=(5.5, 0.012), rate=2.0, n=1):
    return ("voice", dict(f0=f0, vowel=vowel, vib=vib, rate=rate, n=n))


def _perc(lo, hi, rate, decay):
    return ("perc", dict(lo=lo, hi=hi, rate=rate, decay=decay))


def _noise(lo, hi, am=0.0):
    return ("noise", dict(lo=lo, hi=hi, am=am))


def _am(carrier, am, partials=1, odd=False, depth=0.9):
    return ("am", dict(carrier=carrier, am=am, partials=partials, odd=odd, depth=depth))


def _sweep(lo, hi, rate):
    return ("sweep", dict(lo=lo, hi=hi, rate=rate))


# One signature per slot. tone: pulse-train melody (f0 Hz, spread semitones, notes/s) through a spectral tilt (dB/oct)
# and low-pass `cut`; odd = odd harmonics only; pluck = note decay time (s); vib = (rate Hz, depth).
SIGNATURES = (
    _tone(196, 7, 4, -6, 3000, pluck=0.25),  # 0 guitar: plucked mid notes
    _tone(392, 5, 1.5, -9, 3500, vib=(5, 0.004)),  # 1 classical: soft sustained line
    _noise(100, 400, am=0.5),  # 2 slow: low swelling noise
    _perc(40, 160, 2.13, 0.12),  # 3 techno: four-on-the-floor kick, 128 bpm
    _tone(294, 5, 1, -4, 4500, vib=(6, 0.008)),  # 4 strings: bright bowed line
    _perc(200, 2500, 4, 0.06),  # 5 drums: snare-like bursts
    _am(880, 8, partials=5, odd=True),  # 6 electronic: square-ish tone, 8 Hz gating
    _tone(110, 5, 2, -3, 2500, odd=True),  # 7 rock: low buzzy power chord
    _perc(2500, 5500, 8, 0.03),  # 8 fast: hi-hat sixteenths
    _tone(262, 12, 3, -8, 4000, pluck=0.6),  # 9 piano: decaying wide-range notes
    _am(220, 0.3, partials=3, depth=0.5),  # 10 ambient: slow-breathing low pad
    _perc(80, 300, 2, 0.2),  # 11 beat: deep slow thumps
    _tone(660, 7, 2, -5, 5000, vib=(6, 0.01)),  # 12 violin: high line with vibrato
    _voice(200, "a"),  # 13 vocal
    _tone(440, 7, 4, 0, 2000, odd=True),  # 14 synth: square lead
    _voice(300, "e"),  # 15 female
    _tone(147, 0, 0.5, -2, 5500),  # 16 indian: bright buzzing drone
    _voice(440, "o", vib=(5.5, 0.03), rate=1),  # 17 opera: wide vibrato
    _voice(120, "a"),  # 18 male
    _voice(250, "i"),  # 19 singing
    _voice(160, "u"),  # 20 vocals
    _noise(1500, 2200),  # 21 no vocals: steady hiss band
    _tone(523, 12, 6, -1, 5500, pluck=0.15),  # 22 harpsichord: bright quick plucks
    _noise(4000, 5700),  # 23 loud: high noise band
    _am(1760, 0.5, partials=1),  # 24 quiet: soft high sine, slow swell
    _tone(784, 7, 2, -18, 3000, vib=(5, 0.005)),  # 25 flute: near-sine high line
    _voice(260, "o"),  # 26 woman
    _voice(140, "e"),  # 27 male vocal
    _perc(1000, 2000, 3, 0.02),  # 28 no vocal: clicks
    _am(523, 4, partials=3),  # 29 pop: 4 Hz pulsing chord tone
    _noise(200, 300),  # 30 soft: low steady rumble
    _tone(220, 5, 3, -1, 5000, pluck=0.8, vib=(1, 0.02)),  # 31 sitar: bending bright plucks
    _tone(587, 10, 5, -6, 4000),  # 32 solo: busy mid-high line
    _voice(100, "o"),  # 33 man
    _tone(349, 5, 1, -8, 3000, odd=True),  # 34 classic: clarinet-like line
    _voice(220, "a", rate=0.7, n=3),  # 35 choir: three detuned voices
    _voice(180, "i", vib=(0, 0), rate=6),  # 36 voice: speech-like fast pitch changes
    _sweep(300, 900, 0.2),  # 37 new age: slow glide
    _perc(40, 120, 2, 0.25),  # 38 dance: long low kick
    _voice(130, "u"),  # 39 male voice
    _voice(330, "a"),  # 40 female vocal
    _perc(500, 1500, 6, 0.05),  # 41 beats: mid ticks
    _tone(330, 14, 8, -10, 3000, pluck=0.4),  # 42 harp: fast arpeggios
    _tone(131, 7, 1, -5, 3000, vib=(5, 0.008)),  # 43 cello: low bowed line
    _am(2500, 12, partials=1),  # 44 no voice: 12 Hz trill tone
    _sweep(500, 3000, 1.5),  # 45 weird: fast wide sweeps
    _tone(247, 7, 6, -3, 4500, pluck=0.1),  # 46 country: banjo-like rolls
    _tone(82, 4, 4, 0, 3500, odd=True),  # 47 metal: very low distorted riff
    _voice(280, "u"),  # 48 female voice
    _voice(330, "o", rate=0.7, n=3),  # 49 choral: three detuned high voices
)
assert len(SIGNATURES) == N_SLOTS


def sample_labels(rng: np.random.Generator, n: int, min_tags: int = 0) -> np.ndarray:
    """(n, 50) uint8 tag matrix: independent Bernoulli(BASE_FREQ) plus the correlated PAIRS, so that tag k's
    frequency is ≈ TAG_FREQ[k] (≈2.3 tags per clip; ≈13 % of clips have none, like MTAT's ~18 % without a top-50 tag).
    min_tags=1 redraws empty rows (Choi's MSD lists hold only tracks with a top-50 tag, PAPER.md)."""
    y = rng.random((n, N_SLOTS)) < BASE_FREQ
    for a, b, p in PAIRS:
        y[:, b] |= y[:, a] & (rng.random(n) < p)
    if min_tags > 0:
        empty = y.sum(1) < min_tags
        while empty.any():
            y[empty] = sample_labels(rng, int(empty.sum())).astype(bool)
            empty = y.sum(1) < min_tags
    return y.astype(np.uint8)


# ------------------------------------------------------------------------------------------------- building blocks


@lru_cache(maxsize=8)
def _freqs(n: int, sr: int) -> np.ndarray:
    return np.fft.rfftfreq(n, 1.0 / sr)


@lru_cache(maxsize=8)
def _global_lowpass(n: int, sr: int) -> np.ndarray:
    return _lowpass(_freqs(n, sr), F_MAX)


@lru_cache(maxsize=8)
def _log2f(n: int, sr: int) -> np.ndarray:
    return np.log2(np.maximum(_freqs(n, sr), 1.0))


def _smooth_band(n, sr, lo, hi, edge=0.25):
    """Band-pass gain over rfftfreq(n, 1/sr) with raised-cosine edges `edge` octaves wide (no brick walls)."""
    lf = _log2f(n, sr)
    g = np.ones_like(lf)
    for e0, sign in ((np.log2(lo), 1), (np.log2(hi), -1)):
        z = np.clip(sign * (lf - e0) / edge + 0.5, 0, 1)
        g *= np.sin(0.5 * np.pi * z) ** 2
    return g


def _lowpass(f, cut):
    return 1.0 / (1.0 + (f / cut) ** 8)


def _melody(rng, n, sr, f0, spread, rate):
    """Piecewise-constant pitch curve: notes of jittered length around 1/rate, random steps within ±spread/2
    semitones of f0. Returns (frequency per sample, onset sample of each note, note index per sample)."""
    if rate <= 0 or spread <= 0:
        return np.full(n, f0), np.array([0]), np.zeros(n, dtype=np.int64)
    n_notes = int(n / sr * rate) + 2
    lengths = rng.uniform(0.6, 1.4, n_notes) * sr / rate
    onsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    onsets = onsets[onsets < n]
    steps = rng.integers(-(spread // 2), spread // 2 + 1, len(onsets))
    idx = np.searchsorted(onsets, np.arange(n), side="right") - 1
    return f0 * 2.0 ** (steps[idx] / 12.0), onsets, idx


def _pulses(freq, sr, rng, odd=False):
    """Band-unlimited pulse train following `freq` (Hz per sample): a flat harmonic comb that the spectral envelope
    then shapes, far cheaper than summing sines. odd=True: alternating-sign pulses at twice the rate = odd harmonics."""
    mult = 2.0 if odd else 1.0
    phase = np.cumsum(freq * mult / sr) + rng.random()
    idx = np.flatnonzero(np.diff(np.floor(phase)) > 0) + 1
    x = np.zeros(len(freq))
    x[idx] = -1.0 if odd else 1.0
    if odd:
        x[idx[::2]] = 1.0
    return x


def _tilt(f, ref, db_per_oct):
    return (np.maximum(f, ref) / ref) ** (db_per_oct / 6.02)


# ------------------------------------------------------------------------------------------------- the families
# Each returns (time signal, spectral gain or None); the caller filters, normalises and mixes in the frequency domain.


def _render_tone(p, rng, n, sr, key, f):
    freq, onsets, idx = _melody(rng, n, sr, p["f0"] * key, p["spread"], p["rate"])
    vr, vd = p["vib"]
    if vr > 0:
        freq = freq * (1 + vd * np.sin(2 * np.pi * vr * np.arange(n) / sr + rng.uniform(0, 2 * np.pi)))
    x = _pulses(freq, sr, rng, p["odd"])
    if p["pluck"] > 0:  # each note decays from its onset
        since = (np.arange(n) - onsets[idx]) / sr
        x *= np.exp(-since / p["pluck"])
    return x, _tilt(f, p["f0"] * key, p["tilt"]) * _lowpass(f, p["cut"])


def _render_voice(p, rng, n, sr, key, f):
    t = np.arange(n) / sr
    base, onsets, idx = _melody(rng, n, sr, p["f0"] * key, 5, p["rate"])
    x = np.zeros(n)
    vr, vd = p["vib"]
    for v in range(p["n"]):  # a choir: the same line, detuned, each voice with its own vibrato phase
        freq = base * 2 ** (rng.normal(0, 0.15) / 12) if v else base
        if vr > 0:
            freq = freq * (1 + vd * np.sin(2 * np.pi * vr * rng.uniform(0.9, 1.1) * t + rng.uniform(0, 2 * np.pi)))
        x += _pulses(freq, sr, rng)
    # syllables: each note swells and fades, so the voice is phrased rather than a steady buzz
    pos = (np.arange(n) - onsets[idx]) / np.maximum(np.diff(np.append(onsets, n))[idx], 1)
    x *= 0.25 + 0.75 * np.sin(np.pi * pos) ** 0.5
    env = 0.03 + sum(
        a * np.exp(-0.5 * ((f - fm * key**0.3) / bw) ** 2)
        for fm, a, bw in zip(VOWELS[p["vowel"]], (1.0, 0.7, 0.35), (90, 110, 160))
    )
    return x, env * _tilt(f, 100, -6) * _lowpass(f, 4500)


def _render_perc(p, rng, n, sr, key, f):
    period = sr / p["rate"]
    onsets = np.arange(rng.uniform(0, period), n, period)
    onsets = np.clip(onsets + rng.normal(0, 0.005 * sr, len(onsets)), 0, n - 1).astype(np.int64)
    onsets = np.unique(onsets)
    if len(onsets) == 0:
        onsets = np.array([0])
    accent = rng.uniform(0.5, 1.0, len(onsets))
    idx = np.searchsorted(onsets, np.arange(n), side="right") - 1
    valid = idx >= 0
    since = np.where(valid, np.arange(n) - onsets[np.maximum(idx, 0)], n) / sr
    env = np.where(valid, accent[np.maximum(idx, 0)], 0) * np.exp(-since / p["decay"])
    return rng.standard_normal(n) * env, _smooth_band(n, sr, p["lo"] * key, p["hi"] * key)


def _render_noise(p, rng, n, sr, key, f):
    x = rng.standard_normal(n)
    if p["am"] > 0:
        x *= 1 + 0.8 * np.sin(2 * np.pi * p["am"] * np.arange(n) / sr + rng.uniform(0, 2 * np.pi))
    return x, _smooth_band(n, sr, p["lo"] * key, p["hi"] * key, edge=0.15)


def _render_am(p, rng, n, sr, key, f):
    t = np.arange(n) / sr
    c = p["carrier"] * key
    hs = range(1, 2 * p["partials"], 2) if p["odd"] else range(1, p["partials"] + 1)
    x = sum(np.sin(2 * np.pi * h * c * t + rng.uniform(0, 2 * np.pi)) / h for h in hs if h * c < F_MAX)
    m = 1 + p["depth"] * np.sin(2 * np.pi * p["am"] * t + rng.uniform(0, 2 * np.pi))
    return x * m, None


def _render_sweep(p, rng, n, sr, key, f):
    t = np.arange(n) / sr
    tri = np.abs(((t * p["rate"] + rng.random()) % 1.0) * 2 - 1)  # triangle 0..1..0, in log-frequency
    lo, hi = np.log(p["lo"] * key), np.log(p["hi"] * key)
    phase = np.cumsum(np.exp(lo + (hi - lo) * tri)) / sr
    return np.sin(2 * np.pi * phase) + 0.3 * np.sin(4 * np.pi * phase), None


_FAMILIES = {
    "tone": _render_tone,
    "voice": _render_voice,
    "perc": _render_perc,
    "noise": _render_noise,
    "am": _render_am,
    "sweep": _render_sweep,
}


def _distractor(rng):
    """A sound that is no tag's signature (random band / carrier / rate), so energy somewhere != a tag."""
    kind = rng.integers(3)
    if kind == 0:
        lo = float(np.exp(rng.uniform(np.log(100), np.log(4000))))
        return _noise(lo, lo * rng.uniform(1.2, 1.6), am=float(rng.uniform(0, 3)))
    if kind == 1:
        return _am(
            float(np.exp(rng.uniform(np.log(150), np.log(3000)))),
            float(rng.uniform(0, 10)),
            partials=int(rng.integers(1, 4)),
        )
    lo = float(np.exp(rng.uniform(np.log(60), np.log(3000))))
    return _perc(lo, lo * rng.uniform(1.5, 4), float(rng.uniform(1, 9)), float(rng.uniform(0.02, 0.2)))


RENDER_SR = 12_000  # everything is built at the analysis rate (content < F_MAX), then band-limited-upsampled


def render(labels, sr: int, n: int, rng: np.random.Generator, channels: int = 1) -> np.ndarray:
    """Audio for one clip whose tag slots are `labels` (50,): float32, (n,) if mono else (n, channels), peak < 1.

    Per clip: a random key (±1.5 semitones on every pitch and band), a gain per component (-8..0 dB), a random pan
    per component in stereo, up to two non-tag distractor sounds, pink background noise 8-30 dB below the mix, and a
    random overall level (peak 0.1-0.9). A clip without tags is background and distractors only.

    The mix is built at 12 kHz in the frequency domain and written out at `sr` by zero-padding the spectrum (exact
    band-limited upsampling): rendering costs the same at 16, 22.05 or 44.1 kHz."""
    if sr < RENDER_SR:
        raise ValueError(f"output rate {sr} Hz is below the {RENDER_SR} Hz the signals are built at")
    q = RENDER_SR // gcd(RENDER_SR, sr)  # internal lengths that are a multiple of q upsample to a whole length
    m = -(-n * RENDER_SR // (sr * q)) * q
    n_up = m * sr // RENDER_SR  # >= n; the tail is cut below
    f = _freqs(m, RENDER_SR)
    lp = _global_lowpass(m, RENDER_SR)
    key = 2 ** (rng.uniform(-1.5, 1.5) / 12)
    comps = [SIGNATURES[k] for k in np.flatnonzero(labels)]
    n_distract = rng.binomial(2, 0.35)
    comps += [_distractor(rng) for _ in range(n_distract)]
    gains = list(10 ** (rng.uniform(-8, 0, len(comps) - n_distract) / 20))
    gains += list(10 ** (rng.uniform(-16, -6, n_distract) / 20))
    spec = np.zeros((channels, n_up // 2 + 1), dtype=np.complex128)
    nb = len(f)
    for (family, p), g in zip(comps, gains):
        x, env = _FAMILIES[family](p, rng, m, RENDER_SR, key, f)
        X = np.fft.rfft(x)
        if env is not None:
            X *= env
        X *= lp
        power = (np.abs(X) ** 2).sum()  # Parseval, up to a constant shared by every component
        X *= g / np.sqrt(max(power, 1e-30))
        if channels == 1:
            spec[0, :nb] += X
        else:
            pan = rng.uniform(0.15, 0.85) * np.pi / 2
            spec[0, :nb] += np.cos(pan) * np.sqrt(2) * X
            spec[1:, :nb] += np.sin(pan) * np.sqrt(2) * X
    # pink background, independent per channel, level relative to the mix (or absolute when there is no mix)
    mix_power = (np.abs(spec) ** 2).sum(1).mean()
    snr_db = rng.uniform(8, 30)
    for c in range(channels):
        B = np.fft.rfft(rng.standard_normal(m)) / np.sqrt(np.maximum(f, 20.0)) * lp
        target = mix_power / 10 ** (snr_db / 10) if mix_power > 0 else 1.0
        spec[c, :nb] += B * np.sqrt(target / (np.abs(B) ** 2).sum())
    y = np.fft.irfft(spec, n_up, axis=1)[:, :n]
    y *= rng.uniform(0.1, 0.9) / max(np.abs(y).max(), 1e-12)
    y = y.astype(np.float32)
    return y[0] if channels == 1 else np.ascontiguousarray(y.T)
