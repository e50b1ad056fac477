"""The layer rules of DESIGN.md ("Import rules") hold: import-linter's contracts in pyproject.toml, run on the tree as
it is, and on a copy with one rule broken on purpose (so the check is known to catch what it is there for)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    for pkg in ("fcn", "harness", "bench"):
        shutil.copytree(REPO / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__", "splits"))
    shutil.copy(REPO / "pyproject.toml", root)
    return root


def test_the_tree_keeps_every_contract():
    r = _lint(REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 kept, 0 broken" in r.stdout


@pytest.mark.parametrize(
    "module, line, contract",
    [
        ("fcn/cell.py", "import harness.status", "layers"),  # fcn reaching up into the harness
        ("fcn/store.py", "import fcn.run_store", "no cycles between fcn"),  # run_store imports store
        ("harness/status.py", "import harness.grid", "no cycles between harness"),  # grid imports status
    ],
)
def test_a_broken_rule_is_caught(tree_copy, module, line, contract):
    path = tree_copy / module
    original = path.read_text()
    try:
        path.write_text(original + f"\n{line}  # noqa\n")
        r = _lint(tree_copy)
    finally:
        path.write_text(original)
    assert r.returncode != 0, r.stdout
    broken = [ln for ln in r.stdout.splitlines() if ln.rstrip().endswith("BROKEN")]
    assert len(broken) == 1 and contract in broken[0], r.stdout
