"""Convert the authors' Keras 1 / Theano HDF5 weights into a checkpoint of fcn.choi2016's model, safely.

    python -m fcn.convert_keras cnn_weights_theano.h5 fcn/pretrained/choi2016-msd-cnn.pt
    python -m fcn.convert_keras music_tagger_cnn_weights_theano.h5 other.pt --bn-mode 0   # the mode-0 file

Reproduces how fcn/pretrained/choi2016-msd-cnn.pt was made (fcn/pretrained/README.md). Safe: h5py reads the file's
numeric datasets only (nothing in an HDF5 file runs), every layer and shape is checked against the architecture
before anything is written, and the result is an fcn checkpoint (fcn.checkpoint: tensors and plain values, SHA-256,
read back with weights_only=True). What changes on the way [C: Keras 1.0.6 + Theano semantics, fcn/choi2016.py]:
each conv kernel is flipped in both spatial axes (Theano convolves, torch cross-correlates); the Dense kernel
(in, out) is transposed to torch's (out, in); BatchNorm keeps gamma, beta, running mean and running *std* as they are.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import h5py
import numpy as np
import torch

from fcn import checkpoint
from fcn.choi2016 import BLOCKS, N_FRAMES, Choi2016CNN
from fcn.data.lists import MSD_LISTS
from fcn.errors import UserError, run_cli

ARCH = "choi2016-cnn"  # the `arch` of the checkpoints written here (fcn.pretrained reads it)
BN_PARAMS = ("gamma", "beta", "running_mean", "running_std")


def expected_layers() -> dict[str, tuple[int, ...]]:
    """Every dataset the authors' h5 holds, `layer/layer_param` → shape (Theano 'th' ordering) [C: the files]."""
    out = {f"bn_0_freq/bn_0_freq_{p}": (N_FRAMES,) for p in BN_PARAMS}
    c_in = 1
    for i, (c, _) in enumerate(BLOCKS, start=1):
        out[f"conv{i}/conv{i}_W"] = (c, c_in, 3, 3)
        out[f"conv{i}/conv{i}_b"] = (c,)
        out.update({f"bn{i}/bn{i}_{p}": (c,) for p in BN_PARAMS})
        c_in = c
    out["output/output_W"] = (c_in, 50)
    out["output/output_b"] = (50,)
    return out


def read_h5(path: str | Path) -> dict[str, np.ndarray]:
    """The weights of the authors' h5 as float32 arrays, checked name by name and shape by shape (UserError)."""
    want = expected_layers()
    found: dict[str, np.ndarray] = {}
    try:
        with h5py.File(path, "r") as h:

            def visit(name, obj):
                if isinstance(obj, h5py.Dataset):
                    if obj.dtype.kind != "f":
                        raise UserError(f"{path}: dataset {name} is {obj.dtype}, not floating point")
                    if name in want:
                        found[name] = np.asarray(obj[()], dtype=np.float32)
                    else:
                        raise UserError(f"{path}: unexpected dataset {name}: not the authors' MusicTaggerCNN")

            h.visititems(visit)
    except OSError as e:
        raise UserError(f"{path} is not a readable HDF5 file ({e})") from None
    missing = sorted(set(want) - set(found))
    if missing:
        raise UserError(f"{path}: missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    bad = [f"{k} {found[k].shape} (expected {v})" for k, v in want.items() if found[k].shape != v]
    if bad:
        raise UserError(f"{path}: wrong shapes: {'; '.join(bad[:3])}")
    if not all(np.isfinite(a).all() for a in found.values()):
        raise UserError(f"{path}: holds NaN or infinite weights")
    return found


def state_dict(w: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """fcn.choi2016.Choi2016CNN's state_dict from the h5's arrays (kernels flipped, Dense transposed)."""
    t = {}

    def bn(prefix: str, layer: str):
        for p in BN_PARAMS:
            t[f"{prefix}.{p}"] = torch.from_numpy(w[f"{layer}/{layer}_{p}"])

    bn("bn0", "bn_0_freq")
    for i in range(1, len(BLOCKS) + 1):
        kernel = w[f"conv{i}/conv{i}_W"][:, :, ::-1, ::-1]  # Theano's true convolution → cross-correlation
        t[f"blocks.{i - 1}.conv.weight"] = torch.from_numpy(np.ascontiguousarray(kernel))
        t[f"blocks.{i - 1}.conv.bias"] = torch.from_numpy(w[f"conv{i}/conv{i}_b"])
        bn(f"blocks.{i - 1}.bn", f"bn{i}")
    t["out.weight"] = torch.from_numpy(np.ascontiguousarray(w["output/output_W"].T))
    t["out.bias"] = torch.from_numpy(w["output/output_b"])
    return t


def convert(src: str | Path, dst: str | Path, *, bn_mode: int = 2, tags: list[str], source: dict) -> dict:
    """Write the fcn checkpoint of `src` to `dst`; returns what it holds (without the weights)."""
    w = read_h5(src)
    batch_stats = (False,) + (bn_mode == 2,) * len(BLOCKS) if bn_mode in (0, 2) else None
    if batch_stats is None:
        raise UserError(f"--bn-mode must be 0 or 2, not {bn_mode}")
    model = Choi2016CNN(batch_stats)
    model.load_state_dict(state_dict(w))  # strict: every tensor placed, none left over
    meta = dict(
        arch=ARCH,
        batch_stats=list(batch_stats),
        tags=list(tags),
        source=dict(source, file=Path(src).name, sha256=hashlib.sha256(Path(src).read_bytes()).hexdigest()),
    )
    checkpoint.save(dict(meta, model=model.state_dict()), dst)
    return meta


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m fcn.convert_keras", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("h5", help="the authors' Keras 1 weights (Theano ordering), e.g. cnn_weights_theano.h5")
    ap.add_argument("out", help="the fcn checkpoint to write (.pt)")
    ap.add_argument(
        "--bn-mode",
        type=int,
        default=2,
        choices=(0, 2),
        help="Keras BatchNorm mode of bn1..bn5: 2 = the batch's statistics at prediction (audio_convnet.py, "
        "cnn_weights_theano.h5; default), 0 = running statistics (music_tagger_cnn.py's file)",
    )
    ap.add_argument("--repository", default="keunwoochoi/music-auto_tagging-keras", help="where the file came from")
    ap.add_argument("--commit", default="", help="the repository's commit the file was taken from")
    args = ap.parse_args(argv)
    if not Path(args.h5).is_file():
        raise UserError(f"{args.h5} does not exist")
    tags = (MSD_LISTS / "top50_tags.txt").read_text().splitlines()  # Choi's top-50, the model's output order [C]
    meta = convert(
        args.h5, args.out, bn_mode=args.bn_mode, tags=tags, source=dict(repository=args.repository, commit=args.commit)
    )
    digest = hashlib.sha256(Path(args.out).read_bytes()).hexdigest()
    print(f"wrote {args.out} ({meta['arch']}, bn1..5 mode {args.bn_mode}); sha256 {digest}")


if __name__ == "__main__":
    run_cli(main)
