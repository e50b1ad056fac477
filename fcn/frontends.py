"""Front ends of Choi et al. 2016: log-mel (96 rows), log-STFT (128 rows), MFCC + Δ + ΔΔ (90 rows).

One batched torch module per input type, so the same code runs on CPU (preprocessing) and GPU (batches of waves).
Defaults are the paper's (PAPER.md, Front ends); every [D] choice is named and commented.
"""
from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

INPUTS = ("mel", "stft", "mfcc")


@dataclass(frozen=True)
class FrontEndParams:
    sample_rate: int = 12000  # [C] resampled to 12 kHz
    n_samples: int = 349440  # [C] 29.12 s at 12 kHz (zero-pad short clips, centre-crop long ones)
    n_fft: int = 512  # [C] mel and MFCC
    hop: int = 256  # [C] → 1366 frames of 29.12 s
    n_mels: int = 96  # [C]
    # [D] librosa's defaults (the authors computed mels with librosa): Slaney mel scale and area normalisation.
    mel_scale: str = "slaney"
    mel_norm: str = "slaney"
    # [D] the paper's STFT has 128 bins but no stated n_fft: a 256-point STFT, hop 256, Nyquist bin dropped.
    stft_n_fft: int = 256
    n_mfcc: int = 30  # [C] 30 coefficients + Δ + ΔΔ = 90 rows
    delta_width: int = 9  # [D] librosa.feature.delta's default window
    # [D] dB of the power (mel) or magnitude (STFT) with a floor of 1e-10 and no top-dB clipping; the authors' log of
    # mel² only rescales this by 2 (PAPER.md).
    amin: float = 1e-10
    # [D] frames are centred with zero padding at the clip's ends, as librosa (>= 0.10) does; torchaudio's default
    # is reflection, which differs only in the first and last frame.
    pad_mode: str = "constant"

    @classmethod
    def for_seconds(cls, seconds: float, **kw) -> "FrontEndParams":
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

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "FrontEndParams":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def check_input(kind: str) -> str:
    if kind not in INPUTS:
        raise ValueError(f"unknown input {kind!r}: choose one of {', '.join(INPUTS)}")
    return kind


class FrontEnd(nn.Module):
    """(batch, samples) float waves at `sample_rate` → (batch, 1, rows, frames) log features."""

    def __init__(self, kind: str, params: FrontEndParams = FrontEndParams()):
        super().__init__()
        import torchaudio.transforms as T

        self.kind, self.params = check_input(kind), params
        p = params
        if kind == "mel":
            self.spec = T.MelSpectrogram(
                sample_rate=p.sample_rate, n_fft=p.n_fft, hop_length=p.hop, n_mels=p.n_mels, power=2.0,
                mel_scale=p.mel_scale, norm=p.mel_norm, pad_mode=p.pad_mode,
            )
        elif kind == "stft":
            self.spec = T.Spectrogram(n_fft=p.stft_n_fft, hop_length=p.hop, power=1.0, pad_mode=p.pad_mode)
        else:
            import torchaudio.functional as AF

            # Not T.MFCC: its 80 dB floor is taken over the whole batch, so a clip's MFCC depended on its neighbours
            # (bench/preprocess.py found differences of hundreds of units). Here the floor is per clip, as librosa's.
            self.spec = T.MelSpectrogram(
                sample_rate=p.sample_rate, n_fft=p.n_fft, hop_length=p.hop, n_mels=p.n_mels, power=2.0,
                mel_scale=p.mel_scale, norm=p.mel_norm, pad_mode=p.pad_mode,
            )
            self.register_buffer("dct", AF.create_dct(p.n_mfcc, p.n_mels, "ortho"))
            self.delta = T.ComputeDeltas(win_length=p.delta_width)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        p = self.params
        x = self.spec(wave.float())
        if self.kind == "mel":
            x = 10.0 * torch.log10(torch.clamp(x, min=p.amin))
        elif self.kind == "stft":
            x = 20.0 * torch.log10(torch.clamp(x[..., :-1, :], min=p.amin))  # drop the Nyquist bin → 128 rows
        else:
            return self.mfcc_from_mel_db(10.0 * torch.log10(torch.clamp(x, min=p.amin)))
        return x.unsqueeze(1)

    def mfcc_from_mel_db(self, db: torch.Tensor) -> torch.Tensor:
        """MFCC + Δ + ΔΔ from the mel input's (batch, n_mels, frames) dB: the mel front end computes exactly this
        dB (same STFT, filterbank and floor), so preprocessing derives the MFCC from it instead of a second STFT."""
        db = torch.maximum(db, db.amax(dim=(-2, -1), keepdim=True) - 80.0)  # librosa's top_db=80, per clip
        x = torch.matmul(db.transpose(-1, -2), self.dct).transpose(-1, -2)
        d1 = self.delta(x)
        return torch.cat([x, d1, self.delta(d1)], dim=-2).unsqueeze(1)


@functools.lru_cache(maxsize=16)
def frontend(kind: str, params: FrontEndParams = FrontEndParams()) -> FrontEnd:
    """A cached front end: building the mel filterbank and DCT matrix costs more than a short clip's features."""
    return FrontEnd(kind, params)


@torch.no_grad()
def compute(waves: torch.Tensor, kinds=INPUTS, params: FrontEndParams = FrontEndParams()) -> dict[str, torch.Tensor]:
    """All requested features of a batch of waves in one pass: {kind: (batch, rows, frames)}.

    With both mel and MFCC asked for, the MFCC comes from the mel's dB (identical values, one STFT fewer: 22 % of
    preprocessing's time, bench/preprocess.py)."""
    out = {}
    for k in sorted(kinds, key=lambda k: k != "mel"):  # the mel first, so that the MFCC can reuse it
        if k == "mfcc" and "mel" in out:
            out[k] = frontend(k, params).to(waves.device).mfcc_from_mel_db(out["mel"])[:, 0]
        else:
            out[k] = frontend(k, params).to(waves.device)(waves)[:, 0]
    return {k: out[k] for k in kinds}
