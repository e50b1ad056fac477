"""The one runner behind the generated reports (tests/faults_report.py → results/reliability.md, tests/cluster_report.py
→ results/cluster.md): run some tests in a child pytest with an environment variable naming a JSON-lines file, into
which the tests append what they measured; then render a page from those lines and the tests' outcomes (JUnit XML).

A report module gives its argparse program name and description, its default output, the tests to run, the variable
its tests read, and `render(records, outcomes, seconds) -> str`; `main` does the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def append(env_var: str, record: dict) -> None:
    """Append one JSON line to the file that `env_var` names (a no-op when it is unset, i.e. in a plain test run)."""
    path = os.environ.get(env_var)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def run(env_var: str, jsonl: Path, junit: Path, tests: list[str], extra: list[str]) -> tuple[int, float]:
    """A child pytest over `tests` (node ids or files) with $env_var = jsonl; its exit status and seconds."""
    env = dict(
        os.environ,
        **{env_var: str(jsonl)},
        PYTHONPATH=str(REPO),
        MLFLOW_DISABLE_TELEMETRY="true",
        RAY_AUTH_MODE="disabled",
    )
    t0 = time.time()
    rc = subprocess.call(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *tests, *extra],
        cwd=REPO,
        env=env,
    )
    return rc, time.time() - t0


def outcomes(junit: Path) -> dict[str, tuple[bool, float]]:
    """node id (parameters stripped) → (all its cases passed, seconds summed over them)."""
    out: dict[str, tuple[bool, float]] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        mod = case.get("classname", "").replace(".", "/") + ".py"
        node = f"{mod}::{case.get('name', '').split('[')[0]}"
        ok = not any(case.find(t) is not None for t in ("failure", "error", "skipped"))
        prev_ok, prev_s = out.get(node, (True, 0.0))
        out[node] = (prev_ok and ok, prev_s + float(case.get("time", 0)))
    return out


def main(
    argv,
    *,
    prog: str,
    description: str,
    default_out: Path,
    env_var: str,
    tests: list[str],
    render: Callable[[list[dict], dict[str, tuple[bool, float]], float], str],
) -> int:
    """`python -m <prog> [--out FILE] [pytest args]`: run `tests`, write render(...) to the output, return pytest's
    exit status."""
    ap = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default=str(default_out))
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        jsonl, junit = Path(d) / "records.jsonl", Path(d) / "junit.xml"
        rc, seconds = run(env_var, jsonl, junit, tests, args.pytest_args)
        records = [json.loads(x) for x in jsonl.read_text().splitlines()] if jsonl.exists() else []
        got = outcomes(junit) if junit.exists() else {}
    Path(args.out).write_text(render(records, got, seconds))
    print(f"wrote {args.out} (pytest exit {rc})")
    return rc
