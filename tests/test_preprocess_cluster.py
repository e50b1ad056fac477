"""harness.preprocess --cluster slurm / ray: one build's shards computed as a real Slurm job array
(tests/services/slurm.py) or as Ray tasks on a local Ray, assembled into the very store a one-node build makes (the same
bytes); a killed array task costs only its missing shards, which a rerun computes (and nothing else)."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fcn.data import mtat
from fcn.data.synth import make_mtat
from tests.conftest import REPO
from tests.test_preprocess import _assert_same_store, _cli, inject_env  # noqa: F401 (inject_env: a fixture)

SECONDS = 1.0  # the clips' length and the front end's clip length here
SHARD = 4  # clips per shard: 36 clips make 9 shards


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """36 clips of 1 s in MTAT's layout."""
    return make_mtat(tmp_path_factory.mktemp("mtat") / "mtat", 36, seconds=SECONDS, seed=1, broken=False, workers=2)


@pytest.fixture(scope="module")
def ref(root, tmp_path_factory):
    """The one-node build the cluster builds must equal."""
    out = tmp_path_factory.mktemp("ref") / "store.h5"
    r = _build(root, out, "--workers", "2", module="fcn.preprocess")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "shards: 9 (0 reused from an interrupted run)" in r.stdout
    return out


def _build(root, out, *extra, env=None, module="harness.preprocess"):
    return _cli(
        root,
        out,
        "--clip-seconds",
        str(SECONDS),
        "--shard-size",
        str(SHARD),
        *extra,
        env=env,
        timeout=240,
        module=module,
    )


def _same_bytes(a: Path, b: Path) -> None:
    _assert_same_store(a, b)  # says which dataset differs, if one does
    assert a.read_bytes() == b.read_bytes()


def _sacct(cluster, array: str) -> list[list[str]]:
    """(job id, state, node) of each task of a job array, once accounting has them all."""
    rows = []
    for _ in range(60):
        out = cluster.run("sacct", "-n", "-X", "-P", "-j", array, "-o", "JobID,State,NodeList").stdout
        rows = [r.split("|") for r in out.split()]
        if rows and all(r[1] not in ("PENDING", "RUNNING") for r in rows):
            break
        time.sleep(1)
    return rows


def _array_id(stderr: str) -> str:
    return re.search(r"array task\(s\) submitted as Slurm job (\d+)", stderr).group(1)


def test_slurm_job_array_builds_the_same_store(slurm_cluster, root, ref, tmp_path):
    out = tmp_path / "store.h5"
    r = _build(
        root,
        out,
        "--cluster",
        "slurm",
        "--partition",
        slurm_cluster.partition,
        "--tasks",
        "3",
        "--cpus-per-task",
        "1",
        "--time-min",
        "5",
        "--poll-s",
        "0.5",
        env=slurm_cluster.env,
    )
    assert r.returncode == 0, r.stderr[-3000:] + slurm_cluster.log_tails()
    assert "3 array task(s) submitted" in r.stderr and "shards: 9 (0 reused" in r.stdout
    _same_bytes(out, ref)
    assert not Path(f"{out}.parts").exists()
    tasks = _sacct(slurm_cluster, _array_id(r.stderr))
    assert sorted(t[0] for t in tasks) == [f"{_array_id(r.stderr)}_{k}" for k in range(3)]
    assert all(t[1] == "COMPLETED" for t in tasks), tasks


def test_a_killed_array_task_costs_only_its_shards(slurm_cluster, root, ref, inject_env, tmp_path):  # noqa: F811
    out, parts = tmp_path / "store.h5", tmp_path / "store.h5.parts"
    log1, log2 = tmp_path / "decoded1.txt", tmp_path / "decoded2.txt"
    flags = [
        "--cluster",
        "slurm",
        "--partition",
        slurm_cluster.partition,
        "--tasks",
        "3",
        "--cpus-per-task",
        "1",
        "--time-min",
        "5",
        "--poll-s",
        "0.5",
    ]
    # 0.2 s per decode: each task's 12 clips take 2.4 s or more, so the last task is still pending or running when
    # the first part of the build appears
    env = dict(
        os.environ,
        **slurm_cluster.env,
        **inject_env,
        FCN_TEST_DECODE_DELAY="0.2",
        FCN_TEST_DECODE_LOG=str(log1),
        PYTHONUNBUFFERED="1",
    )
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harness.preprocess",
            "--dataset",
            "mtat",
            "--data-root",
            str(root),
            "--clip-seconds",
            str(SECONDS),
            "--shard-size",
            str(SHARD),
            "--out",
            str(out),
            *flags,
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    t0 = time.time()
    while not list(parts.glob("shard-*.npz")):
        assert p.poll() is None, p.communicate()[1][-3000:]
        assert time.time() - t0 < 120, "no shard written in 120 s"
        time.sleep(0.05)
    queued = slurm_cluster.run("squeue", "-h", "-r", "-n", "fcn-preprocess", "-o", "%i").stdout.split()
    victim = max(queued, key=lambda j: int(j.split("_")[1]))  # the last task of the array
    slurm_cluster.run("scancel", victim)
    stdout, stderr = p.communicate(timeout=180)
    assert p.returncode == 2, stderr[-3000:]
    assert victim.endswith("_2") and f"task {victim}:" in stderr, stderr[-3000:]
    assert "shards are missing after the slurm build" in stderr and "rerun the same command" in stderr
    assert stderr.strip().splitlines()[-1].startswith("error: ")  # one line, no traceback
    done = sorted(parts.glob("shard-*.npz"))
    assert 0 < len(done) < 9 and not out.exists()

    r = _build(root, out, *flags, env=dict(slurm_cluster.env, **inject_env, FCN_TEST_DECODE_LOG=str(log2)))
    assert r.returncode == 0, r.stderr[-3000:] + slurm_cluster.log_tails()
    assert f"resuming: {len(done)} of 9 shards already done, {9 - len(done)} to do" in r.stderr
    _same_bytes(out, ref)
    # the rerun decoded exactly the clips of the missing shards, each once
    _, items, _ = mtat.read(root, "folder")
    done_idx = {int(d.stem.split("-")[1]) for d in done}
    assert sorted(log2.read_text().splitlines()) == sorted(
        it.path for i, it in enumerate(items) if i // SHARD not in done_idx
    )


def test_ray_tasks_build_the_same_store(root, ref, tmp_path, capsys):
    """In this process, on a Ray it did not start (as on an existing cluster): a local Ray takes 30 s or more to start
    on a loaded 2-core machine, so the two builds here share one."""
    import ray

    from fcn.errors import UserError
    from harness.preprocess import main

    flags = [
        "--dataset",
        "mtat",
        "--data-root",
        str(root),
        "--clip-seconds",
        str(SECONDS),
        "--shard-size",
        str(SHARD),
        "--data-dir",
        str(tmp_path),
        "--cluster",
        "ray",
        "--cpus-per-task",
        "1",
        "--poll-s",
        "0.5",
    ]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = tmp_path / "store.h5"
        main([*flags, "--out", str(out), "--tasks", "2"])
        assert "2 Ray task(s) submitted" in capsys.readouterr().err
        _same_bytes(out, ref)
        with pytest.raises(UserError, match="--cpus-per-task 999, but the Ray cluster's largest node has 2 CPUs"):
            main([*flags, "--out", str(tmp_path / "other.h5"), "--cpus-per-task", "999"])
        assert ray.is_initialized()  # not shut down by the builds: it was not theirs
    finally:
        ray.shutdown()


def test_bad_cluster_options_are_one_line_each(root, tmp_path):
    from fcn.errors import UserError
    from harness.preprocess import ClusterOptions, groups

    with pytest.raises(UserError, match="--cpus-per-task must be >= 1, not 0"):
        ClusterOptions(cluster="slurm", cpus_per_task=0)
    # contiguous groups of near-equal size, never an empty one
    assert [sorted(g) for g in groups({i: i for i in range(7)}, 3)] == [[0, 1], [2, 3], [4, 5, 6]]
    assert [sorted(g) for g in groups({4: 4, 9: 9}, 64)] == [[4], [9]]
    r = _build(root, tmp_path / "s.h5", "--cluster", "slurm", env={"PATH": str(tmp_path)})  # no sbatch here
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: --cluster slurm: Slurm's sbatch is not on PATH: run this on a node that submits jobs"
    ], r.stderr
    # the one-node build's command names the new one in one line
    r = _build(root, tmp_path / "s.h5", "--cluster", "slurm", module="fcn.preprocess")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: --cluster slurm: a build over a cluster is `python -m harness.preprocess --cluster slurm` now "
        "(the same flags, plus the cluster's)"
    ], r.stderr


def test_a_partition_slurm_refuses_is_one_line(slurm_cluster, root, tmp_path):
    r = _build(root, tmp_path / "s.h5", "--cluster", "slurm", "--partition", "nosuchpartition", env=slurm_cluster.env)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and lines[-1].startswith("error: --cluster slurm: the job array was refused: "), r.stderr
    assert "invalid partition specified: nosuchpartition" in lines[-1], lines[-1]


@pytest.mark.slow
def test_two_nodes_build_the_same_store(slurm_multi, root, ref, tmp_path):
    """On the two-node cluster (tests/services/slurm_multi.py: two hosts, one shared filesystem): 3 GB per task of
    each node's 4 GB puts one task on each node at a time; both write into one shard folder."""
    out = tmp_path / "store.h5"
    r = _build(
        root,
        out,
        "--cluster",
        "slurm",
        "--partition",
        slurm_multi.partition,
        "--tasks",
        "2",
        "--cpus-per-task",
        "1",
        "--mem-gb",
        "3",
        "--time-min",
        "5",
        "--poll-s",
        "0.5",
        env=slurm_multi.env,
    )
    assert r.returncode == 0, r.stderr[-3000:] + slurm_multi.log_tails()
    _same_bytes(out, ref)
    tasks = _sacct(slurm_multi, _array_id(r.stderr))
    assert [t[1] for t in tasks] == ["COMPLETED"] * 2, tasks
    assert sorted(t[2] for t in tasks) == sorted(slurm_multi.nodes), tasks
