"""Run the benchmarks and write results/benchmarks.md: speed measured against peers and against the machine's limit.

    python -m bench                       # everything (15-55 min on 2 cores), writes results/benchmarks.md
    python -m bench --only train_step     # one benchmark (comma list); the other sections of the file are kept
    python -m bench --quick               # a smoke run at reduced sizes, written to results/benchmarks-quick.md
    python -m bench --gpu-smoke           # a new GPU node's first check (bench/gpu_smoke.py): a table and what to fix
    python -m bench --gpu-check           # smoke + fcn.train bf16 vs fp32 on CUDA → results/benchmarks.md

Benchmarks: train_step (1), preprocess (2), loading (3), harness (4), ddp (5), tables (6), memory (7). Every figure is
a ratio measured in the same run (see bench/README.md). Sections are kept in <out>.json, so `--only` re-runs part of
the file.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path

from bench import gpu_check, gpu_smoke
from bench.common import REPO, Row, Section, machine, versions
from fcn.errors import run_cli

BENCHES = {  # name -> module (each has run(quick) -> Section)
    "train_step": "bench.train_step",
    "preprocess": "bench.preprocess",
    "loading": "bench.loading",
    "harness": "bench.harness_overhead",
    "ddp": "bench.ddp",
    "tables": "bench.tables",
    "memory": "bench.memory",
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="reduced sizes and step counts (a smoke run)")
    ap.add_argument("--only", default="", metavar="NAME[,NAME]", help=f"run only these: {', '.join(BENCHES)}")
    ap.add_argument(
        "--out",
        default="",
        help="markdown file (default: results/benchmarks.md, or results/benchmarks-quick.md with --quick)",
    )
    ap.add_argument(
        "--gpu-smoke",
        action="store_true",
        help="one paper-scale step of every depth × input in bf16 and fp32, NCCL, loader (needs a GPU)",
    )
    ap.add_argument(
        "--gpu-check",
        action="store_true",
        help="the GPU machine's measurements into results/benchmarks.md: --gpu-smoke, fcn.train on CUDA in bf16 and "
        "fp32 with their AUC difference, the paper-scale step (needs a GPU; scripts/gpu_check.sh runs the setup too)",
    )
    args = ap.parse_args(argv)
    if args.gpu_smoke:
        return gpu_smoke.run()
    if args.gpu_check:
        return gpu_check.run()
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(unknown)}: choose from {', '.join(BENCHES)}")
    out = Path(args.out) if args.out else REPO / "results" / ("benchmarks-quick.md" if args.quick else "benchmarks.md")
    store = out.with_suffix(".json")
    sections = _load(store)
    meta = {"machine": machine(), "versions": versions()}
    t_all = time.time()
    for name in names:
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        t0 = time.time()
        try:
            sec = importlib.import_module(BENCHES[name]).run(quick=args.quick)
        except Exception as e:  # noqa: BLE001 - one broken benchmark must not cost the others' figures
            traceback.print_exc()
            sec = Section(name, name, [Row(name, f"failed: {type(e).__name__}: {e}", met=False)])
        sec.name, sec.seconds, sec.quick = name, time.time() - t0, args.quick
        sec.date = time.strftime("%Y-%m-%d %H:%M")
        sections[name] = {**sec.to_dict(), "meta": meta}
        print(f"bench: {name} done in {sec.seconds:.0f} s", file=sys.stderr, flush=True)
        _save(store, sections)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render(sections, meta, time.time() - t_all, names, args.quick))
    print(f"bench: wrote {out} in {time.time() - t_all:.0f} s", file=sys.stderr)
    return 0


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _save(path: Path, sections: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(sections, indent=1) + "\n")
    tmp.replace(path)


def _cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _machine_kind(meta: dict) -> str:
    """The machine a section was measured on, in the words that tell kinds apart (CPU, ISA, cores, GPU)."""
    m = meta.get("machine", {})
    gpu = m.get("gpu", "none")
    return f"{m.get('cpu', '?')} ({m.get('isa', '?')}), {m.get('cores', '?')} cores" + (
        f", GPU {gpu}" if gpu and gpu != "none" else ""
    )


def render(sections: dict, meta: dict, run_s: float, ran: list[str], quick: bool) -> str:
    m, v = meta["machine"], meta["versions"]
    cmd = "python -m bench" + (" --quick" if quick else "")
    lines = [
        "# Benchmarks",
        "",
        f"_Generated by `{cmd}` (bench/); do not edit by hand. Regenerate everything with `{cmd}`, or one section "
        f"with `{cmd} --only NAME` (names: {', '.join(BENCHES)}). How each figure is measured: bench/README.md._",
        "",
        f"- Machine of the last run: {m.get('cpu')}, {m.get('cores')} cores ({m.get('isa', '')}), "
        f"{m.get('memory', '?')} memory, "
        f"GPU: {m.get('gpu')}; {m.get('os')}",
        "- Versions: "
        + ", ".join(f"{k} {x}" for k, x in v.items() if k != "jemalloc")
        + f"; jemalloc: {v['jemalloc']}",
        f"- Load average when the last run started: {m.get('load_avg')} (the cores are shared with other jobs: "
        f"every figure is a ratio to a baseline measured in the same run)",
        f"- Last run: {', '.join(ran)} in {run_s:.0f} s" + (" (**quick**: reduced sizes)" if quick else ""),
        "",
    ]
    kinds = {_machine_kind(sections[n].get("meta", meta)) for n in sections}
    if len(kinds) > 1:
        lines[-1:-1] = [
            f"- The sections below were measured on {len(kinds)} kinds of machine (each section says "
            f"which): compare figures within a section, not across sections"
        ]
    for name in [n for n in BENCHES if n in sections]:
        sec = Section.from_dict({k: x for k, x in sections[name].items() if k != "meta"})
        lines += [
            f"## {sec.title}",
            "",
            f"_Measured {sec.date} on {_machine_kind(sections[name].get('meta', meta))} in {sec.seconds:.0f} s"
            + (" (quick)" if sec.quick else "")
            + "._",
            "",
            "| row | figure | baseline | ratio | target | met? | note |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {_cell(r.name)} | {_cell(r.figure)} | {_cell(r.baseline)} | {_cell(r.ratio)} | "
            f"{_cell(r.target)} | {r.met_text} | {_cell(r.note)} |"
            for r in sec.rows
        ]
        lines.append("")
        if sec.details:
            lines += [sec.details, ""]
    return "\n".join(lines)


if __name__ == "__main__":
    run_cli(main)  # one line for any failure (fcn/errors.py)
