#!/bin/bash
# A Ray cluster inside one Slurm allocation, then the paper's grid on it: `python -m harness.grid --cluster ray`.
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
# Preemption and time limit: Slurm sends USR2 120 s before the limit (TERM on preemption); the script then runs
# `scontrol requeue` and the restarted job picks the grid up where it stopped.
#
# Addresses and ports: Ray is given each node's interface address (`hostname -I`, first non-loopback; Ray 2.60
# ignored --node-ip-address=127.0.0.1), and ports derived from the job id, so two such jobs on one node do not collide:
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
#   MLFLOW_TRACKING_URI=      MLflow server; empty = sqlite:///<out dir>/mlflow.db
#   PYTHON=.venv/bin/python   the interpreter with fcn-sweep installed; RAY defaults to the `ray` next to it
#   RAY_PORT, RAY_HEAD_IP     override the derived port / the head's address
#   RAY_WAIT_S=120            how long to wait for the head and for every worker to join
#   RAY_TOKEN_FILE=           where the job's Ray auth token is written (a folder every node of the job can read)
#   DRIVER=grid               grid: run the cells (`harness.grid --cluster ray`); search: search each selected cell's
#                             recipe on validation data instead (`harness.search`, same GRID_ARGS flags, plus its own
#                             --trials / --space)
#
#SBATCH --job-name=fcn-ray
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --mem=256G
#SBATCH --time=12:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR2@120
#SBATCH --open-mode=append
#SBATCH --output=slurm/logs/%x-%j.out

set -uo pipefail  # not -e: exit statuses and the requeue trap are handled below

die() { echo "error: $*" >&2; exit 2; }
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
split_args() {  # $1 split into NUL-terminated words by xargs: quotes group, nothing is expanded or run (no eval)
    printf '%s' "$1" | xargs -r printf '%s\0'
}
split_args "$GRID_ARGS" >/dev/null 2>&1 || die "cannot split GRID_ARGS=$GRID_ARGS into words (an unclosed quote?)"
mapfile -d '' -t grid_args < <(split_args "$GRID_ARGS")
case "${DRIVER:-grid}" in
    grid) driver_cmd=(-m harness.grid --cluster ray) ;;
    search) driver_cmd=(-m harness.search) ;;
    *) die "DRIVER=$DRIVER: use grid (run the cells) or search (search their recipes)" ;;
esac

node_ip() {  # this node's first non-loopback IPv4 address
    local ip
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
head_ip=${RAY_HEAD_IP:-$(node_ip)}  # the batch script runs on the allocation's first node
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
requeued=
requeue() {
    [ -n "$requeued" ] && return
    requeued=1
    local state  # only a running (or preempted / timed-out) job is requeued: never undo a scancel
    state=$(scontrol show job -o "$SLURM_JOB_ID" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2)
    case ${state:-RUNNING} in
        RUNNING|PREEMPTED|TIMEOUT) ;;
        *) echo "$(date '+%F %T') got $1 while the job is $state: Slurm is ending or requeueing it" >&2; return ;;
    esac
    echo "$(date '+%F %T') got $1: requeueing job $SLURM_JOB_ID; the grid resumes where it stopped" >&2
    scontrol requeue "$SLURM_JOB_ID" || echo "scontrol requeue failed: resubmit this script to resume" >&2
}
trap 'requeue USR2' USR2
trap 'requeue TERM' TERM

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
        --address="$RAY_ADDRESS_HEAD" --node-ip-address="$(node_ip)" --dashboard-agent-listen-port=$((RAY_PORT + 2)) \
        --disable-usage-stats --num-cpus="$RAY_NUM_CPUS" --num-gpus="$RAY_NUM_GPUS" --temp-dir="$RAY_TMP" --block' &
    pids+=($!)
done
until [ "$(active_nodes)" -ge "${#nodes[@]}" ]; do
    if [ $SECONDS -ge $deadline ]; then
        echo "warning: only $(active_nodes) of ${#nodes[@]} Ray node(s) joined in ${RAY_WAIT_S} s; going on" >&2
        break
    fi
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
