"""Tag audio files with a trained cell's model.

    python -m fcn.predict song.mp3 --run mtat-mel-fcn4-s0              # a cell key (its run dir under --out-dir)
    python -m fcn.predict a.mp3 b.wav --run 3f2c...e1 --tracking-uri http://mlflow:5000   # an MLflow run id
    python -m fcn.predict song.mp3 --run runs/fcn/mtat-mel-fcn4-s0/ckpt/best.pt --top 5 --json
    python -m fcn.predict --pretrained choi2016-msd-cnn a.mp3 b.mp3 c.mp3 d.mp3   # the authors' own MSD model

Uses the run's own best checkpoint, front end (type and parameters) and input standardisation, so a file is seen
exactly as the test clips were: mono, 12 kHz, centre-cropped or zero-padded to the clip length.

--pretrained uses a model shipped in the package (fcn/pretrained/, no download): choi2016-msd-cnn is the authors'
released Keras tagger (50 MSD tags), fed their own input (fcn/audio2016.py); it also takes their precomputed
log-mels, `.npy` files of 1x1x96x1366. Its BatchNorm uses the statistics of the batch, as the authors ran it: all
files are predicted together (up to 32 at a time), a batch of fewer than 4 is filled up to 4 with the
authors' example clips (their outputs dropped), and so a file's tags depend a little on the files beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from fcn import cell, checkpoint, pretrained, tracking
from fcn.audio import AudioError, fix_length, load
from fcn.config import RunConfig
from fcn.errors import UserError, run_cli
from fcn.frontends import FrontEnd, FrontEndParams
from fcn.models import FCN


def find_checkpoint(
    run: str, *, out_dir: str = cell.OUT_DIR, experiment: str = cell.CELL_EXPERIMENT, tracking_uri: str = ""
) -> Path:
    """A .pt path, a cell key (its run dir), or an MLflow run id / cell key whose `model/best.pt` artifact is used."""
    p = Path(run)
    if p.suffix == ".pt" and p.exists():
        return p
    local = cell.ckpt(cell.run_dir_at(out_dir, experiment, run), cell.BEST)
    if local.exists():
        return local

    uri = tracking.resolve_uri(tracking_uri, out_dir)
    tracking.check_reachable(uri)
    c = tracking.client(uri)
    run_id = run
    exp = c.get_experiment_by_name(experiment)
    if exp is not None:
        runs = [r for r in tracking.cell_runs(c, exp.experiment_id, run) if cell.run_is_finished(r)]
        if runs:
            run_id = runs[-1].info.run_id
    try:
        c.get_run(run_id)
    except Exception:  # noqa: BLE001 - mlflow raises its own exception types for a bad id
        raise UserError(
            f"no finished run {run!r}: not a checkpoint file, not a cell key under {out_dir}/"
            f"{experiment}/, and not an MLflow run id in {tracking.redact(uri)}"
        ) from None
    import mlflow.artifacts  # heavy (seconds): only a run found in MLflow, not on disk, needs it

    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model/best.pt", tracking_uri=uri))


class Tagger:
    def __init__(self, ckpt_path: Path):
        if not Path(ckpt_path).is_file():
            raise UserError(f"{ckpt_path} does not exist")
        # verified, tensors and plain values only (weights_only): a crafted file is refused, nothing of it runs
        state = checkpoint.read_best(ckpt_path)
        self.config = RunConfig.from_dict(state["config"])
        self.tags = list(state["tags"])
        self.params = FrontEndParams.from_dict(state["frontend"])
        self.frontend = FrontEnd(self.config.input, self.params)
        self.model = FCN(self.config.depth, self.config.width, n_tags=len(self.tags), **self.config.model_options)
        self.model.load_state_dict(state["model"])
        self.model.eval()
        self.mean, self.std = state["norm"]

    @torch.no_grad()
    def scores(self, path: str | Path) -> np.ndarray:
        wave = fix_length(load(path, sr=self.params.sample_rate), self.params.n_samples)
        x = self.frontend(torch.from_numpy(wave)[None])
        x = (x.float() - self.mean) / self.std
        return torch.sigmoid(self.model(x))[0].numpy()

    def top(self, path: str | Path, k: int = 10) -> list[tuple[str, float]]:
        s = self.scores(path)
        order = np.argsort(-s)[:k]
        return [(self.tags[i], float(s[i])) for i in order]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m fcn.predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "files",
        nargs="+",
        help="audio files (MP3, WAV, any rate or channel count); with --pretrained also .npy log-mels",
    )
    ap.add_argument("--run", default="", help="cell key, MLflow run id, or a best.pt path")
    ap.add_argument(
        "--pretrained",
        default="",
        choices=sorted(pretrained.MODELS),
        help="a model shipped in the package instead of a run: choi2016-msd-cnn (the authors' MSD tagger; its "
        "files are predicted as one batch, see above)",
    )
    ap.add_argument(
        "--mp3-delay",
        default="keep",
        choices=("keep", "drop"),
        help="with --pretrained: keep the 529 samples an MP3 decoder puts in front when no LAME tag says so (as the "
        "authors' printed output did; default) or drop them (as their released .npy log-mels did)",
    )
    ap.add_argument("--top", type=int, default=10, help="how many tags to print (default: 10)")
    ap.add_argument("--out-dir", default=cell.OUT_DIR, help=f"the runs' out dir (default: {cell.OUT_DIR})")
    ap.add_argument(
        "--experiment", default=cell.CELL_EXPERIMENT, help=f"MLflow experiment (a grid's: {cell.GRID_EXPERIMENT})"
    )
    ap.add_argument("--tracking-uri", default="")
    ap.add_argument("--json", action="store_true", help="one JSON object per file instead of text")
    args = ap.parse_args(argv)
    if bool(args.run) == bool(args.pretrained):
        raise UserError("give either --run (a trained cell) or --pretrained (a shipped model)")
    if args.pretrained:
        sys.exit(_main_pretrained(args))
    tagger = Tagger(
        find_checkpoint(args.run, out_dir=args.out_dir, experiment=args.experiment, tracking_uri=args.tracking_uri)
    )
    failed = 0
    for f in args.files:
        try:
            top = tagger.top(f, args.top)
        except AudioError as e:
            print(f"error: {e}", file=sys.stderr)  # one bad file does not stop the others
            failed += 1
            continue
        if args.json:
            print(json.dumps({"file": f, "run": tagger.config.key, "tags": dict(top)}))
        else:
            print(f"{f} ({tagger.config.key}): " + ", ".join(f"{t} {p:.2f}" for t, p in top))
    if failed:
        sys.exit(1)


def _main_pretrained(args) -> int:
    """--pretrained: every file's features first, then one prediction over all of them (the model's batches)."""
    tagger = pretrained.PretrainedTagger(args.pretrained, mp3_delay=args.mp3_delay)
    files, feats, failed = [], [], 0
    for f in args.files:
        try:
            feats.append(tagger.features(f))
            files.append(f)
        except AudioError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
    scores = tagger.probabilities(np.stack(feats)) if feats else []
    for f, s in zip(files, scores, strict=True):
        top = tagger.top(s, args.top)
        if args.json:
            print(json.dumps({"file": f, "run": args.pretrained, "tags": dict(top)}))
        else:
            print(f"{f} ({args.pretrained}): " + ", ".join(f"{t} {p:.3f}" for t, p in top))
    return 1 if failed else 0


if __name__ == "__main__":
    run_cli(main)
