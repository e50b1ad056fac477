"""The authors' own released tagger, as a torch model: MusicTaggerCNN of Choi, Fazekas & Sandler's companion code.

    python -m fcn.predict --pretrained choi2016-msd-cnn song.mp3 other.mp3 ...   # tag files with its MSD weights
    python -m fcn.convert_keras cnn_weights_theano.h5 out.pt                     # their HDF5 -> this model's weights

Not one of the paper's FCN-3..7 (fcn/models.py): the first author's smaller 5-layer model, trained on the Million Song
Dataset (Choi's split, the 50 tags of fcn/data/splits/msd/top50_tags.txt) with Keras 1.0.6 on Theano, whose weights
he released in keunwoochoi/music-auto_tagging-keras (MIT; fcn/pretrained/README.md). What it is, read from the
weights and from his `audio_convnet.py` at commit ba41c26 [C]:
- input: 1×96×1366 log-mel, his `audio_processor.py` (`logamplitude(melspectrogram(...)**2)`: fcn.audio2016);
- `bn_0_freq`: a BatchNorm over the *time* axis (1366 entries, despite its name), running statistics at prediction
  (Keras mode 0);
- 5 × [3×3 conv, 'same' → BatchNorm over channels → ELU → max-pool → dropout 0.5], widths 32, 128, 128, 192, 256,
  pools (2,4), (2,4), (2,4), (3,5), (4,4) → 256×1×1; bn1..bn5 in Keras mode 2: the *batch's* statistics, at
  prediction too (their running statistics in the file are still Keras' initial 0 and 1: never updated);
- Dense 256 → 50, sigmoid. 865,950 trainable parameters as Keras 1 counted them (his README's number).

Keras 1.0.6 semantics reproduced here (keras-team/keras tag 1.0.6, keras/layers/normalization.py and
keras/backend/theano_backend.py) [C]:
- BatchNorm: epsilon 1e-6 (the layer's default); batch statistics: std = sqrt(biased var + eps), out =
  (x - mean) · gamma / (std + eps) + beta; running (mode 0): (x - running_mean) · gamma / (running_std + eps) + beta.
  Keras 1.0.x stores a running *standard deviation*; Keras ≥ 1.0.7 read the same field as a variance, which is why
  the author wrote "use keras == 1.0.6".
- Theano's conv2d is a true convolution (filter_flip): fcn.convert_keras flips each kernel for torch's
  cross-correlation (his own TensorFlow copy of these weights holds exactly the flipped kernels).
- ELU with alpha 1; max-pooling with ignore_border (floor), as torch's.
Dropout is a no-op at prediction, so it is left out: this module only predicts.

Because bn1..bn5 use the batch's statistics, a clip's tags depend on the other clips of its batch (his example warns:
"use multiple, different data samples together (at least 4)"); fcn.pretrained fills small batches up.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

N_MELS, N_FRAMES = 96, 1366  # [C] the input the weights were trained on (bn_0_freq has 1366 entries)
# (channels, pool) of the five conv blocks [C: the h5 file's shapes and audio_convnet.py]
BLOCKS = ((32, (2, 4)), (128, (2, 4)), (128, (2, 4)), (192, (3, 5)), (256, (4, 4)))
N_TAGS = 50
KERAS1_BN_EPSILON = 1e-6  # [C] Keras 1.0.6 BatchNormalization(epsilon=1e-6) default, used by his code
# Which BatchNorm of (bn_0_freq, bn1..bn5) uses the batch's statistics at prediction (Keras mode 2) [C: audio_convnet.py
# at ba41c26, the code that printed the reference output for these weights; its bn1..bn5 running statistics are 0/1]
BATCH_STATS = (False, True, True, True, True, True)


class KerasBatchNorm(nn.Module):
    """Keras 1.0.6's BatchNormalization at prediction (Theano backend), over `axis` of an (N, C, H, W) input.

    `batch_stats`: mode 2 (normalise with the batch's own mean and std, as in training); else mode 0 (the running
    mean and running *std* the file holds)."""

    def __init__(self, size: int, axis: int, batch_stats: bool, eps: float = KERAS1_BN_EPSILON):
        super().__init__()
        self.axis, self.batch_stats, self.eps = axis, batch_stats, eps
        self.gamma = nn.Parameter(torch.ones(size))
        self.beta = nn.Parameter(torch.zeros(size))
        self.register_buffer("running_mean", torch.zeros(size))
        self.register_buffer("running_std", torch.ones(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1] * x.dim()
        shape[self.axis] = -1
        if self.batch_stats:
            dims = [d for d in range(x.dim()) if d != self.axis]
            mean = x.mean(dims, keepdim=True)
            std = torch.sqrt(x.var(dims, unbiased=False, keepdim=True) + self.eps)
        else:
            mean, std = self.running_mean.view(shape), self.running_std.view(shape)
        return (x - mean) * (self.gamma.view(shape) / (std + self.eps)) + self.beta.view(shape)

    def extra_repr(self) -> str:
        return f"axis={self.axis}, batch_stats={self.batch_stats}, eps={self.eps}"


class Block(nn.Module):
    """3×3 conv ('same') → Keras BatchNorm over channels → ELU → max-pool (dropout: a no-op at prediction)."""

    def __init__(self, c_in: int, c_out: int, pool: tuple[int, int], batch_stats: bool):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.bn = KerasBatchNorm(c_out, axis=1, batch_stats=batch_stats)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.elu(self.bn(self.conv(x))), self.pool)


class Choi2016CNN(nn.Module):
    """(N, 1, 96, 1366) log-mels → (N, 50) logits (sigmoid for the tag probabilities) of the authors' MusicTaggerCNN."""

    def __init__(self, batch_stats: tuple[bool, ...] = BATCH_STATS, n_tags: int = N_TAGS):
        super().__init__()
        if len(batch_stats) != 1 + len(BLOCKS):
            raise ValueError(f"batch_stats needs {1 + len(BLOCKS)} flags (bn_0_freq, bn1..bn5)")
        self.bn0 = KerasBatchNorm(N_FRAMES, axis=3, batch_stats=batch_stats[0])
        blocks, c_in = [], 1
        for (c, pool), stats in zip(BLOCKS, batch_stats[1:], strict=True):
            blocks.append(Block(c_in, c, pool, stats))
            c_in = c
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Linear(c_in, n_tags)

    @property
    def needs_batch(self) -> bool:
        """Whether a clip's output depends on the other clips of its batch (any BatchNorm in Keras mode 2)."""
        return any(m.batch_stats for m in self.modules() if isinstance(m, KerasBatchNorm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (N_MELS, N_FRAMES):
            raise ValueError(f"the authors' model takes 1×{N_MELS}×{N_FRAMES} log-mels, not {tuple(x.shape[1:])}")
        return self.out(self.blocks(self.bn0(x)).flatten(1))


def keras_param_count(model: Choi2016CNN) -> int:
    """Trainable parameters as Keras 1 counted them (BatchNorm: gamma and beta only): 865,950 in his README."""
    return sum(p.numel() for p in model.parameters())
