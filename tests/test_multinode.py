"""Across two Slurm nodes (tests/services/slurm_multi.py: each node its own host, with its own name and address in
its own network namespace, one shared filesystem): DDP across nodes through the cell scripts and through
`harness.grid --cluster slurm --nodes 2` (submitit), Ray across nodes through slurm/ray_cluster.sh, and a node lost
while a cell trains."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.cluster_report import record
from tests.conftest import REPO, TINY
from tests.services.slurm import patience
from tests.test_grid import grid_flags
from tests.test_sbatch import SLURM, _log, _runs, _sbatch, _tiny_env
from tests.test_slurm_cluster import _wait_for

slow = pytest.mark.slow  # every test here but the lock one starts the two-node cluster
KEY = "msd-mel-fcn7-s0"


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its schema made once: each test copies it into its out dirs, because creating the
    schema (alembic's migrations) costs 10-40 s of CPU per store on the loaded 2-core machine, per job."""
    from fcn import tracking

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    tracking.client(f"sqlite:///{path}").search_experiments()
    return path


def _out_dir(path: Path, store: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(store, path / "mlflow.db")
    return path


def test_cell_lock_waits_for_its_holder_when_told(tmp_path, monkeypatch, capsys):
    """fcn/cell.py's cell lock (no Slurm needed): a second trainer fails at once by default, waits when
    FCN_CELL_LOCK_WAIT_S says so or when it is a requeued Slurm job, and gives up with one line after the wait."""
    import fcntl
    import threading

    from fcn import cell
    from fcn.errors import UserError

    for var in ("FCN_CELL_LOCK_WAIT_S", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(var, raising=False)
    assert cell.lock_wait_s() == 0
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert cell.lock_wait_s() == 900  # a requeued job outlasts the old copy of itself
    monkeypatch.setenv("FCN_CELL_LOCK_WAIT_S", "3")
    assert cell.lock_wait_s() == 3
    monkeypatch.setenv("FCN_CELL_LOCK_WAIT_S", "soon")
    with pytest.raises(UserError, match="FCN_CELL_LOCK_WAIT_S='soon'"):
        cell.lock_wait_s()

    holder = open(tmp_path / ".lock", "a")  # another process's lock: flock conflicts across open files
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        with pytest.raises(UserError, match="being trained by another process right now"):
            cell.acquire_lock(tmp_path, wait_s=0)
        t0 = time.monotonic()
        with pytest.raises(UserError, match="still after waiting 1 s"):
            cell.acquire_lock(tmp_path, wait_s=1)
        assert time.monotonic() - t0 >= 1
        threading.Timer(1.5, holder.close).start()  # the holder ends while we wait
        got = cell.acquire_lock(tmp_path, wait_s=60)
        got.close()
        err = capsys.readouterr().err
        assert "waiting up to 60 s" in err and "got the cell lock" in err
    finally:
        holder.close()


@slow
def test_two_nodes_are_two_hosts(slurm_multi, tmp_path):
    out = tmp_path / "out.txt"
    job = slurm_multi.sbatch(
        "-N2", "-n2", "-o", str(out), "--wrap", "srun -N2 -n2 bash -c 'echo $(hostname) $(hostname -I) $SLURM_PROCID'"
    )
    assert slurm_multi.wait_job(job, timeout=60) == "COMPLETED", out.read_text() + slurm_multi.log_tails()
    rows = sorted(line.split() for line in out.read_text().splitlines() if line.strip())
    assert rows == [[n, slurm_multi.addrs[n], str(i)] for i, n in enumerate(slurm_multi.nodes)], out.read_text()
    assert slurm_multi.wait_sacct(job) == "COMPLETED"


def _history(uri: str, experiment: str, metric: str) -> list[float]:
    from fcn import tracking

    runs = _runs(uri, experiment)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED", [(r.info.run_name, r.info.status) for r in runs]
    hist = tracking.client(uri).get_metric_history(runs[0].info.run_id, metric)
    return [m.value for m in sorted(hist, key=lambda m: m.step)]


@slow
def test_cell_script_ddp_across_two_nodes_matches_two_tasks_on_one(slurm_multi, data_dir, tmp_path, empty_store):
    """rank 0 on fcnode1 and rank 1 on fcnode2 (gloo over the bridge, MASTER_ADDR = fcnode1 = its own address) give
    the per-epoch losses of the same cell as 2 tasks on one node. Both are the same computation: the same seed gives
    the same initial weights, DistributedSampler the same shards, each rank 1 thread, and the all-reduce of 2 ranks
    adds the same two numbers (a + b == b + a exactly); only the transport differs. So the tolerance is 1e-6
    relative (float32 rounding headroom), not a statistical one: measured, the values were identical."""
    jobs = {}
    # the one-node run takes no GPUs, so that both jobs fit on the 2 × 2 fake GPUs at once
    for name, opts in (
        ("two_nodes", ("--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=1")),
        ("one_node", ("--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0")),
    ):
        env = _tiny_env(data_dir, _out_dir(tmp_path / name, empty_store))
        jobs[name] = _sbatch(
            slurm_multi,
            SLURM / "msd_fcn7.sh",
            tmp_path / f"{name}.out",
            "--time=10",
            "--mem=1G",
            "--cpus-per-task=1",
            *opts,
            env=env,
        )
    for name, job in jobs.items():
        state = slurm_multi.wait_job(job, timeout=300)
        assert state == "COMPLETED", _log(tmp_path / f"{name}.out")[-4000:] + slurm_multi.log_tails()
    text = _log(tmp_path / "two_nodes.out")
    n1, n2 = slurm_multi.nodes
    assert f"rank 0/2 on host {n1}" in text and f"rank 1/2 on host {n2}" in text, text[-3000:]
    assert "2 node(s) × 1 task(s)" in text and f"master {n1}:" in text
    one = _log(tmp_path / "one_node.out")
    hosts = {ln.split(" on host ")[1].split()[0].rstrip(",") for ln in one.splitlines() if " on host " in ln}
    assert len(hosts) == 1, one[-3000:]  # both ranks (and the cell's start line) on one host
    for name in jobs:
        m = json.loads((tmp_path / name / "fcn-sweep" / KEY / "metrics.json").read_text())
        assert m["world_size"] == 2
    for metric in ("train_loss", "valid_loss", "valid_roc_auc"):
        a = _history(f"sqlite:///{tmp_path / 'two_nodes' / 'mlflow.db'}", "fcn-sweep", metric)
        b = _history(f"sqlite:///{tmp_path / 'one_node' / 'mlflow.db'}", "fcn-sweep", metric)
        assert len(a) == len(b) == 3
        assert a == pytest.approx(b, rel=1e-6, abs=1e-7), (metric, a, b)


@slow
def test_grid_on_slurm_with_two_nodes_per_cell(slurm_multi, data_dir, tmp_path, empty_store):
    """`harness.grid --cluster slurm --nodes 2`: submitit's job has one task per node; the cell trains under DDP with
    one rank on each host and finishes once. Its data set is given as a data root (the real layout) whose store does
    not exist: a CPU job builds it first and the cell's job starts only after that job completed (afterok, in sacct)."""
    from fcn.config import RunConfig
    from fcn.run_store import synth_root

    root = synth_root(RunConfig(dataset="msd", data_dir=str(data_dir), **TINY))
    flags = grid_flags(
        data_dir,
        tmp_path,
        "--cluster",
        "slurm",
        "--partition",
        slurm_multi.partition,
        "--nodes",
        "2",
        "--datasets",
        "msd",
        "--inputs",
        "mel",
        "--depths",
        "3",
        "--time-min",
        "10",
        "--data-root-msd",
        str(root),
        "--data-dir",
        str(tmp_path / "data"),  # the store this grid's CPU job builds (the session's data dir stays as it was)
        "--store-cpus",
        "1",
        "--store-time-min",
        "10",
    )
    env = {**os.environ, **slurm_multi.env, "PYTHONUNBUFFERED": "1"}
    _out_dir(tmp_path / "runs", empty_store)
    p = subprocess.run(
        [sys.executable, "-m", "harness.grid", *flags],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=patience(400),
    )
    assert p.returncode == 0, p.stderr[-4000:] + slurm_multi.log_tails()
    assert "1/1 cells finished" in p.stderr, p.stderr[-3000:]
    # the partition has 2 nodes: the sweep's cells log through a server of its own, not into SQLite from the nodes
    assert "the jobs may run on 2 nodes" in p.stderr and "tracking server stopped" in p.stderr, p.stderr[-3000:]
    cell = tmp_path / "runs" / "fcn-sweep" / "msd-mel-fcn3-s0"
    assert json.loads((cell / "metrics.json").read_text())["world_size"] == 2
    logs = "".join(
        f.read_text(errors="replace")
        for f in (tmp_path / "runs" / "fcn-sweep" / ".harness" / "submitit").rglob("*_log.err")
    )
    n1, n2 = slurm_multi.nodes
    assert f"rank 0/2 on host {n1}" in logs and f"rank 1/2 on host {n2}" in logs, logs[-3000:]
    runs = [r for r in _runs(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}", "fcn-sweep") if "cell_key" in r.data.tags]
    assert [(r.info.run_name, r.info.status) for r in runs] == [("msd-mel-fcn3-s0", "FINISHED")]
    # stores before GPUs: the store's CPU job completed before the cell's job started, which waited on it
    jobs = json.loads((tmp_path / "runs" / "fcn-sweep" / ".harness" / "slurm_jobs.json").read_text())
    store_job = next(v for k, v in jobs.items() if k.startswith("store:"))
    cell_job = jobs["msd-mel-fcn3-s0"]
    assert f"CPU job {store_job} builds it first" in p.stderr and f"after store job {store_job}" in p.stderr
    assert slurm_multi.wait_sacct(store_job) == "COMPLETED" and slurm_multi.wait_sacct(cell_job) == "COMPLETED"
    times = {}
    for j in (store_job, cell_job):
        out = slurm_multi.run("sacct", "-X", "-n", "-P", "-j", str(j), "-o", "JobID,Submit,Start,End").stdout
        times[j] = out.strip().splitlines()[0].split("|")
    assert times[store_job][3] <= times[cell_job][2], times  # ISO times: the cell started after the build ended
    assert times[cell_job][1] <= times[store_job][3], times  # and was submitted before it ended: it waited (afterok)
    record(
        "test_grid_on_slurm_with_two_nodes_per_cell",
        jobs=2,
        finished=1,
        note=f"store job {store_job} end {times[store_job][3]} ≤ cell job {cell_job} start {times[cell_job][2]} "
        "(afterok, sacct)",
    )


def _hosts(train_log: Path) -> list[str]:
    """The hosts a cell's rank 0 ran on, in order (train.py's start and resume lines)."""
    text = train_log.read_text() if train_log.exists() else ""
    return [ln.split(" on host ")[1].split()[0].rstrip(",") for ln in text.splitlines() if " on host " in ln]


DECOY = "fcndecoy0"


def _ip(node: str, *args: str, check: bool = True) -> None:
    subprocess.run(["ip", "-n", node, *args], check=check, capture_output=True, timeout=30)


@contextmanager
def _decoy_first(cluster, node: str):
    """An interface listed before the node's real one by `hostname -I` (as docker0 or IPoIB can be), on an address
    that reaches nothing. `hostname -I` lists by interface index, and eth0 holds index 2 in the node's namespace: eth0
    is moved out to a spare namespace, the decoy (a veth pair, both ends inside: this kernel has no dummy devices)
    takes index 2, and eth0 comes back with a higher index, its address and route restored."""
    decoy = "10.89.0.11"  # exists only on the decoy inside the node's own namespace
    spare = f"{node}-spare"
    subprocess.run(["ip", "netns", "add", spare], check=True, timeout=30)
    try:
        _ip(node, "link", "set", "eth0", "netns", spare)
        try:
            _ip(node, "link", "add", DECOY, "index", "2", "type", "veth", "peer", "name", DECOY + "p")
        finally:
            _ip(spare, "link", "set", "eth0", "netns", node)
    finally:
        subprocess.run(["ip", "netns", "delete", spare], check=False, timeout=30)
    try:
        _ip(node, "addr", "add", f"{cluster.addrs[node]}/24", "dev", "eth0")
        _ip(node, "link", "set", "eth0", "up")
        _ip(node, "route", "add", "default", "via", cluster.bridge_addr)
        _ip(node, "addr", "add", f"{decoy}/24", "dev", DECOY)
        _ip(node, "link", "set", DECOY, "up")
        _ip(node, "link", "set", DECOY + "p", "up")
        yield decoy
    finally:
        _ip(node, "link", "delete", DECOY, check=False)


@slow
def test_ray_cluster_script_spans_two_nodes(slurm_multi, data_dir, tmp_path, empty_store):
    """slurm/ray_cluster.sh with --nodes=2: refused in one line without a tracking server (its trials would write one
    SQLite file from two nodes); with one, the head on the first node, a worker on the second joined over the bridge
    although the head node lists a decoy interface first (the addresses come from the route between the nodes, not
    `hostname -I`); 2 nodes alive, and the two cells (one Ray CPU per node, one CPU per trial) train one on each
    host, both logged by the server."""
    from harness import tracking_server

    if shutil.which("ray", path=str(REPO / ".venv" / "bin")) is None:
        pytest.skip("no ray in .venv")
    out_dir, log = _out_dir(tmp_path / "runs", empty_store), tmp_path / "job.out"
    grid = [
        "--data-dir",
        str(data_dir),
        "--out-dir",
        str(out_dir),
        "--results",
        str(tmp_path / "results"),
        "--quiet",
        "--no-tables",
        "--datasets",
        "mtat,msd",
        "--inputs",
        "mel",
        "--depths",
        "3",
        "--cpus-per-trial",
        "1",
    ]
    for k, v in dict(TINY, epochs=1).items():
        grid += ["--" + k.replace("_", "-"), str(v)]
    env = {"GRID_ARGS": " ".join(grid), "MLFLOW_TRACKING_URI": "", "RAY_WAIT_S": str(round(patience(120)))}
    opts = ("--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1", "--gpus-per-node=0", "--mem=1G", "--time=10")
    refused = _sbatch(slurm_multi, SLURM / "ray_cluster.sh", tmp_path / "refused.out", *opts, env=env)
    assert slurm_multi.wait_job(refused, timeout=120) == "FAILED"
    errors = [ln for ln in _log(tmp_path / "refused.out").splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "2 nodes would write one SQLite MLflow store" in errors[0], errors
    assert "Ray head" not in _log(tmp_path / "refused.out")  # refused before anything started
    record("test_ray_cluster_sqlite_from_two_nodes", jobs=1, crashed=0, note="refused: " + errors[0][7:140])

    n1, n2 = slurm_multi.nodes
    server = tracking_server.start(str(out_dir), slurm_multi.bridge_addr)
    try:
        with _decoy_first(slurm_multi, n1) as decoy:
            listed = subprocess.run(
                ["srun", "-p", slurm_multi.partition, "-w", n1, "-N1", "-n1", "hostname", "-I"],
                env={**os.environ, **slurm_multi.env},
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout.split()
            assert listed[:1] == [decoy], listed  # the premise: `hostname -I` names the decoy first
            job = _sbatch(
                slurm_multi,
                SLURM / "ray_cluster.sh",
                log,
                *opts,
                env={**env, "MLFLOW_TRACKING_URI": server.uri},
            )
            state = slurm_multi.wait_job(job, timeout=300)
    finally:
        server.stop()
    text = _log(log)
    assert state == "COMPLETED", text[-6000:] + slurm_multi.log_tails()
    assert f"Ray head {n1} ({slurm_multi.addrs[n1]}:" in text and "Ray cluster up: 2 node(s)" in text, text[-4000:]
    assert "2/2 cells finished" in text, text[-4000:]
    cells = out_dir / "fcn-sweep"
    hosts = {h for key in ("mtat-mel-fcn3-s0", "msd-mel-fcn3-s0") for h in _hosts(cells / key / "train.log")}
    assert hosts == {n1, n2}, hosts
    runs = [r for r in _runs(f"sqlite:///{out_dir / 'mlflow.db'}", "fcn-sweep") if "cell_key" in r.data.tags]
    assert sorted((r.info.run_name, r.info.status) for r in runs) == [
        ("msd-mel-fcn3-s0", "FINISHED"),
        ("mtat-mel-fcn3-s0", "FINISHED"),
    ]
    record(
        "test_ray_cluster_script_spans_two_nodes",
        jobs=1,
        nodes_used=len(hosts),
        finished=len(runs),
        note=f"a decoy interface ({decoy}) listed first on {n1}: the head took {slurm_multi.addrs[n1]}, the route's",
    )


@slow
def test_cell_jobs_on_two_nodes_refuse_one_sqlite_store(slurm_multi, data_dir, tmp_path, empty_store):
    """Two cell scripts, one pinned to each node, on one out dir with the default SQLite store: the host that finds
    the other's record stops in one line before training (both, when they start together), so no run is written
    from two nodes into one SQLite file over the shared filesystem."""
    out_dir = _out_dir(tmp_path / "runs", empty_store)
    jobs = {}
    for node, inp in zip(slurm_multi.nodes, ("mel", "mfcc"), strict=True):
        env = {**_tiny_env(data_dir, out_dir, epochs=1, patience=1), "INPUT": inp}
        jobs[node] = _sbatch(
            slurm_multi,
            SLURM / "msd_fcn3.sh",
            tmp_path / f"{node}.out",
            f"--nodelist={node}",
            "--nodes=1",
            "--ntasks-per-node=1",
            "--cpus-per-task=1",
            "--gpus-per-node=0",
            "--mem=1G",
            "--time=10",
            env=env,
        )
        if node == slurm_multi.nodes[0]:  # the first host's job is in the store before the second starts
            slurm_multi.wait_job(jobs[node], timeout=300)
    states = {n: slurm_multi.wait_job(j, timeout=300) for n, j in jobs.items()}
    n1, n2 = slurm_multi.nodes
    assert states == {n1: "COMPLETED", n2: "FAILED"}, states
    text = _log(tmp_path / f"{n2}.out")
    lines = [ln for ln in text.splitlines() if "written by jobs on several hosts" in ln]
    assert len(lines) == 1 and f"({n1}, {n2})" in lines[0] and "tracking server" in lines[0], text[-3000:]
    assert "Traceback" not in text
    runs = [r for r in _runs(f"sqlite:///{out_dir / 'mlflow.db'}", "fcn-sweep") if "cell_key" in r.data.tags]
    assert [r.info.run_name for r in runs] == ["msd-mel-fcn3-s0"]  # nothing from the refused host
    record(
        "test_cell_jobs_on_two_nodes_refuse_one_sqlite_store",
        jobs=2,
        nodes_used=2,
        crashed=0,
        finished=1,
        note="the second host's job refused in one line: " + lines[0][:120],
    )


@slow
def test_submitit_tasks_get_their_cpus(slurm_multi, monkeypatch, tmp_path):
    """`harness.grid --cluster slurm`'s executor (harness/launch.py): each srun task of a submitit job gets
    --cpus-per-task CPUs (Slurm 22.05-23.02's srun takes no --cpus-per-task from the job: without the flag on
    submitit's srun line each task had one)."""
    import functools

    from harness.launch import fresh_folder, slurm_executor

    for k, v in slurm_multi.env.items():
        monkeypatch.setenv(k, v)
    ex = slurm_executor(
        fresh_folder(tmp_path),
        name="cpus",
        time_min=5,
        cpus_per_task=3,
        array_parallelism=1,
        nodes=2,
        tasks_per_node=1,
        partition=slurm_multi.partition,
        mem_gb=1,
    )
    job = ex.submit(functools.partial(os.getenv, "SLURM_CPUS_ON_NODE"))
    got = job.results()
    assert got == ["3", "3"], (got, job.stderr())
    record("test_submitit_tasks_get_their_cpus", jobs=1, nodes_used=2, crashed=0, note=f"SLURM_CPUS_ON_NODE {got}")


# --- a node lost while a cell trains ----------------------------------------------------------------------------------

LOSS_EPOCHS = 6


def _loss_env(data_dir, out_dir: Path) -> dict[str, str]:
    return _tiny_env(data_dir, out_dir, epochs=LOSS_EPOCHS, patience=LOSS_EPOCHS)


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory, empty_store):
    """The node-loss tests' cell, trained once without interruption (a plain process on this host, started at once,
    read when needed): what a requeued-and-resumed run must equal."""
    out_dir = _out_dir(tmp_path_factory.mktemp("reference"), empty_store)
    env = _loss_env(data_dir, out_dir)
    argv = [
        sys.executable,
        "-m",
        "fcn.train",
        "--preset",
        "paper",
        "--dataset",
        "msd",
        "--depth",
        "7",
        "--input",
        "mel",
        "--data-root",
        "",
        "--tracking-uri",
        "",
        "--out-dir",
        str(out_dir),
        "--experiment",
        "fcn-sweep",
        *shlex.split(env["FCN_ARGS"]),
    ]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.Popen(argv, cwd=REPO, env=clean, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def result() -> dict:
        out, err = proc.communicate(timeout=patience(300))
        assert proc.returncode == 0, err[-3000:]
        return _metrics(out_dir)

    yield result
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _metrics(out_dir: Path) -> dict:
    """The cell's per-epoch history (MLflow) and test result (metrics.json), and its single MLflow run."""
    uri = f"sqlite:///{out_dir / 'mlflow.db'}"
    m = json.loads((out_dir / "fcn-sweep" / KEY / "metrics.json").read_text())
    hist = {k: _history(uri, "fcn-sweep", k) for k in ("train_loss", "valid_loss", "valid_roc_auc")}
    return {"history": hist, "test_roc_auc": m["test_roc_auc"], "epochs_run": m["epochs_run"]}


def _same_as_reference(got: dict, ref: dict) -> None:
    """Resuming restores model, optimiser, RNG states and the sampler's epoch from the checkpoint: the same arithmetic
    as the uninterrupted run, on the same CPU kind, 1 thread, so equal up to float32 rounding headroom (1e-6)."""
    assert got["epochs_run"] == ref["epochs_run"] == LOSS_EPOCHS
    for k, v in ref["history"].items():
        assert len(got["history"][k]) == LOSS_EPOCHS, (k, got["history"][k])  # every epoch logged once
        assert got["history"][k] == pytest.approx(v, rel=1e-6, abs=1e-7), k
    assert got["test_roc_auc"] == pytest.approx(ref["test_roc_auc"], rel=1e-6)


def _epoch_lines(train_log: Path) -> list[int]:
    return [
        int(ln.split(" epoch ")[1].split(":")[0]) for ln in train_log.read_text().splitlines() if f"{KEY} epoch " in ln
    ]


def _submit_victim(cluster, data_dir, out_dir: Path, log: Path) -> tuple[int, str]:
    """One single-task cell job, --requeue (the script's header), not pinned to a node; returns (job, its node)."""
    job = _sbatch(
        cluster,
        SLURM / "msd_fcn7.sh",
        log,
        "--nodes=1",
        "--ntasks-per-node=1",
        "--gpus-per-node=1",
        "--cpus-per-task=1",
        "--mem=1G",
        "--time=10",
        env=_loss_env(data_dir, out_dir),
    )
    node = _wait_for(lambda: cluster.job_state(job) == "RUNNING" and cluster.node_of(job), 120, "the job to run")
    assert node in cluster.nodes, node
    return job, node


def _bring_back(cluster, node: str) -> None:
    """Restart the lost node's slurmd (ReturnToService=2 makes it usable again) and wait until it is idle, so that
    later tests have two nodes again."""
    cluster.start_slurmd(node)
    cluster.run("scontrol", "update", f"nodename={node}", "state=resume", check=False)
    cluster.wait_node_state(node, ("idle", "mixed", "allocated"), timeout=90)


@slow
def test_node_crash_requeues_and_resumes_on_the_other_node(slurm_multi, data_dir, tmp_path, empty_store, reference):
    """A hard node crash (every process of the node killed) while the cell trains: Slurm marks the node down,
    requeues the job, starts it on the other node, and the cell resumes from its last epoch checkpoint into the same
    MLflow run: one run, FINISHED, no finished epoch redone, the same numbers as the uninterrupted run."""
    out_dir, log = _out_dir(tmp_path / "runs", empty_store), tmp_path / "job.out"
    cell_log = out_dir / "fcn-sweep" / KEY / "train.log"
    job, lost = _submit_victim(slurm_multi, data_dir, out_dir, log)
    other = next(n for n in slurm_multi.nodes if n != lost)
    _wait_for(lambda: cell_log.exists() and 2 in _epoch_lines(cell_log), 180, "epoch 2")
    assert _epoch_lines(cell_log)[-1] < LOSS_EPOCHS, "the cell finished before the crash"
    t0 = time.monotonic()
    slurm_multi.crash_node(lost)
    try:
        state = slurm_multi.wait_job(job, timeout=300)
        recovered_s = time.monotonic() - t0
        assert state == "COMPLETED", _log(log)[-4000:] + slurm_multi.log_tails()
        assert "Restarts=1" in slurm_multi.run("scontrol", "show", "job", str(job)).stdout
        assert _hosts(cell_log) == [lost, other], cell_log.read_text()  # started on one, resumed on the other
        text = cell_log.read_text()
        resumed = int(text.split("resuming after epoch ")[1].split()[0])
        epochs = _epoch_lines(cell_log)
        assert resumed >= 2 and epochs == list(range(1, LOSS_EPOCHS + 1)), text  # each epoch trained to its end once
        assert f"on host {other}" in text.split("resuming after epoch")[1].splitlines()[0]
        _same_as_reference(_metrics(out_dir), reference())
        print(f"node crash: job finished {recovered_s:.0f} s after the crash")
        record(
            "test_node_crash_requeues_and_resumes_on_the_other_node",
            jobs=1,
            nodes_used=2,
            crashed=0,
            duplicated=0,
            finished=1,
            nodes_lost=1,  # _metrics asserted one MLflow run
            epochs_redone=len(epochs) - LOSS_EPOCHS,
            recover_s=round(recovered_s),
            note="the epoch in progress at the crash was trained again from its start",
        )
    finally:
        _bring_back(slurm_multi, lost)


@slow
def test_slurmd_lost_while_the_old_copy_runs_on(slurm_multi, data_dir, tmp_path, empty_store, reference):
    """Only the node's slurmd dies: Slurm requeues the job and starts it on the other node, while the old copy keeps
    running on the lost node (docs/MEASURED.md). The new copy waits on the cell lock (not failing), the old copy (held
    still with SIGSTOP until the new one is seen waiting, so the overlap is certain) is let go and finishes the cell,
    and the new copy then finds it finished: one MLflow run, FINISHED once, the same numbers as the uninterrupted
    run, every epoch trained once.

    Only the old trainer is let go then; the old copy's srun stays stopped until the job has ended. Slurm told that
    srun of the node failure while it was stopped, and a srun let go at once acts on it: it terminates step <job>.0,
    which by then names the NEW copy's step on the other node (the requeued job reuses the step id), so the new copy
    was killed and the job FAILED (once, on a loaded machine: "srun: got SIGCONT", "Node failure on fcnode1",
    "Terminating StepId=39.0", then "fcnode2: task 0: Killed"). The trainer needs no srun to train on."""
    out_dir, log = _out_dir(tmp_path / "runs", empty_store), tmp_path / "job.out"
    cell_log = out_dir / "fcn-sweep" / KEY / "train.log"
    job, lost = _submit_victim(slurm_multi, data_dir, out_dir, log)
    other = next(n for n in slurm_multi.nodes if n != lost)
    _wait_for(lambda: cell_log.exists() and 1 in _epoch_lines(cell_log), 180, "epoch 1")
    t0 = time.monotonic()
    slurm_multi.kill_slurmd(lost)
    old = slurm_multi.node_pids(lost, "fcn.train")
    assert old, "the old copy is not running on the lost node"
    for pid in old:
        os.kill(pid, signal.SIGSTOP)
    try:
        _wait_for(
            lambda: "another process holds the cell lock" in _log(log),
            240,
            "the requeued copy to wait on the cell lock",
        )
        assert slurm_multi.node_of(job) == other and slurm_multi.job_state(job) == "RUNNING"
        assert all(p in slurm_multi.node_pids(lost, "fcn.train") for p in old)  # two live copies now
        trainers = [p for p in old if Path(f"/proc/{p}/comm").read_text().strip() != "srun"]
        assert trainers and len(trainers) < len(old), "expected the old copy's srun and its trainer"
        for pid in trainers:  # not the old srun (see above): it is let go in `finally`, once the job has ended
            os.kill(pid, signal.SIGCONT)
        state = slurm_multi.wait_job(job, timeout=300)
        text = _log(log)
        assert state == "COMPLETED", text[-4000:] + slurm_multi.log_tails()
        # then the new copy either finds the cell finished by the old one, or (had Slurm killed the old copy after
        # all) resumes it from its checkpoint: either way it is trained and finished once
        assert "got the cell lock" in text, text[-4000:]
        assert f"{KEY} is finished" in text or "resuming after epoch" in cell_log.read_text(), text[-4000:]
        assert "being trained by another process" not in text
        assert _epoch_lines(cell_log) == list(range(1, LOSS_EPOCHS + 1))  # the old copy trained every epoch once
        _same_as_reference(_metrics(out_dir), reference())
        record(
            "test_slurmd_lost_while_the_old_copy_runs_on",
            jobs=1,
            nodes_used=2,
            crashed=0,
            duplicated=0,
            finished=1,
            nodes_lost=1,  # _metrics asserted one MLflow run
            epochs_redone=len(_epoch_lines(cell_log)) - LOSS_EPOCHS,
            recover_s=round(time.monotonic() - t0),
            note="two live copies: the requeued one waited on the cell lock (the old one held with SIGSTOP)",
        )
    finally:
        for pid in old:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        _bring_back(slurm_multi, lost)


# The memory-bounded job: each node's --mem, and a split larger than one rank's share of it. The big split is the
# validation split: every split is held by the same rule, and evaluation (forward only) costs a third of training
# per clip, so the scenario stays short on 2 shared cores. A rank with torch and MLflow holds ~750 MB (measured).
MEM_MB = 2400
BIG_CLIPS = 2600  # 29.12 s mel clips of 262 KB: 200 train, 2,300 (≈ 600 MB) valid, 100 test


@slow
def test_memory_bounded_job_keeps_within_its_nodes_limit(slurm_multi, tmp_path, empty_store):
    """2 nodes × 2 ranks, --mem=2400M per node, the limit ENFORCED by a memory cgroup per node that the test makes as
    root (standing in for Slurm's task/cgroup: the fixture runs TaskPlugin=task/none, both slurmds share one kernel;
    each rank joins its node's cgroup before exec, through the script's PYTHON). The ≈600 MB validation split is over
    what one rank may hold: the ranks read the cgroup's limit (fcn/memory.py) and stream it from the store (or map it
    once for the node). On main each rank copied it into RAM (the job's limit was never read): 2 × (≈750 MB of
    process + 600 MB) over the 2,400 MB limit, OOM-killed."""
    from bench.memory import make_store

    store = make_store(tmp_path / "big.h5", BIG_CLIPS, train=200 / BIG_CLIPS, valid=2300 / BIG_CLIPS)
    tag = f"fcn-mem-{os.getpid()}"
    groups = {n: Path("/sys/fs/cgroup/memory") / f"{tag}-{n}" for n in slurm_multi.nodes}
    wrapper = tmp_path / "python-in-cgroup.sh"
    wrapper.write_text(
        "#!/bin/bash\n"
        f'echo $$ > "/sys/fs/cgroup/memory/{tag}-$(hostname)/cgroup.procs" || exit 97\n'
        f'exec {shlex.quote(str(REPO / ".venv" / "bin" / "python"))} "$@"\n'
    )
    wrapper.chmod(0o755)
    try:
        for g in groups.values():
            g.mkdir()
            (g / "memory.limit_in_bytes").write_text(str(MEM_MB << 20))
        fcn = dict(store=str(store), clip_seconds=29.12, frontend_variant="authors", width=0.03, epochs=1, patience=1)
        env = dict(_tiny_env(tmp_path, _out_dir(tmp_path / "runs", empty_store), **fcn), PYTHON=str(wrapper))
        job = _sbatch(
            slurm_multi,
            SLURM / "mtat_fcn3.sh",
            tmp_path / "job.out",
            "--time=15",
            f"--mem={MEM_MB}M",
            "--cpus-per-task=1",
            "--nodes=2",
            "--ntasks-per-node=2",
            "--gpus-per-node=0",
            env=env,
        )
        state = slurm_multi.wait_job(job, timeout=600)
        oom = {n: _oom_kills(g) for n, g in groups.items()}
        peak = {n: int((g / "memory.max_usage_in_bytes").read_text()) for n, g in groups.items()}
    finally:
        slurm_multi.cancel_all()
        for g in groups.values():
            _remove_cgroup(g)
    text = _log(tmp_path / "job.out")
    assert state == "COMPLETED", text[-4000:] + slurm_multi.log_tails()
    assert oom == {n: 0 for n in groups}, (oom, text[-3000:])
    cell = tmp_path / "runs" / "fcn-sweep" / "mtat-mel-fcn3-s0"
    m = json.loads((cell / "metrics.json").read_text())
    assert m["world_size"] == 4 and m["global_batch"] == 16 and m["batch_per_process"] == 4
    log = (cell / "train.log").read_text()
    # over one rank's share of the node: never a private copy per rank (main's, OOM-killed here); streamed when over
    # the node's budget (the cgroup's room, which the ranks' own memory lowers), else mapped once for the node
    held = log.split("splits held: ")[1].split(", valid ")[1].split(", test ")[0]
    assert held == "mapped" or held.startswith("streamed (over the node's budget of"), log
    assert all(p <= MEM_MB << 20 for p in peak.values())
    record(
        "test_memory_bounded_job_keeps_within_its_nodes_limit",
        jobs=1,
        nodes_used=2,
        crashed=0,
        finished=1,
        note=f"--mem {MEM_MB} MB per node, 2 ranks per node, a ≈600 MB validation split {held.split(' (')[0]}; "
        f"peak memory per node (cgroup max usage) {', '.join(f'{n} {p >> 20} MB' for n, p in peak.items())}; "
        f"OOM kills {sum(oom.values())}",
    )


def _oom_kills(group: Path) -> int:
    """OOM kills in a v1 memory cgroup (memory.oom_control's oom_kill, kernel 4.13+; else under_oom)."""
    fields = dict(line.split() for line in (group / "memory.oom_control").read_text().splitlines())
    return int(fields.get("oom_kill", fields.get("under_oom", 0)))


def _remove_cgroup(group: Path) -> None:
    """rmdir once its processes are gone (the job's steps end a moment after the job)."""
    deadline = time.time() + 30
    while group.exists() and time.time() < deadline:
        try:
            group.rmdir()
        except OSError:
            time.sleep(0.5)
