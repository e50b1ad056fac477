"""Pretrained models shipped inside the package (no download): the authors' released tagger, converted.

    python -m fcn.predict --pretrained choi2016-msd-cnn song.mp3 other.mp3 their.npy

`choi2016-msd-cnn` is fcn.choi2016's model with the weights of the authors' `cnn_weights_theano.h5` (MSD, 50 tags),
converted by fcn.convert_keras; README.md here says where every file came from, why this weight file and not the
other one, and the MIT notice (LICENSE). Each file's SHA-256 is checked against SHA256SUMS before it is read, and
the checkpoint is read with weights_only=True (fcn.checkpoint): a changed or crafted file is refused, nothing of it
runs.

Batches: the model's BatchNorm after each conv uses the batch's own statistics (Keras mode 2, as the authors ran it),
so files are predicted together, up to MAX_BATCH at a time (more are split into near-equal batches), and a batch of
fewer than MIN_BATCH files is filled up to MIN_BATCH with the authors' example clips (their released log-mels,
shipped here) whose outputs are dropped. A file's tags therefore depend a little on the files beside it, as in the
authors' own example.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fcn import checkpoint
from fcn.audio import DEFAULT_DECODER, AudioError
from fcn.audio2016 import authors_log_mel
from fcn.choi2016 import N_FRAMES, N_MELS, Choi2016CNN
from fcn.errors import UserError

HERE = Path(__file__).resolve().parent
SUMS = "SHA256SUMS"
# name → file; the only model so far (README.md: why this weight file)
MODELS = {"choi2016-msd-cnn": "choi2016-msd-cnn.pt"}
# The four example clips' log-mels (float16, README.md): `logmels` = the authors' released .npy; `logmels_from_mp3` =
# fcn.audio2016 of their MP3s, decoder delay kept: the input of their printed output (the MP3s cannot ship)
EXAMPLES = "choi2016-examples.npz"
EXAMPLE_SETS = {"released": "logmels", "from-mp3": "logmels_from_mp3"}
EXAMPLE_CLIPS = ("cute", "actionable", "dubstep", "thejazzpiano")  # bensound-<name>.mp3, their example's order
# The README outputs the authors printed for those four clips with these weights, predicted as one batch [C]:
PRINTED = {
    # README at ba41c26: Theano on Linux, log-mels computed from the MP3s (fcn.audio2016 with mp3_delay="keep")
    "2016-09-17": "printed-2016-09-17.txt",
    # README at 7b4a6f7: TensorFlow backend, top-15; matches their released .npy log-mels (mp3_delay="drop")
    "2016-09-04": "printed-2016-09-04.txt",
}
MIN_BATCH = 4  # [C] the authors' example: "Use multiple, different data samples together (at least 4)"
MAX_BATCH = 32  # [D] files per batch: ~0.6 GB of activations on a CPU, and enough clips for stable statistics


def _verified(name: str) -> Path:
    """The packaged file `name`, after its SHA-256 matched SHA256SUMS (UserError otherwise)."""
    path = HERE / name
    sums = {}
    for line in (HERE / SUMS).read_text().splitlines():
        digest, _, file = line.partition("  ")
        sums[file.strip()] = digest.strip()
    if not path.is_file():
        raise UserError(f"{path} is missing from the package: reinstall fcn-sweep")
    if hashlib.sha256(path.read_bytes()).hexdigest() != sums.get(name):
        raise UserError(f"{path} does not match its SHA-256 in {HERE / SUMS}: refused (reinstall fcn-sweep)")
    return path


@functools.lru_cache(maxsize=4)
def load_model(name: str) -> tuple[Choi2016CNN, dict]:
    """(model in eval mode, what its checkpoint says: tags, batch_stats, source) of a packaged model."""
    if name not in MODELS:
        raise UserError(f"unknown pretrained model {name!r}: choose one of {', '.join(MODELS)}")
    state = checkpoint.read(_verified(MODELS[name]), required=("model", "arch", "tags", "batch_stats"))
    model = Choi2016CNN(tuple(state["batch_stats"]), n_tags=len(state["tags"]))
    model.load_state_dict(state["model"])
    return model.eval(), {k: v for k, v in state.items() if k != "model"}


@functools.lru_cache(maxsize=2)
def examples(which: str = "released") -> np.ndarray:
    """The four example clips' log-mels (EXAMPLE_SETS), (4, 1, 96, 1366) float32, in EXAMPLE_CLIPS order."""
    with np.load(_verified(EXAMPLES), allow_pickle=False) as z:
        return z[EXAMPLE_SETS[which]].astype(np.float32)[:, None]


def printed(when: str) -> dict[str, list[tuple[str, float]]]:
    """The tags and probabilities the authors printed on `when` (PRINTED), per clip in EXAMPLE_CLIPS, in their
    printed order."""
    text = _verified(PRINTED[when]).read_text()
    out = {}
    for clip in EXAMPLE_CLIPS:
        block = text.split(f"bensound-{clip}.mp3", 1)[1].split("data/", 1)[0]
        out[clip] = [(t, float(p)) for t, p in re.findall(r"\('([^']+)', '([0-9.]+)'\)", block)]
    return out


def read_logmel(path) -> np.ndarray:
    """A precomputed log-mel `.npy` in the authors' layout ((1, 1, 96, 1366), (1, 96, 1366) or (96, 1366), any float
    dtype) as (1, 96, 1366) float32; AudioError (one line) for anything else. Read without pickle."""
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise AudioError(path, f"not a readable .npy log-mel ({str(e).splitlines()[0][:100]})") from None
    if a.dtype.kind != "f" or a.size != N_MELS * N_FRAMES or a.shape[-2:] != (N_MELS, N_FRAMES):
        raise AudioError(
            path, f"a log-mel in the authors' layout is 1×1×{N_MELS}×{N_FRAMES} floats, not {a.shape} {a.dtype}"
        )
    a = a.reshape(1, N_MELS, N_FRAMES).astype(np.float32)
    if not np.isfinite(a).all():
        raise AudioError(path, "contains NaN or infinite values")
    return a


@dataclass
class PretrainedTagger:
    """Tags files with a packaged model: audio through fcn.audio2016 (the authors' input), or their .npy log-mels."""

    name: str
    mp3_delay: str = "keep"  # fcn.audio2016: "keep" (their printed output) or "drop" (their released .npy)
    decoder: str = DEFAULT_DECODER

    def __post_init__(self):
        self.model, self.meta = load_model(self.name)
        self.tags = list(self.meta["tags"])

    def features(self, path) -> np.ndarray:
        """(1, 96, 1366) float32 log-mel of an audio file or of a `.npy` in the authors' layout."""
        if str(path).lower().endswith(".npy"):
            return read_logmel(path)
        return authors_log_mel(path, self.decoder, self.mp3_delay)

    @torch.no_grad()
    def probabilities(self, logmels: np.ndarray) -> np.ndarray:
        """(N, 1, 96, 1366) → (N, tags) probabilities, in batches as the module docstring says."""
        out = []
        for part in np.array_split(logmels, -(-len(logmels) // MAX_BATCH)) if len(logmels) else []:
            batch = part
            if self.model.needs_batch and len(part) < MIN_BATCH:
                batch = np.concatenate([part, examples()[: MIN_BATCH - len(part)]])
            p = torch.sigmoid(self.model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))))
            out.append(p[: len(part)].numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.tags)), np.float32)

    def top(self, scores: np.ndarray, k: int = 10) -> list[tuple[str, float]]:
        order = np.argsort(-scores, kind="stable")[:k]
        return [(self.tags[i], float(scores[i])) for i in order]
