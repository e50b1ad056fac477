"""Generate `slurm/<dataset>_fcn<depth>.sh`: one sbatch script per (dataset, depth) of the paper's grid (one template),
and `slurm/ray_cluster.sh`; their #SBATCH lines come from SlurmOptions, their shared bash rules from one copy here.

    python -m harness.sbatch            # (re)write slurm/mtat_fcn3.sh ... slurm/msd_fcn7.sh, slurm/ray_cluster.sh
    python -m harness.sbatch --check    # exit 1, listing the scripts that differ from what would be generated
    python -m harness.sbatch --out DIR  # write (or --check) DIR instead of the repository's slurm/

The grid comes from harness.cells (the same expansion as `python -m harness.grid`), the published numbers from
harness.paper, the cost of each model from fcn.models (multiply-adds counted on the real network). Each script runs one
cell with `srun python -m fcn.train --preset paper ...`: one task per GPU, DDP through fcn/dist.py, requeue + resume on
preemption or time limit. The input (mel / STFT / MFCC) is a variable of the script, INPUT=${INPUT:-mel}.

The time estimates are derived, not measured: training costs 3 × 2 × forward multiply-adds FLOPs per clip (forward +
backward), validation 2 ×; one H100 is assumed to sustain the planning figure of ~2,600 FCN-4 clips/s in bf16, i.e.
~156 TFLOP/s (PAPER.md "Compute at paper scale": ~60 GFLOP per FCN-4 training clip).
"""

from __future__ import annotations

import argparse
import functools
import math
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from fcn.cell import OUT_DIR
from fcn.errors import run_cli
from harness import paper

REPO = Path(__file__).resolve().parents[1]
SLURM_DIR = REPO / "slurm"

# --- compute model (PAPER.md, "Compute at paper scale" [D]) -----------------------------------------------------------
FCN4_CLIPS_PER_S = 2600  # planning figure for one H100 in bf16 on FCN-4, 96×1366 mel; not measured here
# Training / validation clips per epoch, on the paper preset's splits: MTAT's `folder` split (fcn.config
# PAPER_MTAT_SPLIT: folders 0-b / c, every clip; 18,706 / 1,825 [U: per-folder counts not re-counted here, their sum
# with d-f's 5,329 is MTAT's 25,863 rows less its 3 broken clips]), Choi's MSD split [C] and MTG-Jamendo's split-0 [C].
SPLIT_CLIPS = {"mtat": (18_706, 1_825), "msd": (201_680, 12_634), "jamendo": (32_136, 10_888)}
FEATURE_KB = 262  # a 96×1366 float16 feature (PAPER.md)
# What each job asks for (its #SBATCH lines, rendered from SlurmOptions like the grid's submitit jobs). One GPU by
# default: the paper preset's batch of 16 is per process, so one GPU is the recipe as written; more GPUs are a flag
# away (see each script's header).
GPUS = 1
CPUS_PER_TASK = 8  # 4 DataLoader workers (paper preset) + the trainer + headroom
MEM_GB = {"mtat": 32, "msd": 64, "jamendo": 64}  # per node
LOG = "slurm/logs/%x-%j.out"


@dataclass(frozen=True)
class Script:
    name: str
    text: str


def grid_pairs() -> list[tuple[str, int]]:
    """(dataset, depth) of every cell of the paper's grid (harness.cells), in the grid's order."""
    # torch comes with fcn.config and fcn.models: imported where needed, so that `python -m harness.sbatch --help`
    # answers in 0.05 s rather than ~2.7 s (measured); the same in the functions below
    from fcn.config import DATASETS, RunConfig
    from harness.cells import GridSpec, expand

    pairs: list[tuple[str, int]] = []
    for c in expand(GridSpec(datasets=DATASETS), RunConfig()):  # every data set, MTG-Jamendo too
        if (c.dataset, c.depth) not in pairs:
            pairs.append((c.dataset, c.depth))
    return pairs


@functools.cache
def _macs(depth: int) -> int:
    """Forward multiply-adds of FCN-`depth` at paper scale on a 96×1366 mel."""
    from fcn.frontends import FrontEndParams
    from fcn.models import FCN, forward_macs

    p = FrontEndParams()
    return forward_macs(FCN(depth, 1.0), p.rows("mel"), p.n_frames)


def _dur(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _reproduces(dataset: str, depth: int) -> list[str]:
    if dataset == "jamendo":
        w = paper.WON_JAMENDO
        return [
            f"Not in the paper. Reference: {w.model} of {w.source}: ROC-AUC {w.roc_auc:.4f}, PR-AUC {w.pr_auc:.4f} "
            f"{w.mark}; not the same network, so a reference, not a reproduction.",
            "Which download DATA_ROOT holds: FCN_ARGS='--jamendo-type audio' (the default; NN/<id>.mp3), 'audio-low' "
            "(.low.mp3) or 'melspecs' (.npy, the data set's own mel-spectrograms: INPUT=mel only).",
        ]
    lines = []
    for inp in ("mel", "stft", "mfcc"):
        pub, rerun = paper.published(dataset, inp, depth), paper.rerun(dataset, inp, depth)
        if pub is None and rerun is None:
            continue
        if dataset == "msd":
            txt = f"{pub:.3f} as published"
            txt += (
                f"; {rerun:.3f} in the first author's re-run (no LR schedule, 480 epochs)"
                if rerun is not None
                else "; no re-run number for this depth"
            )
        else:
            txt = f"{pub:.3f}" + (" (the paper's headline)" if (inp, depth) == ("mel", 4) else "")
        lines.append(f"INPUT={inp}: {txt} [C]")
    if not lines:
        lines.append("not in the paper (it reports MTAT FCN-3/4/5): our extension of the depth axis")
    elif not any(ln.startswith("INPUT=stft") for ln in lines):
        lines.append("INPUT=stft / mfcc: not in the paper for this depth")
    if dataset == "msd":
        lines.append(
            "The first author later warned the published MSD numbers were not reproducible (learning-rate "
            "schedule) [C]."
        )
    if depth >= 6:
        lines.append(
            "FCN-6/7 architecture is a third-party reading [U]: FCN-5 plus "
            + ("one 1×1 convolution" if depth == 6 else "two 1×1 convolutions")
            + " to 1024 maps."
        )
    return lines


def _estimate(dataset: str, depth: int, macs: int, macs4: int) -> tuple[list[str], int]:
    """Header lines on how long the job takes, and the time limit in hours."""
    from fcn.config import PAPER_EPOCHS, PAPER_MTAT_SPLIT, PAPER_PATIENCE

    flops_per_s = FCN4_CLIPS_PER_S * 6 * macs4  # the assumed sustained rate of one H100
    clips_per_s = flops_per_s / (6 * macs)
    n_train, n_valid = SPLIT_CLIPS[dataset]
    epoch_flop = n_train * 6 * macs + n_valid * 2 * macs
    epoch_s = epoch_flop / flops_per_s
    worst_s = PAPER_EPOCHS * epoch_s
    hours = math.ceil(1.5 * worst_s / 3600 + 1)  # margin + building the feature store / first-epoch warm-up
    split = {"mtat": f"{PAPER_MTAT_SPLIT} split, the paper preset's", "msd": "Choi's split", "jamendo": "split-0"}[
        dataset
    ]
    lines = [
        f"FCN-{depth} costs {macs / 1e9:.2f} G multiply-adds per 96×1366 mel clip forward: ≈{6 * macs / 1e9:.0f} GFLOP "
        f"per training clip (forward + backward), {2 * macs / 1e9:.0f} per validation clip.",
        f"One {dataset.upper()} epoch ({n_train:,} training + {n_valid:,} validation clips, {split}) ≈ "
        f"{epoch_flop / 1e15:.2f} PFLOP.",
        f"Assumed: one H100 sustains ≈{flops_per_s / 1e12:.0f} TFLOP/s in bf16 (the planning figure: "
        f"≈{FCN4_CLIPS_PER_S:,} FCN-4 clips/s), here ≈{clips_per_s:,.0f} clips/s.",
        f"≈{_dur(epoch_s)} per epoch on 1 GPU; the worst case, {PAPER_EPOCHS} epochs (early stopping, patience "
        f"{PAPER_PATIENCE}): ≈{_dur(worst_s)} on 1 GPU, ≈{_dur(worst_s / 4)} on 4, ≈{_dur(worst_s / 8)} on 8 "
        f"(linear scaling assumed).",
        f"The store must deliver {clips_per_s:,.0f} clips/s × {FEATURE_KB} KB ≈ {clips_per_s * FEATURE_KB / 1e3:,.0f} "
        f"MB/s: keep it on local disk or in page cache.",
        "STFT (128 rows) costs about a third more than mel; MFCC (90 rows) about the same.",
        f"Time limit: {hours} h (1.5 × the worst case + 1 h); reaching it is not fatal (the job requeues itself and "
        "resumes).",
        "Build the feature store first, on CPUs: with DATA_ROOT set and no store, this GPU job stops at once with one "
        'line naming the command (FCN_ARGS="--build-store here" builds it in the job instead):',
        f"  sbatch --cpus-per-task=16 --time=12:00:00 --wrap 'python -m fcn.preprocess --dataset {dataset} "
        "--data-root $DATA_ROOT --preset paper'",
        "  then: sbatch --dependency=afterok:<that job> this script; `python -m harness.grid --cluster slurm` does "
        "both (its store jobs: --store-cpus, --store-time-min).",
    ]
    return lines, hours


def job_options(dataset: str, hours: int):
    """The SlurmOptions of a cell script's job (the time limit from `_estimate`)."""
    from harness.backends.slurm import SlurmOptions

    return SlurmOptions(
        nodes=1,
        gpus_per_node=GPUS,
        tasks_per_node=GPUS,
        cpus_per_task=CPUS_PER_TASK,
        mem_gb=MEM_GB[dataset],
        time_min=60 * hours,
    )


def directives(opts, job_name: str) -> str:
    """The #SBATCH lines of a job with these SlurmOptions: what submitit's executor asks of the same options
    (harness/backends/slurm.py), plus --requeue with the signal that checkpoints and requeues before the limit."""
    lines = [f"--job-name={job_name}", f"--nodes={opts.nodes}"]
    lines += [
        f"--{k}={v}"
        for k, v in (
            ("partition", opts.partition),
            ("account", opts.account),
            ("qos", opts.qos),
            ("gpus-per-node", opts.gpus_per_node),
        )
        if v
    ]
    lines.append(f"--ntasks-per-node={opts.ntasks}")
    if opts.cpus_per_task:
        lines.append(f"--cpus-per-task={opts.cpus_per_task}")
    if opts.mem_gb:
        lines.append(f"--mem={opts.mem_gb}G")
    lines += [
        f"--time={opts.time_min // 60:02d}:{opts.time_min % 60:02d}:00",
        "--requeue",
        f"--signal=B:USR2@{opts.signal_delay_s}",
        "--open-mode=append",
        f"--output={LOG}",
    ]
    lines += [f"--{k}={v}" for k, v in opts.extra.items()]
    return "\n".join(f"#SBATCH {ln}" for ln in lines)


# Bash shared by every script (one copy of each rule): the one-line error, FCN_ARGS / GRID_ARGS split into words
# without eval, and the requeue on USR2 (the time limit) or TERM (preemption) that never undoes a scancel.
DIE = r"""die() { echo "error: $*" >&2; exit 2; }
"""
SPLIT_ARGS = r"""split_args() {  # $1 split into NUL-terminated words by xargs: quotes group, nothing is expanded or run (no eval)
    printf '%s' "$1" | xargs -r printf '%s\0'
}
"""  # noqa: E501 - bash rendered into slurm/*.sh as it stands
REQUEUE = r"""requeued=
requeue() {
    [ -n "$requeued" ] && return
    requeued=1
    local state  # only a running (or preempted / timed-out) job is requeued: never undo a scancel
    state=$(scontrol show job -o "$SLURM_JOB_ID" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2)
    case ${state:-RUNNING} in
        RUNNING|PREEMPTED|TIMEOUT) ;;
        *) echo "$(date '+%F %T') got $1 while the job is $state: Slurm is ending or requeueing it" >&2; return ;;
    esac
    echo "$(date '+%F %T') got $1: requeueing job $SLURM_JOB_ID; @RESUMES@" >&2
    scontrol requeue "$SLURM_JOB_ID" || echo "scontrol requeue failed: resubmit this script to resume" >&2
}
trap 'requeue USR2' USR2
trap 'requeue TERM' TERM
"""


def _fill(text: str, values: dict[str, str]) -> str:
    for k, v in {"DIE": DIE, "SPLIT_ARGS": SPLIT_ARGS, "REQUEUE": REQUEUE, "OUT_DIR": OUT_DIR, **values}.items():
        text = text.replace(f"@{k}@", v.rstrip("\n"))
    left = re.findall(r"@[A-Z_]+@", text)
    assert not left, f"unfilled placeholder(s) {left} in an sbatch template"
    return text


TEMPLATE = r"""#!/bin/bash
# @TITLE@
#
# Generated by `python -m harness.sbatch` from harness/cells.py (the grid), harness/paper.py (the published
# numbers) and fcn/models.py (the cost). Edit the template in harness/sbatch.py, not this file:
# `python -m harness.sbatch --check` tells whether the scripts are in sync.
#
# Run it from the repository root (relative paths are relative to the directory you submit from):
#     DATA_ROOT=@DATA_EXAMPLE@ sbatch slurm/@NAME@
#     INPUT=stft DATA_ROOT=@DATA_EXAMPLE@ MLFLOW_TRACKING_URI=http://mlflow.example.org:5000 sbatch slurm/@NAME@
#     sbatch --partition=gpu --account=myproj slurm/@NAME@    # sbatch flags override the #SBATCH lines
# The cell's key is @DATASET@-<INPUT>-fcn@DEPTH@-s0; its run directory $OUT_DIR/$EXPERIMENT/<key>/ (checkpoints,
# train.log, metrics.json); its MLflow run is named after the key. The job prints one JSON line with the result.
#
# Reproduces (macro ROC-AUC over the 50 tags on the test split; harness/paper.py, PAPER.md):
@REPRODUCES@
#
# How long: an ESTIMATE from PAPER.md's compute figures, not a measurement.
@ESTIMATE@
#
# GPUs: one training process per GPU (one srun task each, DDP through fcn/dist.py). Keep --ntasks-per-node equal to
# --gpus-per-node (the job stops at once with an error otherwise), and raise --mem with them. Examples:
#     sbatch --gpus-per-node=4 --ntasks-per-node=4 --mem=128G slurm/@NAME@            # 4 GPUs on one node
#     sbatch --nodes=2 --gpus-per-node=4 --ntasks-per-node=4 --mem=128G slurm/@NAME@  # 8 GPUs on two nodes
# The paper preset's batch size (16 [U]) is the global batch (fcn/batching.py): N GPUs train 16 / N clips each, so
# every GPU count trains the same recipe (N must divide 16; 16 GPUs train one clip each under SyncBatchNorm; more
# are refused). Below 8 clips per GPU, BatchNorm becomes SyncBatchNorm (--sync-bn auto), so its statistics still see
# all 16. FCN_ARGS="--batch-size 64" is another recipe: its cell key and tables say -b64, never pooled with 16's.
# CPUs: --cpus-per-task covers each task's 4 DataLoader workers (paper preset) and the trainer.
# Precision: on CUDA the paper preset trains under bf16 autocast (--amp auto) [D: our speed choice, not the paper's];
# FCN_ARGS="--amp off" trains in fp32, as the paper did. Input: the authors' released preprocessing (a per-clip floor
# 80 dB below the peak of 10·log10(mel²), --frontend-variant authors) [D]; "--frontend-variant plain-db" drops it.
#
# Preemption and time limit: Slurm sends USR2 @SIGNAL_S@ s before the limit (TERM on preemption); the script then runs
# `scontrol requeue`, and the restarted job resumes from the cell's last epoch checkpoint (ckpt/last.pt) in the same
# MLflow run. Resubmitting by hand does the same; a finished cell only prints its result again.
#
# Environment (sbatch passes yours to the job):
#   INPUT=mel                 mel | stft | mfcc
#   DATA_ROOT=                the @DATASET_UPPER@ root (@DATA_HINT@); empty = the built-in
#                             synthetic set in the same layout (a smoke test, not the paper)
#   OUT_DIR=@OUT_DIR@              run directories and the default MLflow store
#   EXPERIMENT=fcn-sweep      MLflow experiment; the same as `python -m harness.grid`, so harness.status and
#                             harness.tables see this cell
#   MLFLOW_TRACKING_URI=      MLflow server; empty = sqlite:///<OUT_DIR>/mlflow.db. fcn.train reads it (and
#                             MLFLOW_TRACKING_USERNAME / _PASSWORD / _TOKEN) from the environment: never on a
#                             command line, and stored without any user:password@ in it
#   PYTHON=.venv/bin/python   the interpreter with fcn-sweep installed (`bash scripts/setup.sh`)
#   FCN_ARGS=                 extra `python -m fcn.train` flags, passed last so they win, e.g. "--seed 1 --lr 5e-4";
#                             split into words by xargs (quotes and backslashes group words), never `eval`ed:
#                             $(...), backquotes, ; and globs in it stay literal text
#
@SBATCH@

set -uo pipefail  # not -e: srun's exit status and the requeue trap are handled below

@DIE@
[ -n "${SLURM_JOB_ID:-}" ] || die "submit this script with sbatch, from the repository root: sbatch slurm/@NAME@"

INPUT=${INPUT:-mel}
DATA_ROOT=${DATA_ROOT:-}
OUT_DIR=${OUT_DIR:-@OUT_DIR@}
EXPERIMENT=${EXPERIMENT:-fcn-sweep}
MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-}
PYTHON=${PYTHON:-.venv/bin/python}
FCN_ARGS=${FCN_ARGS:-}

# --- fail fast, before any training process starts -------------------------------------------------------------
case "$INPUT" in mel|stft|mfcc) ;; *) die "INPUT=$INPUT: choose mel, stft or mfcc" ;; esac
command -v "$PYTHON" >/dev/null 2>&1 \
    || die "PYTHON=$PYTHON is not executable from $(pwd): submit from the repository root or set PYTHON=/path/to/python"
if [ -n "$DATA_ROOT" ]; then
    [ -d "$DATA_ROOT" ] || die "DATA_ROOT=$DATA_ROOT does not exist on $(hostname)" \
        "(the @DATASET_UPPER@ root: @DATA_HINT@)"
else
    echo "warning: DATA_ROOT is not set: training on the built-in synthetic @DATASET_UPPER@ set, not the real data" >&2
fi
# fcn/dist.py's rules, asked rather than repeated here: one task per GPU (else it says what to pass and the job
# stops), and the DDP rendezvous (the first node; a port below the ephemeral range, from the job id)
job=$("$PYTHON" -m fcn.dist job) || die "stopped before training ($PYTHON -m fcn.dist job, above)"
read -r MASTER_ADDR MASTER_PORT nodes tasks_per_node <<< "$job"
export MASTER_ADDR MASTER_PORT
mkdir -p "$OUT_DIR" || die "cannot create OUT_DIR=$OUT_DIR"
@SPLIT_ARGS@
split_args "$FCN_ARGS" >/dev/null 2>&1 || die "cannot split FCN_ARGS=$FCN_ARGS into words (an unclosed quote?)"
mapfile -d '' -t extra < <(split_args "$FCN_ARGS")

# --- preemption / time limit: requeue; the cell's checkpoint holds the state ----------------------------------------
@REQUEUE@

echo "$(date '+%F %T') job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}): @DATASET@ FCN-@DEPTH@ $INPUT on" \
     "$nodes node(s) × $tasks_per_node task(s), ${SLURM_GPUS_ON_NODE:-0} GPU(s) per node," \
     "master $MASTER_ADDR:$MASTER_PORT"
srun --kill-on-bad-exit=1 ${SLURM_CPUS_PER_TASK:+--cpus-per-task=$SLURM_CPUS_PER_TASK} \
    "$PYTHON" -m fcn.train --preset paper --dataset @DATASET@ --depth @DEPTH@ --input "$INPUT" \
    --data-root "$DATA_ROOT" --out-dir "$OUT_DIR" --experiment "$EXPERIMENT" \
    ${extra[@]+"${extra[@]}"} &
pid=$!
wait "$pid"
rc=$?
while kill -0 "$pid" 2>/dev/null; do  # a trapped signal interrupts `wait`: keep waiting for srun
    wait "$pid"
    rc=$?
done
exit "$rc"
"""


RAY_TEMPLATE = r"""#!/bin/bash
# A Ray cluster inside one Slurm allocation, then the paper's grid on it: `python -m harness.grid --cluster ray`.
#
# Generated by `python -m harness.sbatch` (the template in harness/sbatch.py: the #SBATCH lines from SlurmOptions, the
# requeue and word-splitting shared with the cell scripts); `python -m harness.sbatch --check` tells whether in sync.
#
# Run it from the repository root (relative paths are relative to the directory you submit from):
#     sbatch slurm/ray_cluster.sh                                   # 2 nodes × 4 GPUs: the paper's 10 cells
#     GRID_ARGS="--preset paper --paper --gpus-per-trial 1 --data-root-mtat /data/mtat --data-root-msd /data/msd" \
#         MLFLOW_TRACKING_URI=http://mlflow.example.org:5000 sbatch --nodes=4 slurm/ray_cluster.sh
#     sbatch --nodes=1 --gpus-per-node=8 slurm/ray_cluster.sh      # sbatch flags override the #SBATCH lines
#
# The documented Ray-on-Slurm pattern (docs.ray.io, "Deploying on Slurm"): one allocation with one task per node;
# the Ray head on the first node (where this script runs), one Ray worker per other node (`srun --nodes=1 --ntasks=1
# -w <node>`), each given that node's share of the allocation (--num-cpus=$SLURM_CPUS_PER_TASK,
# --num-gpus=$SLURM_GPUS_ON_NODE); then the driver, here, on the head. Each cell is one Ray Tune trial
# (harness/backends/ray_backend.py): --gpus-per-trial 1 gives it one GPU, N > 1 runs torchrun (DDP) inside the trial.
# Finished cells are never run twice (MLflow + run directories), so rerunning or requeueing this job only does what is
# missing; interrupted cells resume from their last epoch checkpoint.
#
# Preemption and time limit: Slurm sends USR2 @SIGNAL_S@ s before the limit (TERM on preemption); the script then runs
# `scontrol requeue` and the restarted job picks the grid up where it stopped.
#
# Addresses and ports: Ray is given each node's address on the route between the nodes: the head the source address
# of its route to the second node (one node: to the controller), each worker the source of its route to the head, so
# a docker0, IPoIB or other interface listed first by `hostname -I` is never taken (Ray 2.60 ignored
# --node-ip-address=127.0.0.1); a worker that has not joined after RAY_WAIT_S ends the job with one line naming its
# node. Ports are derived from the job id, so two such jobs on one node do not collide:
# GCS RAY_PORT = 35000 + 3 × (job id % 2000), Ray client (if installed) RAY_PORT+1, dashboard agent RAY_PORT+2
# (the DDP rendezvous of the cell scripts uses 20000..26999).
#
# Security: the head listens on the node's network address, which others on the cluster's network reach too, so
# Ray's token auth is ON (RAY_AUTH_MODE=token): a fresh random token per job, in a file only you can read
# (RAY_TOKEN_FILE, default slurm/logs/.ray-token-<job id> under the submit directory: the shared file system, so the
# workers on the other nodes read the same file), deleted when the job ends. Without the token nothing can submit work
# to this cluster. GRID_ARGS is split into words by xargs (quotes group words), never `eval`ed.
#
# Environment (sbatch passes yours to the job):
#   GRID_ARGS=                flags of `python -m harness.grid` (default: "--preset paper --paper", plus
#                             "--gpus-per-trial 1" when the job has GPUs); --data-root-mtat / --data-root-msd for real
#                             data (default: the built-in synthetic sets)
#   MLFLOW_TRACKING_URI=      MLflow server; empty = sqlite:///<out dir>/mlflow.db (one node only: refused on several)
#   PYTHON=.venv/bin/python   the interpreter with fcn-sweep installed; RAY defaults to the `ray` next to it
#   RAY_PORT, RAY_HEAD_IP     override the derived port / the head's address
#   RAY_WAIT_S=120            how long to wait for the head and for every worker to join
#   RAY_TOKEN_FILE=           where the job's Ray auth token is written (a folder every node of the job can read)
#   DRIVER=grid               grid: run the cells (`harness.grid --cluster ray`); search: search each selected cell's
#                             recipe on validation data instead (`harness.search`, same GRID_ARGS flags, plus its own
#                             --trials / --space)
#
@SBATCH@

set -uo pipefail  # not -e: exit statuses and the requeue trap are handled below

@DIE@
[ -n "${SLURM_JOB_ID:-}" ] || die "submit this script with sbatch from the repository root: sbatch slurm/ray_cluster.sh"

PYTHON=${PYTHON:-.venv/bin/python}
command -v "$PYTHON" >/dev/null 2>&1 \
    || die "PYTHON=$PYTHON is not executable from $(pwd): submit from the repository root or set PYTHON=/path/to/python"
RAY=${RAY:-$(dirname "$PYTHON")/ray}
command -v "$RAY" >/dev/null 2>&1 || die "RAY=$RAY is not executable (ray[tune] is installed by scripts/setup.sh)"
RAY=$(cd "$(dirname "$RAY")" && pwd)/$(basename "$RAY")  # absolute: the workers start it through srun
export RAY PYTHON
export RAY_AUTH_MODE=token  # see "Security" above
export RAY_AUTH_TOKEN_PATH=${RAY_TOKEN_FILE:-$PWD/slurm/logs/.ray-token-$SLURM_JOB_ID}
export RAY_TMP=/tmp/ray-$SLURM_JOB_ID  # per job and node-local (Unix socket paths must stay short)
export RAY_NUM_CPUS=${SLURM_CPUS_PER_TASK:-$(nproc)}
export RAY_NUM_GPUS=${SLURM_GPUS_ON_NODE:-0}
export RAY_PORT=${RAY_PORT:-$((35000 + 3 * (SLURM_JOB_ID % 2000)))}
RAY_WAIT_S=${RAY_WAIT_S:-120}
if [ -z "${GRID_ARGS+set}" ]; then
    GRID_ARGS="--preset paper --paper"
    [ "$RAY_NUM_GPUS" -gt 0 ] && GRID_ARGS="$GRID_ARGS --gpus-per-trial 1"
fi
@SPLIT_ARGS@
split_args "$GRID_ARGS" >/dev/null 2>&1 || die "cannot split GRID_ARGS=$GRID_ARGS into words (an unclosed quote?)"
mapfile -d '' -t grid_args < <(split_args "$GRID_ARGS")
case "${DRIVER:-grid}" in
    grid) driver_cmd=(-m harness.grid --cluster ray) ;;
    search) driver_cmd=(-m harness.search) ;;
    *) die "DRIVER=$DRIVER: use grid (run the cells) or search (search their recipes)" ;;
esac

route_src() {  # the address this node sends from to reach address $1 (the interface its route goes through)
    ip -o -4 route get "$1" 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p' | head -n 1
}
export -f route_src
node_addr() {  # Slurm node $1's address (its NodeAddr, resolved to IPv4)
    local a
    a=$(scontrol show node "$1" 2>/dev/null | tr ' ' '\n' | sed -n 's/^NodeAddr=//p' | head -n 1)
    [[ "$a" =~ ^[0-9.]+$ ]] || a=$(getent ahostsv4 "${a:-$1}" 2>/dev/null | awk 'NR == 1 {print $1}')
    echo "$a"
}
node_ip() {  # this node's address towards $1 (an IPv4 address; else the first non-loopback one)
    local ip
    # a loopback route (the controller on this very host) names no address the cluster reaches: not that one
    [ -n "${1:-}" ] && ip=$(route_src "$1") && [ -n "$ip" ] && [[ "$ip" != 127.* ]] && { echo "$ip"; return; }
    ip=$(hostname -I 2>/dev/null | tr ' ' '\n' | grep -E '^[0-9.]+$' | grep -v '^127\.' | head -n 1)
    [ -n "$ip" ] || ip=$(hostname --ip-address 2>/dev/null | tr ' ' '\n' | grep -E '^[0-9.]+$' | grep -v '^127\.' \
                         | head -n 1)
    echo "${ip:-$(hostname)}"
}
export -f node_ip

# Ray's processes (and so the trials) must not look like srun tasks of this job: fcn/dist.py would read the job's
# SLURM_NTASKS / SLURM_PROCID / SLURM_GPUS_ON_NODE as a DDP launch or a GPU-count mismatch. Keep only the job's
# identity; Ray hands each trial its GPUs through CUDA_VISIBLE_DEVICES.
without_slurm_tasks() {
    local v
    for v in $(compgen -e | grep '^SLURM_'); do
        case $v in SLURM_JOB_ID|SLURM_JOB_NAME|SLURM_CLUSTER_NAME|SLURM_SUBMIT_DIR|SLURM_CONF) ;; *) unset "$v" ;; esac
    done
    exec "$@"
}
export -f without_slurm_tasks

mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
[ "${#nodes[@]}" -gt 0 ] || nodes=("$(hostname)")
head_node=${nodes[0]}
# trials on several nodes would write one SQLite file over the shared filesystem, where its locks do not hold and runs
# go missing (fcn/mlflow_db.py check_one_host would stop the second node's trials): refused here, before anything starts
[ "${#nodes[@]}" -le 1 ] || [ -n "${MLFLOW_TRACKING_URI:-}" ] || die "${#nodes[@]} nodes would write one SQLite" \
    "MLflow store over the shared filesystem, which loses runs: set MLFLOW_TRACKING_URI to a tracking server" \
    "(README, 'Tracking on a cluster'), or use --nodes=1"
# the batch script runs on the allocation's first node: its address on the route to the second (one node: to the
# controller, the address the cluster's network knows it by)
controller_addr() {  # SlurmctldHost's address: "name(addr)" or a name to resolve
    local c
    c=$(scontrol show config 2>/dev/null | sed -n 's/^SlurmctldHost[^=]*= *\([^ ]*\).*/\1/p' | head -n 1)
    [[ "$c" == *"("*")" ]] && { c=${c#*(}; echo "${c%)}"; return; }
    getent ahostsv4 "$c" 2>/dev/null | awk 'NR == 1 {print $1}'
}
towards=$( ([ "${#nodes[@]}" -gt 1 ] && node_addr "${nodes[1]}") || controller_addr)
head_ip=${RAY_HEAD_IP:-$(node_ip "$towards")}
export RAY_ADDRESS_HEAD=$head_ip:$RAY_PORT
echo "$(date '+%F %T') job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}): Ray head $head_node" \
     "($RAY_ADDRESS_HEAD), ${#nodes[@]} node(s) × $RAY_NUM_CPUS CPU(s), $RAY_NUM_GPUS GPU(s); temp dir $RAY_TMP"

pids=()
cleanup() {  # stop what this job started (by pid, never `ray stop`: that would also stop other jobs' Ray on a node)
    [ "${#pids[@]}" -gt 0 ] || { rm -f "$RAY_AUTH_TOKEN_PATH"; return 0; }
    kill -TERM "${pids[@]}" 2>/dev/null
    local p deadline=$((SECONDS + 40))  # the head drains for up to 30 s
    for p in "${pids[@]}"; do
        while kill -0 "$p" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 1; done
    done
    kill -0 "${pids[0]}" 2>/dev/null || rm -rf "$RAY_TMP"  # the head's temp dir (workers keep theirs in /tmp)
    rm -f "$RAY_AUTH_TOKEN_PATH"
}
trap cleanup EXIT
# the job's Ray token (read by the head, the workers and the driver through RAY_AUTH_TOKEN_PATH); cleanup deletes it
mkdir -p "$(dirname "$RAY_AUTH_TOKEN_PATH")" || die "cannot create the folder of RAY_TOKEN_FILE=$RAY_AUTH_TOKEN_PATH"
(umask 077 && "$PYTHON" -c 'import secrets; print(secrets.token_hex(32))' > "$RAY_AUTH_TOKEN_PATH") \
    || die "cannot write the Ray auth token to $RAY_AUTH_TOKEN_PATH"
@REQUEUE@

# --- the head, on this node ------------------------------------------------------------------------------------------
# Ray Client (ray[client], i.e. grpc) listens on 10001 unless told otherwise; without it there is no client server.
client=()
"$PYTHON" -c 'import grpc' 2>/dev/null && client=(--ray-client-server-port=$((RAY_PORT + 1)))
(without_slurm_tasks "$RAY" start --head --node-ip-address="$head_ip" --port="$RAY_PORT" \
    ${client[@]+"${client[@]}"} --dashboard-agent-listen-port=$((RAY_PORT + 2)) --include-dashboard=false \
    --disable-usage-stats --num-cpus="$RAY_NUM_CPUS" --num-gpus="$RAY_NUM_GPUS" --temp-dir="$RAY_TMP" --block) &
pids+=($!)

active_nodes() {  # how many nodes the head counts as active (0 while it is starting)
    "$RAY" status --address="$RAY_ADDRESS_HEAD" 2>/dev/null \
        | awk '/^Active:/ {on = 1; next} /^[A-Z]/ {on = 0} on && /node_/ {n++} END {print n + 0}'
}
deadline=$((SECONDS + RAY_WAIT_S))
until [ "$(active_nodes)" -ge 1 ]; do
    kill -0 "${pids[0]}" 2>/dev/null || die "the Ray head exited while starting (see above)"
    [ $SECONDS -lt $deadline ] || die "the Ray head did not come up in ${RAY_WAIT_S} s"
    sleep 2
done

# --- one worker per other node ---------------------------------------------------------------------------------------
for node in "${nodes[@]:1}"; do
    srun --nodes=1 --ntasks=1 --cpus-per-task="$RAY_NUM_CPUS" -w "$node" bash -c 'without_slurm_tasks "$RAY" start \
        --address="$RAY_ADDRESS_HEAD" --node-ip-address="$(node_ip "${RAY_ADDRESS_HEAD%:*}")" \
        --dashboard-agent-listen-port=$((RAY_PORT + 2)) \
        --disable-usage-stats --num-cpus="$RAY_NUM_CPUS" --num-gpus="$RAY_NUM_GPUS" --temp-dir="$RAY_TMP" --block' &
    pids+=($!)
done
missing_nodes() {  # the job's nodes whose address no live Ray node has
    local alive n
    alive=$(without_slurm_tasks "$PYTHON" -c 'import os, ray; ray.init(address=os.environ["RAY_ADDRESS_HEAD"],
        log_to_driver=False); print(" ".join(x["NodeManagerAddress"] for x in ray.nodes() if x["Alive"]))' \
        2>/dev/null | tail -n 1)
    for n in "${nodes[@]:1}"; do
        [[ " $alive " == *" $(node_addr "$n") "* ]] || echo -n "$n "
    done
}
until [ "$(active_nodes)" -ge "${#nodes[@]}" ]; do
    # a job that asked for N nodes and trains on fewer wastes the rest of its allocation unseen: stop, naming them
    [ $SECONDS -lt $deadline ] || die "Ray node(s) $(missing_nodes)did not join the head at $RAY_ADDRESS_HEAD in" \
        "${RAY_WAIT_S} s ($(active_nodes) of ${#nodes[@]} joined): see their lines above; RAY_WAIT_S waits longer"
    sleep 2
done
echo "$(date '+%F %T') Ray cluster up: $(active_nodes) node(s)"

# --- the driver: the grid (or a recipe search), as Ray Tune trials ---------------------------------------------------
(without_slurm_tasks "$PYTHON" "${driver_cmd[@]}" --ray-address "$RAY_ADDRESS_HEAD" \
    ${grid_args[@]+"${grid_args[@]}"}) &
driver=$!
wait "$driver"
rc=$?
while kill -0 "$driver" 2>/dev/null; do  # a trapped signal interrupts `wait`: keep waiting for the driver
    wait "$driver"
    rc=$?
done
exit "$rc"
"""


def ray_options():
    """The SlurmOptions of slurm/ray_cluster.sh's job: 2 nodes × 4 GPUs, one task (a Ray node) per node."""
    from harness.backends.slurm import SlurmOptions

    return SlurmOptions(nodes=2, gpus_per_node=4, tasks_per_node=1, cpus_per_task=32, mem_gb=256, time_min=12 * 60)


def render_ray() -> Script:
    opts = ray_options()
    return Script(
        "ray_cluster.sh",
        _fill(
            RAY_TEMPLATE,
            {
                "SBATCH": directives(opts, "fcn-ray"),
                "SIGNAL_S": str(opts.signal_delay_s),
                "RESUMES": "the grid resumes where it stopped",
            },
        ),
    )


def _comment(lines: list[str], width: int = 118) -> str:
    """Header comment lines, wrapped; continuation lines indented under their first line."""
    out = []
    for ln in lines:
        lead = len(ln) - len(ln.lstrip(" "))
        out += textwrap.wrap(
            ln,
            width,
            initial_indent="#   ",
            subsequent_indent="#     " + " " * lead,
            break_long_words=False,
            break_on_hyphens=False,
        )
    return "\n".join(out)


def render(dataset: str, depth: int, macs: int, macs4: int) -> Script:
    name = f"{dataset}_fcn{depth}.sh"
    est, hours = _estimate(dataset, depth, macs, macs4)
    opts = job_options(dataset, hours)
    values = {
        "TITLE": (
            f"JAMENDO FCN-{depth}: Choi, Fazekas & Sandler 2016's FCN on MTG-Jamendo (not in the paper), paper scale, "
            "on Slurm."
            if dataset == "jamendo"
            else f"{dataset.upper()} FCN-{depth}: one cell of Choi, Fazekas & Sandler 2016 (FCN music auto-tagging), "
            "paper scale, on Slurm."
        ),
        "NAME": name,
        "DATASET": dataset,
        "DATASET_UPPER": dataset.upper(),
        "DEPTH": str(depth),
        "DATA_EXAMPLE": f"/data/{dataset}",
        "DATA_HINT": {
            "mtat": "annotations_final.csv and the folders 0..f",
            "msd": "lastfm_tags.db, splits/, audio/",
            # which download is there: --jamendo-type (fcn.config), passed in FCN_ARGS
            "jamendo": "download folder: NN/<id>.mp3, .low.mp3 or .npy",
        }[dataset],
        "REPRODUCES": _comment(_reproduces(dataset, depth)),
        "ESTIMATE": _comment(est),
        "SBATCH": directives(opts, f"fcn-{dataset}-fcn{depth}"),
        "SIGNAL_S": str(opts.signal_delay_s),
    }
    values["RESUMES"] = "it resumes from the cell's last checkpoint"
    return Script(name, _fill(TEMPLATE, values))


def generate() -> list[Script]:
    pairs = grid_pairs()
    macs = {d: _macs(d) for d in sorted({d for _, d in pairs} | {4})}
    return [render(ds, d, macs[d], macs[4]) for ds, d in pairs] + [render_ray()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m harness.sbatch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 listing the scripts that differ from what would be generated",
    )
    ap.add_argument("--out", default=str(SLURM_DIR), metavar="DIR", help="where the scripts are (default: slurm/)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    scripts = generate()
    if args.check:
        stale = []
        for s in scripts:
            path = out / s.name
            if not path.exists():
                stale.append(f"{path} (missing)")
            elif path.read_text() != s.text:
                stale.append(f"{path} (differs)")
        if stale:
            print(
                f"{len(stale)} of {len(scripts)} sbatch script(s) out of sync with the grid; regenerate with "
                f"`python -m harness.sbatch" + (f" --out {args.out}`" if out != SLURM_DIR else "`") + ":",
                file=sys.stderr,
            )
            for s in stale:
                print(f"  {s}", file=sys.stderr)
            return 1
        print(f"{len(scripts)} sbatch scripts in {out} are in sync with the grid", file=sys.stderr)
        return 0
    out.mkdir(parents=True, exist_ok=True)
    for s in scripts:
        path = out / s.name
        if not path.exists() or path.read_text() != s.text:
            path.write_text(s.text)
        path.chmod(0o755)
    print(f"wrote {len(scripts)} sbatch scripts to {out}: " + " ".join(s.name for s in scripts), file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)  # one line for any failure (fcn/errors.py)
