"""Fully convolutional networks FCN-3..7 of Choi, Fazekas & Sandler, ISMIR 2016 (arXiv 1606.00298).

Run `python -m fcn.models` for the model card: parameters and forward multiply-adds of every depth × input at
paper scale (96×1366 mel, 128×1366 STFT, 90×1366 MFCC).

Every block is 3×3 conv ("same" padding) → batch norm → ReLU → max-pool → dropout 0.5 (PAPER.md, Architecture [C]).
The last block's pool is global: on the paper's 96×1366 input it equals the paper's last pool, and it keeps STFT
(128 rows), MFCC (90 rows) and shorter demo clips well defined [D]. The output is 50 logits (sigmoid at inference).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fcn.frontends import FrontEndParams

# Per depth: (channels, pool) for each 3×3 block, then the widths of the extra 1×1 blocks. PAPER.md's table:
SPECS: dict[int, tuple[tuple[tuple[int, tuple[int, int]], ...], tuple[int, ...]]] = {
    # FCN-3 [D]: 128, 384, 2048 with pools (4,8), (4,8), (6,21) → 1×1
    3: (((128, (4, 8)), (384, (4, 8)), (2048, (6, 21))), ()),
    # FCN-4 [C2]: the paper's headline model
    4: (((128, (2, 4)), (384, (4, 5)), (768, (3, 8)), (2048, (4, 8))), ()),
    # FCN-5 [C widths; pools from the authors' 5-layer code]
    5: (((128, (2, 4)), (256, (2, 4)), (512, (2, 4)), (1024, (3, 5)), (2048, (4, 4))), ()),
    # FCN-6 / FCN-7 [U: a third-party reading]: FCN-5 plus one or two 1×1 convolutions to 1024 maps
    6: (((128, (2, 4)), (256, (2, 4)), (512, (2, 4)), (1024, (3, 5)), (2048, (4, 4))), (1024,)),
    7: (((128, (2, 4)), (256, (2, 4)), (512, (2, 4)), (1024, (3, 5)), (2048, (4, 4))), (1024, 1024)),
}
DEPTHS = tuple(sorted(SPECS))
N_TAGS = 50
DROPOUT = 0.5  # after every max-pool [C]; demo runs use less (fcn.config: DEMO_DROPOUT)
# BatchNorm and initial weights. torch's defaults (what this project used first; the demo presets keep them [D]) and
# the authors' Keras 1 [C: keras-team/keras 1.0.6, the version the author names for his released model:
# BatchNormalization(epsilon=1e-6, momentum=0.9), Convolution2D/Dense(init='glorot_uniform'), biases zero].
# Keras' momentum 0.9 keeps 0.9 of the running statistic per batch: torch's momentum 0.1. Keras 1 divides by
# sqrt(var + eps) + eps and tracks a running std, torch by sqrt(var + eps) with a running var: at eps 1e-6 the same
# normalisation to 1e-6 [D: torch's formula kept].
TORCH_BN_EPSILON, TORCH_BN_MOMENTUM = 1e-5, 0.1
KERAS1_BN_EPSILON, KERAS1_BN_MOMENTUM = 1e-6, 0.1  # torch's momentum 0.1 = 1 - Keras' 0.9
INITS = ("torch", "keras1")


class Block(nn.Module):
    """conv (k×k, same padding) → BN → ReLU → max-pool → dropout; pool=None means global max-pool."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        pool: tuple[int, int] | None,
        kernel: int = 3,
        dropout: float = DROPOUT,
        bn_eps: float = TORCH_BN_EPSILON,
        bn_momentum: float = TORCH_BN_MOMENTUM,
    ):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2)
        self.bn = nn.BatchNorm2d(c_out, eps=bn_eps, momentum=bn_momentum)
        self.pool = pool
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        h, w = x.shape[-2:]
        if self.pool is None:
            x = F.adaptive_max_pool2d(x, 1)
        else:
            # Shorter demo clips and the 90-row MFCC can be smaller than a paper pool: pool what is there [D].
            x = F.max_pool2d(x, (min(self.pool[0], h), min(self.pool[1], w)))
        return self.drop(x)


def scaled(channels: int, width: float) -> int:
    """Width multiplier for demo scale; width=1.0 is the paper's model."""
    return max(4, int(round(channels * width)))


class FCN(nn.Module):
    """FCN-`depth` (3..7) of Choi et al. 2016 on a 1×rows×frames log-spectrogram; returns (batch, 50) logits."""

    def __init__(
        self,
        depth: int = 4,
        width: float = 1.0,
        n_tags: int = N_TAGS,
        dropout: float = DROPOUT,
        *,
        init: str = "torch",
        bn_eps: float = TORCH_BN_EPSILON,
        bn_momentum: float = TORCH_BN_MOMENTUM,
    ):
        super().__init__()
        if depth not in SPECS:
            raise ValueError(f"unknown depth {depth!r}: FCN depths are {', '.join(map(str, DEPTHS))}")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}: choose one of {', '.join(INITS)}")
        convs, extras = SPECS[depth]
        self.depth, self.width = depth, width
        bn = dict(dropout=dropout, bn_eps=bn_eps, bn_momentum=bn_momentum)
        layers, c_in = [], 1
        for i, (c, pool) in enumerate(convs):
            last = i == len(convs) - 1
            layers.append(Block(c_in, scaled(c, width), None if last else pool, **bn))
            c_in = scaled(c, width)
        for c in extras:
            layers.append(Block(c_in, scaled(c, width), None, kernel=1, **bn))
            c_in = scaled(c, width)
        self.features = nn.Sequential(*layers)
        self.out = nn.Linear(c_in, n_tags)
        if init == "keras1":
            init_keras1(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x).flatten(1))


@torch.no_grad()
def init_keras1(model: nn.Module) -> None:
    """Keras 1's initial weights [C, see INITS]: glorot_uniform, U(±sqrt(6 / (fan_in + fan_out))) with the fans of
    Keras' 'th' kernels (channels × kernel area), for every conv and dense kernel; biases zero (BatchNorm: γ 1, β 0,
    torch's too)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_macs(model: FCN, rows: int, frames: int) -> int:
    """Multiply-adds of one forward pass (convolutions and the output layer), counted from the actual shapes."""
    macs, hooks = 0, []

    def conv_hook(mod: nn.Conv2d, _inp, out):
        nonlocal macs
        k = mod.kernel_size[0] * mod.kernel_size[1]
        macs += mod.in_channels * mod.out_channels * k * out.shape[-2] * out.shape[-1]

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
    with torch.no_grad():
        was = model.training
        model.eval()
        model(torch.zeros(1, 1, rows, frames))
        model.train(was)
    for h in hooks:
        h.remove()
    return macs + model.out.in_features * model.out.out_features


def model_card() -> str:
    """Markdown table: depth × input → parameters and forward multiply-adds at paper scale."""
    p = FrontEndParams()
    lines = [
        "FCN model card (Choi, Fazekas & Sandler 2016) at paper scale: 29.12 s at 12 kHz → "
        f"{p.n_frames} frames; mel {p.rows('mel')} rows, STFT {p.rows('stft')}, MFCC {p.rows('mfcc')}",
        "",
        "Precision: `--amp auto` (the default) trains under bf16 autocast on CUDA [D: our speed choice, not the "
        "paper's]; `--amp off` trains in fp32, the paper's precision; CPU runs are fp32 either way.",
        f"Input: `--preset paper` feeds the `{p.variant}` mel (the authors' released preprocessing: 10·log10(mel²) "
        "with a per-clip floor 80 dB below its peak [D: taken as the input behind the published numbers]); the demo "
        "presets' `plain-db` is 10·log10(mel) with no floor (`--frontend-variant`). MFCC: 30 coefficients + Δ + ΔΔ "
        "(librosa's "
        f"delta) from the same {p.n_mels} mel bands [D].",
        "",
        "| model | input | input shape | parameters | forward multiply-adds |",
        "|---|---|---|---:|---:|",
    ]
    for depth in DEPTHS:
        model = FCN(depth)
        for kind in ("mel", "stft", "mfcc"):
            rows = p.rows(kind)
            macs = forward_macs(model, rows, p.n_frames)
            lines.append(f"| FCN-{depth} | {kind} | 1×{rows}×{p.n_frames} | {n_params(model):,} | {macs / 1e9:.2f} G |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(model_card())
