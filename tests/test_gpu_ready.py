"""Issue 17, the parts only a GPU could show, with device counts and environments set by the test (no GPU here):
which GPU a process picks, refusals, CUDA unusable with GPUs allocated, own-device CUDA RNG in checkpoints, the global
batch and SyncBatchNorm rules, cudnn.benchmark, hostlists without scontrol, the
rendezvous port, the store built by rank 0 alone, one GPU per local worker, and `bench --gpu-smoke` on a CPU.
The real-Slurm and multi-process counterparts (and the host-sync count of a real run) are in test_gpu_ready_slurm.py
and test_gpu_ready_resume.py."""

import os
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch

from fcn import dist
from fcn.errors import UserError
from tests.conftest import REPO

LAUNCH_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "CUDA_VISIBLE_DEVICES",
)


@pytest.fixture
def clean_env(monkeypatch):
    """No launcher or Slurm variables from the machine running the tests; set_env(...) adds some."""
    for k in list(os.environ):
        if k.startswith("SLURM_") or k in LAUNCH_VARS:
            monkeypatch.delenv(k)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # set here so that fcn.dist's setdefault is undone afterwards
    monkeypatch.setenv("MASTER_PORT", "1")

    def set_env(**kw):
        for k, v in kw.items():
            monkeypatch.setenv(k, str(v))

    return set_env


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda with `n` devices and a process group that records its arguments instead of connecting."""
    import torch.distributed as tdist

    def install(n: int) -> list:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)
        calls = []
        monkeypatch.setattr(tdist, "init_process_group", lambda *a, **k: calls.append((a, k)))
        monkeypatch.setattr(tdist, "is_initialized", lambda: False)
        return calls

    before = torch.backends.cudnn.benchmark
    yield install
    torch.backends.cudnn.benchmark = before


def _srun_task(set_env, procid: int, ntasks: int, visible: str, gpus_on_node: int):
    set_env(
        SLURM_PROCID=procid,
        SLURM_LOCALID=procid,
        SLURM_NTASKS=ntasks,
        SLURM_STEP_ID=0,
        SLURM_JOB_ID=7,
        SLURM_JOB_NODELIST="gpu01",
        SLURM_JOB_NUM_NODES=1,
        SLURM_GPUS_ON_NODE=gpus_on_node,
        CUDA_VISIBLE_DEVICES=visible,
    )


def test_gpu_per_task_binding_picks_cuda0_of_the_visible_set(clean_env, fake_cuda):
    # srun -n2 --gpus-per-task=1 (or --gpu-bind): task 1 sees only its own GPU (CUDA_VISIBLE_DEVICES=1, measured)
    calls = fake_cuda(1)
    _srun_task(clean_env, 1, 2, "1", 2)
    d = dist.setup("auto")
    assert d.device == torch.device("cuda", 0) and (d.rank, d.world, d.local_rank) == (1, 2, 1)
    assert calls[0][0][0] == "nccl" and calls[0][1]["device_id"] == torch.device("cuda", 0)
    assert torch.backends.cudnn.benchmark  # fixed shapes on CUDA
    # every GPU visible to every task (--gpus-per-node=2): cuda:<local_rank>
    fake_cuda(2)
    _srun_task(clean_env, 1, 2, "0,1", 2)
    assert dist.setup("auto").device == torch.device("cuda", 1)
    # 4 tasks sharing 2 visible GPUs with no binding: an error naming the fix, not two processes on one GPU
    fake_cuda(2)
    _srun_task(clean_env, 3, 4, "0,1", 4)
    with pytest.raises(UserError, match="--gpus-per-task=1"):
        dist.setup("auto")


def test_single_process_inside_a_gpu_allocation_is_not_refused(clean_env, fake_cuda):
    # srun --gpus-per-node=4 --pty bash, then python -m fcn.train: one process, four GPUs
    fake_cuda(4)
    _srun_task(clean_env, 0, 1, "0,1,2,3", 4)
    assert dist.setup("auto").device == torch.device("cuda", 0)
    assert dist.setup("cpu").device == torch.device("cpu")
    # a real mismatch of a multi-process job is still refused at once
    fake_cuda(2)
    _srun_task(clean_env, 0, 4, "0,1", 2)
    with pytest.raises(UserError, match="one training process per GPU"):
        dist.setup("auto")


@pytest.mark.parametrize("env", [{"CUDA_VISIBLE_DEVICES": "0,1"}, {"SLURM_GPUS_ON_NODE": "2"}, {"SLURM_JOB_GPUS": "0"}])
def test_gpus_allocated_but_cuda_unusable_stops_with_one_line(clean_env, fake_cuda, env):
    fake_cuda(0)  # torch 2.11 cu130 on an older driver: is_available() is False, with only a warning
    clean_env(**env)
    with pytest.raises(UserError) as e:
        dist.setup("auto")
    msg = str(e.value)
    assert "driver/build mismatch" in msg and f"CUDA {torch.version.cuda or 'none'}" in msg
    assert "FCN_TORCH_CUDA=cu126 bash scripts/setup.sh" in msg  # the build that fits, installed without editing files
    assert "driver" in msg and "--device cpu" in msg and "\n" not in msg
    assert dist.setup("cpu").device.type == "cpu"  # on purpose: fine


def test_no_gpus_allocated_trains_on_cpu(clean_env, fake_cuda):
    fake_cuda(0)
    assert dist.setup("auto").device.type == "cpu"
    clean_env(CUDA_VISIBLE_DEVICES="", SLURM_GPUS_ON_NODE="2")  # GPUs hidden on purpose (e.g. a CPU Ray trial)
    assert dist.setup("auto").device.type == "cpu"


def test_hostlist_is_expanded_without_scontrol(monkeypatch, tmp_path, clean_env):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no scontrol, as in many containers
    assert shutil.which("scontrol") is None
    assert dist.first_node("gpu[01-02]") == "gpu01"
    assert dist.expand_hostlist("n[1-3,5],login1") == ["n1", "n2", "n3", "n5", "login1"]
    assert dist.expand_hostlist("gpu[08-10]") == ["gpu08", "gpu09", "gpu10"]
    assert dist.expand_hostlist("r[1-2]n[1-2]") == ["r1n1", "r1n2", "r2n1", "r2n2"]
    monkeypatch.delenv("MASTER_ADDR")
    clean_env(
        SLURM_PROCID=0,
        SLURM_LOCALID=0,
        SLURM_NTASKS=2,
        SLURM_STEP_ID=0,
        SLURM_JOB_ID=7,
        SLURM_JOB_NODELIST="gpu[01-02]",
        SLURM_JOB_NUM_NODES=2,
    )
    dist._launcher_env()
    assert os.environ["MASTER_ADDR"] == "gpu01"


def test_rendezvous_port_is_below_the_ephemeral_range_and_one_rule():
    ports = {dist.master_port(j) for j in range(0, 200_000, 7)}
    assert min(ports) >= 20000 and max(ports) < 27000 < 32768  # Linux ephemeral ports start at 32768
    from harness.sbatch import TEMPLATE

    assert "-m fcn.dist job" in TEMPLATE and "15000" not in TEMPLATE  # asked of fcn.dist, not redone in bash
    assert "SyncBatchNorm" in TEMPLATE and "global batch" in TEMPLATE


def test_checkpoint_holds_only_this_ranks_cuda_rng_and_resumes_on_fewer_gpus(monkeypatch):
    from fcn import checkpoint

    states = {i: torch.full((16,), i, dtype=torch.uint8) for i in range(4)}
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": states[torch.device(device).index])
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: list(states.values()))
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device="cuda": restored.append((s, device)))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda ss: [states[i] for i in range(len(ss))])
    s = checkpoint.rng_state(torch.device("cuda", 2))  # rank 2 of a 4-GPU run
    assert torch.equal(s["cuda"], states[2])
    checkpoint.set_rng_state(s, torch.device("cuda", 0))  # resumed as rank 2 on a machine showing one GPU
    assert torch.equal(restored[-1][0], states[2]) and restored[-1][1] == torch.device("cuda", 0)
    old = dict(s, cuda=list(states.values()))  # a checkpoint of the old format: every device's state
    checkpoint.set_rng_state(old, torch.device("cuda", 1))
    assert torch.equal(restored[-1][0], states[1])
    assert checkpoint.rng_state(torch.device("cpu"))["cuda"] is None


def test_global_batch_and_sync_bn_rules():
    from fcn.batching import plan_batch
    from fcn.config import RunConfig
    from fcn.train import SYNC_BN_BELOW, sync_bn_possible, use_sync_bn

    assert plan_batch(32, 4, False).per_process == 8 and plan_batch(32, 1, False).per_process == 32
    with pytest.raises(UserError, match="cannot be split evenly over 3 processes"):
        plan_batch(32, 3, False)
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    auto = RunConfig()
    assert SYNC_BN_BELOW == 8 and "[D]" in RunConfig.__dataclass_fields__["sync_bn"].metadata["help"]
    assert use_sync_bn(auto, 8, 2, cuda) and not use_sync_bn(auto, 8, 8, cuda)
    assert not use_sync_bn(auto, 1, 2, cuda) and not use_sync_bn(auto, 8, 2, cpu)
    assert use_sync_bn(RunConfig(sync_bn="on"), 2, 16, cuda) and not use_sync_bn(RunConfig(sync_bn="off"), 8, 2, cuda)
    with pytest.raises(UserError, match="needs CUDA"):
        use_sync_bn(RunConfig(sync_bn="on"), 2, 16, cpu)
    # SyncBatchNorm can carry a share of one clip only on CUDA, with several processes, and when not switched off
    assert sync_bn_possible(auto, 16, cuda) and not sync_bn_possible(auto, 16, cpu)
    assert not sync_bn_possible(auto, 1, cuda) and not sync_bn_possible(RunConfig(sync_bn="off"), 16, cuda)


def test_only_rank0_builds_the_store_others_wait_bounded(tiny, tmp_path, data_dir):
    from fcn.preprocess import ensure_feature_store
    from fcn.run_store import store_path

    config = tiny(data_dir=str(tmp_path / "d"))
    t0 = time.monotonic()
    with pytest.raises(UserError, match="waited 1 s for rank 0 to build the feature store"):
        ensure_feature_store(config, build_here=False, wait_s=1)
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())  # built nothing, no parts
    src, dst = store_path(tiny()), store_path(config)

    def rank0_finishes():
        time.sleep(1)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, str(dst) + ".tmp")
        os.replace(str(dst) + ".tmp", dst)  # as the builder does: the finished file appears at once

    th = threading.Thread(target=rank0_finishes)
    th.start()
    assert ensure_feature_store(config, build_here=False, wait_s=60) == dst
    th.join()


def _probe(marks: str) -> tuple[int, str]:
    """In a pool worker: wait until both workers run a probe at once, then say which GPU this worker was given."""
    Path(marks, str(os.getpid())).touch()
    deadline = time.time() + 120
    while len(os.listdir(marks)) < 2 and time.time() < deadline:
        time.sleep(0.05)
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES", "")


def test_local_workers_each_own_one_gpu(tmp_path, monkeypatch):
    from harness.backends import local

    fake = {"is_available": lambda: True, "device_count": lambda: 2}
    for k, v in fake.items():
        monkeypatch.setattr(torch.cuda, k, v)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert local.visible_gpus("auto") == ["0", "1"] and local.visible_gpus("cpu") == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # the parent's own restriction is respected
    assert local.visible_gpus("cuda") == ["2", "3"]
    with local.pool(2, ["2", "3"]) as ex:
        got = dict(f.result(timeout=300) for f in [ex.submit(_probe, str(tmp_path)) for _ in range(2)])
    assert sorted(got.values()) == ["2", "3"], got  # worker i on GPU i: cells no longer all train on cuda:0


def test_gpu_smoke_on_cpu_says_it_needs_a_gpu(capsys, monkeypatch):
    from bench.__main__ import main

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the smoke check would run")
    assert main(["--gpu-smoke"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a CUDA GPU" in err[0] and torch.__version__ in err[0]
    assert (REPO / "bench" / "gpu_smoke.py").exists()
