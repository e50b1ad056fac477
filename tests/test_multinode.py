"""Two-node Slurm (tests/services/slurm_multi.py): each node its own host (namespaces, own name and address)."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_two_nodes_two_hosts(slurm_multi, tmp_path):
    out = tmp_path / "out.txt"
    job = slurm_multi.sbatch("-N2", "-n2", "-o", str(out), "--wrap",
                             "srun -N2 -n2 bash -c 'echo $(hostname) $(hostname -I) $SLURM_PROCID'")
    assert slurm_multi.wait_job(job, timeout=60) == "COMPLETED", out.read_text() + slurm_multi.log_tails()
    rows = sorted(line.split() for line in out.read_text().splitlines() if line.strip())
    assert rows == [["fcnode1", "10.88.0.11", "0"], ["fcnode2", "10.88.0.12", "1"]], out.read_text()
    assert slurm_multi.wait_sacct(job) == "COMPLETED"
