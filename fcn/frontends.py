"""Front ends of Choi et al. 2016: log-mel (96 rows), log-STFT (128 rows), MFCC + Δ + ΔΔ (90 rows).

One batched torch module per input type, so the same code runs on CPU (preprocessing) and GPU (batches of waves).
Defaults are the paper's (PAPER.md, Front ends); every [D] choice is named and commented.

The log-mel comes in named variants (VARIANTS), recorded in every store and checkpoint:
- "authors": the authors' released preprocessing, `librosa.logamplitude(mel**2, ref_power=1.0)` [C: their code], i.e.
  10·log10(max(mel², 1e-10)) with logamplitude's default top_db=80: every value more than 80 dB below the clip's peak
  (on that doubled scale; 40 dB in power dB) is raised to peak - 80. The paper states no floor; we take this as the
  input behind the published numbers [D]. The paper preset uses it, and so do these params' defaults.
- "plain-db": 10·log10(max(mel, 1e-10)), the dB of the power mel with no floor (what this project used first; the demo
  presets' choice [D]: their committed results were made with it).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from torch import nn

from fcn.crop import check_crop

INPUTS = ("mel", "stft", "mfcc")
VARIANTS = ("authors", "plain-db")
AUTHORS_TOP_DB = 80.0  # [C] librosa.logamplitude's default top_db, applied by the authors' code to 10·log10(mel²)
AUTHORS_AMIN = 1e-10  # [C] logamplitude's default amin, on mel²
MFCC_TOP_DB = 80.0  # [D] librosa.feature.mfcc's default: power_to_db(mel, top_db=80) before the DCT, per clip
# How Δ and ΔΔ are computed: "librosa" = librosa.feature.delta(order=1) and (order=2), a Savitzky-Golay derivative
# over `delta_width` frames with polynomial edges (mode "interp", its default); "nested" = Δ of Δ with replicated edges
# (torchaudio's ComputeDeltas twice), which stores and checkpoints made before the front ends had variants hold;
# "librosa-0.4" = librosa.feature.delta of librosa 0.4.x-0.5.x, what the authors' 2016 librosa computed (LfilterDelta).
DELTAS = ("librosa", "nested", "librosa-0.4")


@dataclass(frozen=True)
class FrontEndParams:
    sample_rate: int = 12000  # [C] resampled to 12 kHz
    n_samples: int = 349440  # [C] 29.12 s at 12 kHz (zero-pad short clips, centre-crop long ones)
    # [C] for the mel; [D] for the MFCC (PAPER.md: its n_fft and hop are not stated; the MFCC reuses the mel's)
    n_fft: int = 512
    hop: int = 256  # → 1366 frames of 29.12 s
    n_mels: int = 96  # [C]
    # [D] librosa's defaults (the authors computed mels with librosa): Slaney mel scale and area normalisation.
    mel_scale: str = "slaney"
    mel_norm: str = "slaney"
    # [D] the paper's STFT has 128 bins but no stated n_fft: a 256-point STFT, hop 256, Nyquist bin dropped.
    stft_n_fft: int = 256
    # [C] 30 coefficients + Δ + ΔΔ = 90 rows, from the same `n_mels` = 96 mel bands as the mel input [D: librosa's
    # mfcc default is 128 bands; the authors' MFCC code is not known]
    n_mfcc: int = 30
    delta_width: int = 9  # [D] librosa.feature.delta's default window
    deltas: str = "librosa"  # [D] Δ and ΔΔ exactly as librosa.feature.delta(order=1 / 2) computes them (DELTAS)
    # the log-mel variant (module docstring): "authors" [C their code; D that it made the published numbers]
    variant: str = "authors"
    # [D] dB of the power (plain-db mel, the MFCC's mel) or magnitude (STFT) with a floor of 1e-10; the STFT has no
    # top-dB clipping.
    amin: float = 1e-10
    # [D] frames are centred with zero padding at the clip's ends, as librosa (>= 0.10) does; torchaudio's default
    # is reflection, which differs only in the first and last frame.
    pad_mode: str = "constant"
    # how a longer or shorter recording becomes the clip (fcn/crop.py): "centre" [C] for clips and previews;
    # "track-centre" [D] for full tracks (MTG-Jamendo), on the frame grid of the data set's own mel-spectrograms
    crop: str = "centre"

    @classmethod
    def for_seconds(cls, seconds: float, **kw) -> FrontEndParams:
        """Paper parameters for a clip of `seconds` (rounded to a whole hop so frames are 1 + n/hop)."""
        sr = kw.get("sample_rate", cls.sample_rate)
        hop = kw.get("hop", cls.hop)
        n = int(round(seconds * sr / hop)) * hop
        return cls(n_samples=n, **kw)

    @property
    def n_frames(self) -> int:
        return 1 + self.n_samples // self.hop  # centred frames, as librosa and torchaudio do by default

    @property
    def seconds(self) -> float:
        return self.n_samples / self.sample_rate

    def rows(self, kind: str) -> int:
        return {"mel": self.n_mels, "stft": self.stft_n_fft // 2, "mfcc": 3 * self.n_mfcc}[check_input(kind)]

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown front-end variant {self.variant!r}: choose one of {', '.join(VARIANTS)}")
        if self.deltas not in DELTAS:
            raise ValueError(f"unknown deltas {self.deltas!r}: choose one of {', '.join(DELTAS)}")
        check_crop(self.crop)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> FrontEndParams:
        """Parameters as saved; a dict from before the variants existed (no 'variant' key) is what that code
        computed: the plain-db mel and nested deltas, so old checkpoints keep tagging as they were trained."""
        names = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        if "variant" not in d:
            d = {**d, "variant": "plain-db", "deltas": d.get("deltas", "nested")}
        return cls(**d)


def check_input(kind: str) -> str:
    if kind not in INPUTS:
        raise ValueError(f"unknown input {kind!r}: choose one of {', '.join(INPUTS)}")
    return kind


def savgol_rows(width: int, order: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """librosa.feature.delta(order=...) as linear maps: scipy's savgol_filter(width, polyorder=order, deriv=order,
    mode="interp"). A least-squares polynomial of degree `order` through `width` frames, differentiated `order` times
    at a frame: (interior weights (width,) centred on the frame, first-edge rows (half, width) applied to the first
    `width` frames, last-edge rows (half, width) applied to the last `width` frames)."""
    half = width // 2
    t = np.arange(width, dtype=np.float64)
    pinv = np.linalg.pinv(np.vander(t, order + 1, increasing=True))  # (order+1, width): polynomial coefficients

    def at(s: float) -> np.ndarray:  # the order-th derivative at position s, as weights on the window
        d = np.array(
            [
                math.factorial(j) / math.factorial(j - order) * s ** (j - order) if j >= order else 0.0
                for j in range(order + 1)
            ]
        )
        return d @ pinv

    return at(half), np.stack([at(s) for s in range(half)]), np.stack([at(s) for s in range(half + 1, width)])


class SavgolDelta(nn.Module):
    """(..., rows, frames) → the same shape: librosa.feature.delta(x, width, order) along the frames."""

    def __init__(self, width: int, order: int):
        super().__init__()
        mid, first, last = savgol_rows(width, order)
        self.width = width
        self.register_buffer("mid", torch.tensor(mid, dtype=torch.float32).view(1, 1, -1))
        self.register_buffer("first", torch.tensor(first, dtype=torch.float32))
        self.register_buffer("last", torch.tensor(last, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.width
        if x.shape[-1] < w:
            raise ValueError(f"deltas over {w} frames need at least {w} frames, not {x.shape[-1]}")
        flat = x.reshape(-1, x.shape[-1])
        # frames half .. F-half-1: the window's weights as `w` shifted multiply-adds. conv1d on a thousand
        # one-channel rows cost 10 % of preprocessing's front ends in oneDNN's set-up (bench/preprocess.py).
        n = flat.shape[-1] - w + 1
        taps = self.mid.view(-1)
        mid = flat[:, :n] * taps[0]
        for k in range(1, w):
            mid.add_(flat[:, k : k + n], alpha=float(taps[k]))
        head = flat[:, :w] @ self.first.T
        tail = flat[:, -w:] @ self.last.T
        return torch.cat([head, mid, tail], dim=-1).reshape(x.shape)


class LfilterDelta(nn.Module):
    """(..., rows, frames) → the same shape: librosa.feature.delta(x, width, order) as librosa 0.4.0-0.5.1 computed it
    [C: librosa/feature/utils.py at 0.4.3, replaced by Savitzky-Golay in 0.6]: the rows are padded with `width` copies
    of their edge values on each side, the regression filter (k = width//2 … -width//2, divided by Σk²) is applied
    `order` times as scipy.signal.lfilter (causal, zero initial state), and the result is cut back with one pass's
    delay. So Δ is the centred regression with replicated edges (torchaudio's ComputeDeltas), while ΔΔ, filtered twice
    but cut with one delay, lags the data by width//2 frames (4 at librosa's width 9): what 2016 librosa gave."""

    def __init__(self, width: int, order: int):
        super().__init__()
        if width < 3 or width % 2 != 1 or order < 1:
            raise ValueError(f"delta width must be odd and >= 3 and order >= 1, not {width}, {order}")
        half = width // 2
        taps = np.arange(half, -half - 1, -1.0)
        self.width, self.order, self.taps = width, order, (taps / np.sum(taps**2)).tolist()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, n = self.width, x.shape[-1]
        flat = x.reshape(-1, n)
        y = torch.cat([flat[:, :1].expand(-1, w), flat, flat[:, -1:].expand(-1, w)], dim=1)  # np.pad(mode="edge")
        for _ in range(self.order):  # lfilter(taps, 1, y): out[t] = Σ_k taps[k] · y[t - k], y before 0 is zero
            out = y * self.taps[0]
            for k, tap in enumerate(self.taps[1:], start=1):
                out[:, k:].add_(y[:, :-k], alpha=tap)
            y = out
        cut = y.shape[-1] - (1 + w // 2)  # librosa's slice(-half_length - n, -half_length)
        return y[:, cut - n : cut].reshape(x.shape)


class FrontEnd(nn.Module):
    """(batch, samples) float waves at `sample_rate` → (batch, 1, rows, frames) log features."""

    def __init__(self, kind: str, params: FrontEndParams = FrontEndParams()):
        super().__init__()
        # torchaudio: ~0.2 s to import (measured), and every CLI imports this module through fcn.config; only
        # computing features needs it
        import torchaudio.transforms as T

        self.kind, self.params = check_input(kind), params
        p = params
        if kind == "mel":
            self.spec = T.MelSpectrogram(
                sample_rate=p.sample_rate,
                n_fft=p.n_fft,
                hop_length=p.hop,
                n_mels=p.n_mels,
                power=2.0,
                mel_scale=p.mel_scale,
                norm=p.mel_norm,
                pad_mode=p.pad_mode,
            )
        elif kind == "stft":
            self.spec = T.Spectrogram(n_fft=p.stft_n_fft, hop_length=p.hop, power=1.0, pad_mode=p.pad_mode)
        else:
            import torchaudio.functional as AF  # see __init__'s torchaudio note

            # Not T.MFCC: its 80 dB floor is taken over the whole batch, so a clip's MFCC depended on its neighbours
            # (bench/preprocess.py found differences of hundreds of units). Here the floor is per clip, as librosa's.
            self.spec = T.MelSpectrogram(
                sample_rate=p.sample_rate,
                n_fft=p.n_fft,
                hop_length=p.hop,
                n_mels=p.n_mels,
                power=2.0,
                mel_scale=p.mel_scale,
                norm=p.mel_norm,
                pad_mode=p.pad_mode,
            )
            self.register_buffer("dct", AF.create_dct(p.n_mfcc, p.n_mels, "ortho"))
            if p.deltas == "librosa":
                self.delta, self.delta2 = SavgolDelta(p.delta_width, 1), SavgolDelta(p.delta_width, 2)
            elif p.deltas == "librosa-0.4":
                self.delta, self.delta2 = LfilterDelta(p.delta_width, 1), LfilterDelta(p.delta_width, 2)
            else:
                self.delta = T.ComputeDeltas(win_length=p.delta_width)

    def power(self, wave: torch.Tensor) -> torch.Tensor:
        """(batch, samples) → the power spectrogram |X|², mel-filtered for mel and MFCC: (batch, rows, frames).

        What torchaudio's Spectrogram computes (its window, centring and padding), but |X|² is re² + im²: the
        complex abs() it takes (a square root per bin, squared again for power 2) was a quarter of preprocessing's
        time (bench/preprocess.py). Values agree with it to float32 rounding."""
        sp = self.spec.spectrogram if self.kind != "stft" else self.spec
        x = torch.stft(
            wave.float(),
            sp.n_fft,
            hop_length=sp.hop_length,
            win_length=sp.win_length,
            window=sp.window,
            center=sp.center,
            pad_mode=sp.pad_mode,
            onesided=True,
            return_complex=True,
        )
        x = x.real.square() + x.imag.square()
        return x if self.kind == "stft" else self.spec.mel_scale(x)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        p = self.params
        x = self.power(wave)
        if self.kind == "mel":
            return self.log_mel(x).unsqueeze(1)
        if self.kind == "stft":
            # 20·log10(max(|X|, amin)) written as 10·log10(max(|X|², amin²)): the same values, no square root.
            # The Nyquist bin is dropped → 128 rows.
            x = 10.0 * torch.log10(torch.clamp(x[..., :-1, :], min=p.amin * p.amin))
            return x.unsqueeze(1)
        return self.mfcc_from_mel_db(self.power_db(x))

    def power_db(self, mel: torch.Tensor) -> torch.Tensor:
        """10·log10 of the power mel with the amin floor and no top-dB clipping (the MFCC's starting point)."""
        return 10.0 * torch.log10(torch.clamp(mel, min=self.params.amin))

    def log_mel(self, mel: torch.Tensor) -> torch.Tensor:
        """The mel input of the params' variant from the (batch, n_mels, frames) power mel."""
        if self.params.variant == "plain-db":
            return self.power_db(mel)
        # the authors': power_to_db(mel**2, ref=1.0, amin=1e-10, top_db=80), the floor per clip
        x = 10.0 * torch.log10(torch.clamp(mel * mel, min=AUTHORS_AMIN))
        return torch.maximum(x, x.amax(dim=(-2, -1), keepdim=True) - AUTHORS_TOP_DB)

    def mfcc_from_mel_db(self, db: torch.Tensor) -> torch.Tensor:
        """MFCC + Δ + ΔΔ from the (batch, n_mels, frames) power dB of the mel (power_db): the mel front end computes
        the same STFT and filterbank, so preprocessing derives the MFCC from its power mel instead of a second STFT."""
        db = torch.maximum(db, db.amax(dim=(-2, -1), keepdim=True) - MFCC_TOP_DB)  # librosa's top_db=80, per clip
        x = torch.matmul(db.transpose(-1, -2), self.dct).transpose(-1, -2)
        if self.params.deltas in ("librosa", "librosa-0.4"):
            d1, d2 = self.delta(x), self.delta2(x)
        else:  # "nested": Δ(Δ), replicated edges (the old stores' MFCC)
            d1 = self.delta(x)
            d2 = self.delta(d1)
        return torch.cat([x, d1, d2], dim=-2).unsqueeze(1)


@functools.lru_cache(maxsize=16)
def frontend(kind: str, params: FrontEndParams = FrontEndParams()) -> FrontEnd:
    """A cached front end: building the mel filterbank and DCT matrix costs more than a short clip's features."""
    return FrontEnd(kind, params)


@torch.no_grad()
def compute(waves: torch.Tensor, kinds=INPUTS, params: FrontEndParams = FrontEndParams()) -> dict[str, torch.Tensor]:
    """All requested features of a batch of waves in one pass: {kind: (batch, rows, frames)}.

    With both mel and MFCC asked for, the MFCC comes from the mel's power spectrogram (identical values, one STFT
    fewer: 22 % of preprocessing's time, bench/preprocess.py)."""
    out = {}
    if "mel" in kinds and "mfcc" in kinds:
        mel_fe = frontend("mel", params).to(waves.device)
        power = mel_fe.power(waves)
        out["mel"] = mel_fe.log_mel(power)
        out["mfcc"] = frontend("mfcc", params).to(waves.device).mfcc_from_mel_db(mel_fe.power_db(power))[:, 0]
    for k in kinds:
        if k not in out:
            out[k] = frontend(k, params).to(waves.device)(waves)[:, 0]
    return {k: out[k] for k in kinds}
