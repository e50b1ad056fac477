"""Training step of FCN-4 at paper scale (1×96×1366, batch 16): samples/s and model-FLOPs utilisation (MFU).

MFU = 3 × forward FLOPs × samples/s ÷ peak (backward ≈ 2 × forward), peak = the fastest dense kernel measured in the
same process (bench.peak). On CPU each timed step is paired with a short peak measurement taken right before it and
MFU is the median of the per-pair ratios, so other jobs on the shared machine slow numerator and denominator alike.

The "normalised" speedup of a variant over the baseline divides each one's samples/s by the fp32 conv peak measured
beside its steps, which cancels part of the drift in how busy the shared machine was while each ran (a 2-thread
training step suffers more from a busy neighbour than one long convolution does, so not all of it).

Variants (each in its own process, because an allocator is chosen at process start): eager NCHW vs channels_last
(fcn.train's memory_format "auto" picks between them by width and CPU: the headline says whether it picked the
fastest), torch.compile, four allocators (common.ALLOCATORS: glibc, glibc + mallopt, jemalloc, jemalloc that never
purges), bf16 autocast on CPU where the CPU has bf16 arithmetic (at paper scale and at demo width, and the demo cell's
test ROC-AUC trained with --amp bf16 vs off, same seed: what fcn.precision's "auto" rule rests on); on GPU fp32 eager /
channels_last, bf16 autocast and compile. The step is fcn.train's: forward, BCE with logits, zero_grad, backward, Adam
(data loading excluded: bench.loading measures it).
The fastest fp32 variant is run a second time, with a torch.profiler step at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bench import peak
from bench.common import (
    ALLOCATORS,
    NO_GPU,
    REPO,
    Row,
    Section,
    allocator_env,
    apply_allocator,
    cpu_times,
    fmt_rate,
    gpu_available,
    jemalloc_path,
    max_rss_gb,
    median,
    run_worker,
    worker_main,
)
from fcn.config import PRESETS, RunConfig
from fcn.models import FCN, forward_macs
from fcn.precision import amp_dtype, channels_last, cpu_bf16_arithmetic, describe
from fcn.train import train_step

SAME_WITHIN = 0.05  # variants closer than this (normalised) are the same speed on this shared machine
MFU_TARGET = 0.70  # of the measured peak, on this CPU (docs/MEASURED.md: channels_last + jemalloc reached ≈ 69 %)
PAPER = dict(depth=4, width=1.0, rows=96, frames=1366, batch=16)
# fcn.train's demo scale (RunConfig defaults: width 0.125, 4 s clips → 188 frames, batch 32, one thread per cell)
DEMO = dict(depth=4, width=0.125, rows=96, frames=188, batch=32)


# ---------------------------------------------------------------- the measurement (runs in a worker process)


def set_gpu_precision(amp: str) -> None:
    """A GPU row's precision is what it says: "fp32" rows run fp32 convolutions and matmuls, not TF32 (torch lets
    cuDNN use TF32 by default); bf16 rows leave them on. Fixed shapes: cudnn.benchmark, as fcn.train does."""
    tf32 = amp == "bf16"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True


def worker(spec: dict) -> dict:
    apply_allocator(spec["allocator"])
    dev = spec["device"]
    if dev == "cpu":
        torch.set_num_threads(spec["threads"])
    else:
        set_gpu_precision(spec["amp"])
    torch.manual_seed(0)
    model = FCN(spec["depth"], spec["width"])
    fwd_flops = 2.0 * forward_macs(model, spec["rows"], spec["frames"])  # counted on CPU before moving
    model = model.to(dev)
    b = spec["batch"]
    x = torch.randn(b, 1, spec["rows"], spec["frames"], device=dev)
    y = (torch.rand(b, 50, device=dev) < 0.1).float()
    if spec["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    net = torch.compile(model) if spec["compile"] else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    bf16 = spec["amp"] == "bf16"
    config = RunConfig(amp=spec["amp"])  # "off" or "bf16": fcn.precision.autocast decides as in training
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def step() -> float:
        return train_step(net, opt, x, y, config, torch.device(dev)).item()  # fcn.train's step; .item() syncs

    t0 = time.perf_counter()
    step()
    sync()
    first_step_s = time.perf_counter() - t0  # oneDNN primitive creation, and torch.compile's compilation
    for _ in range(spec["warmup"] - 1):
        step()
    out = dict(spec=spec, fwd_flops=fwd_flops, first_step_s=first_step_s)
    if dev == "cpu":
        kernels = peak.cpu_kernels()
        if bf16:
            kernels.update({f"bf16 {k}": g for k, g in peak.cpu_kernels(torch.bfloat16).items()})
        out["peak_gflops"] = max(g for k, g in kernels.items() if k.startswith("bf16") == bf16)
    else:
        kernels = peak.gpu_kernels()
        out["peak_gflops"] = kernels["bf16 matmul 8192²"]
    out["kernels"] = kernels

    times, mfus, norms, user, system, faults = [], [], [], 0.0, 0.0, 0
    for _ in range(spec["steps"]):
        if dev == "cpu":
            # the peak right beside this step in time (matmul, measured once, stands in should it be faster)
            pk32 = peak.quick_conv_gflops(torch.float32)
            pk = (
                max(peak.quick_conv_gflops(torch.bfloat16), kernels["bf16 matmul 2048²"])
                if bf16
                else max(pk32, kernels["matmul 2048²"])
            )
        else:
            pk = pk32 = out["peak_gflops"]
        u0, s0, f0 = cpu_times()
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        dt = time.perf_counter() - t0
        u1, s1, f1 = cpu_times()
        user, system, faults = user + u1 - u0, system + s1 - s0, faults + f1 - f0
        times.append(dt)
        mfus.append(3 * fwd_flops * b / dt / (pk * 1e9))
        norms.append(b / dt / pk32)
    out.update(
        step_s=times,
        samples_per_s=b / median(times),
        mfu=median(mfus),
        norm_rate=median(norms),
        mfus=mfus,
        norms=norms,
        user_s=user,
        sys_s=system,
        faults_per_step=faults / max(1, len(times)),
        max_rss_gb=max_rss_gb(),
        load_avg=os.getloadavg()[0],
    )

    if spec.get("profile"):
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev == "cuda" else [])
        with profile(activities=acts) as prof:
            step()
            sync()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events) or 1
        out["profile"] = [
            dict(op=e.key, self_ms=e.self_cpu_time_total / 1e3, share=e.self_cpu_time_total / total, calls=e.count)
            for e in events[:12]
        ]
        out["conv_share"] = sum(e.self_cpu_time_total for e in events if "conv" in e.key.lower()) / total
    return out


# ---------------------------------------------------------------- the variants


@dataclass(frozen=True)
class Variant:
    label: str
    device: str = "cpu"
    channels_last: bool = False
    compile: bool = False
    amp: str = "off"
    allocator: str = "glibc"

    def spec(self, scale: dict, warmup: int, steps: int, threads: int, **extra) -> dict:
        return dict(
            scale,
            device=self.device,
            channels_last=self.channels_last,
            compile=self.compile,
            amp=self.amp,
            allocator=self.allocator,
            warmup=warmup,
            steps=steps,
            threads=threads,
            **extra,
        )

    @property
    def kind(self) -> tuple:
        return self.device, self.channels_last, self.compile, self.amp, self.allocator


def cpu_variants(quick: bool, have_jemalloc: bool) -> list[Variant]:
    """Both layouts under glibc with and without mallopt, the other allocators under channels_last, then
    compile and bf16 under the best-keeping allocator."""
    keep = "jemalloc-keep" if have_jemalloc else "glibc-keep"
    vs = [
        Variant("eager NCHW, glibc", allocator="glibc"),
        Variant("channels_last, glibc", channels_last=True, allocator="glibc"),
        Variant("eager NCHW, glibc + mallopt", allocator="glibc-keep"),
        Variant("channels_last, glibc + mallopt", channels_last=True, allocator="glibc-keep"),
    ]
    if have_jemalloc:
        vs += [
            Variant("channels_last, jemalloc", channels_last=True, allocator="jemalloc"),
            Variant("channels_last, jemalloc never-purge", channels_last=True, allocator="jemalloc-keep"),
        ]
    if quick:
        return vs
    vs += [
        Variant(f"eager NCHW, {keep}", allocator=keep),
        Variant(f"torch.compile + channels_last, {keep}", channels_last=True, compile=True, allocator=keep),
    ]
    if native_bf16():  # without it oneDNN emulates bf16 in fp32 units: slower than fp32, nothing to learn
        vs += [
            Variant(f"bf16 autocast + channels_last, {a}", channels_last=True, amp="bf16", allocator=a)
            for a in dict.fromkeys(("glibc-keep", keep))
        ]  # glibc-keep: fcn.train's own allocator on CPU
    return vs


def native_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX-512 BF16 or AMX): fcn.precision's check, which "auto" uses."""
    return cpu_bf16_arithmetic()


GPU_VARIANTS = (
    Variant("GPU eager NCHW, fp32", device="cuda"),
    Variant("GPU channels_last, fp32", device="cuda", channels_last=True),
    Variant(
        "GPU channels_last + bf16 autocast (fcn.train's default on CUDA)", device="cuda", channels_last=True, amp="bf16"
    ),
    Variant("GPU torch.compile + channels_last + bf16", device="cuda", channels_last=True, compile=True, amp="bf16"),
)


def default_path() -> tuple[Variant, str]:
    """The CPU variant `python -m fcn.train --preset paper` runs here: its layout (fcn.precision.channels_last, which
    decides "auto" by this CPU) and what fcn.train does to malloc."""
    c = RunConfig(**PRESETS["paper"])
    src = (REPO / "fcn" / "train.py").read_text()
    inherited = os.environ.get("LD_PRELOAD", "")
    if "keep_freed_memory()" in src:
        alloc, how = "glibc-keep", "fcn.train calls fcn.malloc.keep_freed_memory() on CPU"
    elif "jemalloc" in src and "LD_PRELOAD" in src:
        alloc, how = "jemalloc-keep" if "decay" in src else "jemalloc", "fcn.train preloads jemalloc"
    elif "jemalloc" in inherited:
        alloc, how = "jemalloc", "LD_PRELOAD of this environment"
    else:
        alloc, how = "glibc", "fcn.train leaves malloc alone and LD_PRELOAD is unset"
    return Variant(
        "",
        channels_last=channels_last(c, torch.device("cpu")),
        amp="off" if amp_dtype(c, torch.device("cpu")) is None else "bf16",
        allocator=alloc,
    ), how


# ---------------------------------------------------------------- the benchmark


def run(quick: bool = False) -> Section:
    sec = Section("train_step", "1. Training step: FCN-4 at paper scale (1×96×1366, batch 16)")
    threads = os.cpu_count() or 1
    # The first step is slow (oneDNN set-up), and a keep-memory heap still grows (page-faults) for a few steps after
    # it: 3 warm-up steps, so that the timed ones are the steady state a long training run sees.
    warmup, steps = (1, 2) if quick else (3, 3)
    scale = dict(PAPER, batch=4) if quick else PAPER
    have_je = jemalloc_path() is not None
    variants = cpu_variants(quick, have_je)
    results: dict[Variant, dict] = {}
    for v in variants:
        try:
            results[v] = run_worker(
                "train_step", v.spec(scale, warmup, steps, threads), env=allocator_env(v.allocator), timeout=900
            )
        except RuntimeError as e:
            sec.rows.append(Row(v.label, f"failed: {str(e).splitlines()[0]}", met=False))
    if not results:
        return sec
    base_v = variants[0] if variants[0] in results else next(iter(results))
    base = results[base_v]
    default_v, default_how = default_path()
    for v, r in results.items():
        notes = [
            f"sys/user CPU {r['sys_s'] / max(r['user_s'], 1e-9):.2f}, {r['faults_per_step'] / 1e3:,.0f} k page "
            f"faults/step, peak RSS {r['max_rss_gb']:.1f} GiB"
        ]
        if v.compile:
            notes.append(f"first step {r['first_step_s']:.0f} s (compilation)")
        if v.amp == "bf16":
            fp32 = next(
                (x for u, x in results.items() if u.amp == "off" and u.allocator == v.allocator and u.channels_last),
                None,
            )
            notes.append(
                "MFU vs the bf16 conv peak"
                + (f"; {_speedup(r, fp32)} the fp32 channels_last step under the same allocator" if fp32 else "")
                + f"; fcn.train's amp auto at this width: {_auto_words(PAPER['width'])}"
            )
        if v.kind == default_v.kind:
            notes.append("**= fcn.train's default path**")
        sec.rows.append(
            Row(
                v.label,
                f"{fmt_rate(r['samples_per_s'], 'samples/s')}, MFU {100 * r['mfu']:.0f} % of "
                f"{r['peak_gflops']:.0f} GFLOP/s",
                f"{base_v.label}: {fmt_rate(base['samples_per_s'], 'samples/s')}",
                _speedup(r, base),
                f"MFU ≥ {100 * MFU_TARGET:.0f} %",
                r["mfu"] >= MFU_TARGET,
                "; ".join(notes),
            )
        )
    if not quick and not native_bf16():
        sec.rows.append(
            Row(
                "bf16 autocast + channels_last",
                "not run: this CPU has no bf16 arithmetic (no avx512_bf16 or amx_bf16 in /proc/cpuinfo)",
            )
        )
    headline, profile_md = _headline(results, base_v, default_v, default_how, threads)
    sec.rows.append(headline)
    sec.rows += _demo_rows(quick, have_je)
    sec.rows += _auc_rows(quick)
    sec.rows += _gpu_rows(quick)
    sec.details = _details(results) + (f"\n\n{profile_md}" if profile_md else "")
    return sec


def _speedup(r: dict, base: dict) -> str:
    return f"{r['norm_rate'] / base['norm_rate']:.2f}× (raw {r['samples_per_s'] / base['samples_per_s']:.2f}×)"


def _headline(results: dict, base_v: Variant, default_v: Variant, default_how: str, threads: int) -> tuple[Row, str]:
    """The fastest fp32 variant, measured a second time (its figure is the median over both runs' steps);
    whether fcn.train's default path is it; if under target, what limits it (and the profile table behind that)."""
    fp32 = {v: r for v, r in results.items() if v.amp == "off"}
    best_v = max(fp32, key=lambda v: fp32[v]["norm_rate"])
    best, base = fp32[best_v], results[base_v]
    again = _rerun_with_profile(best_v, best["spec"], threads)
    mfus, rates = list(best["mfus"]), [best["spec"]["batch"] / t for t in best["step_s"]]
    if "error" not in again:
        mfus += again["mfus"]
        rates += [again["spec"]["batch"] / t for t in again["step_s"]]
    mfu, rate = median(mfus), median(rates)
    default_r = next((r for v, r in fp32.items() if v.kind == default_v.kind), None)
    uses = best_v.kind == default_v.kind
    note = (
        f"median of {len(mfus)} steps from two runs (MFU {100 * best['mfu']:.0f} % at load average "
        f"{best['load_avg']:.1f}, then "
        + (f"{100 * again['mfu']:.0f} % at {again['load_avg']:.1f}" if "error" not in again else "failed")
        + "); "
        f"used by fcn.train's default path: {'yes' if uses else 'no'} (default: "
        f"{'channels_last' if default_v.channels_last else 'NCHW'}, eager, "
        f"{'bf16 autocast (a row above), ' if default_v.amp == 'bf16' else ''}{ALLOCATORS[default_v.allocator]}; "
        f"{default_how})"
    )
    if default_r is not None and not uses:
        gain = best["norm_rate"] / default_r["norm_rate"]
        raw_gain = best["samples_per_s"] / default_r["samples_per_s"]
        note += f"; the fastest is {gain:.2f}× the default path (normalised; raw {raw_gain:.2f}×)"
        if gain <= 1 + SAME_WITHIN or raw_gain <= 1:
            # the two ratios disagree on which is faster, or both are within noise: the same speed, as measured here
            note += (
                f", the same speed within this measurement's resolution (under {100 * SAME_WITHIN:.0f} %, or "
                f"raw and normalised ratios that disagree): the default is as fast, with no LD_PRELOAD"
            )
    profile_md = ""
    if mfu < MFU_TARGET and "profile" in again:
        limit, profile_md = _limit(best_v, again)
        note += ". Limit: " + limit
    elif "error" in again:
        note += f". Re-run failed: {again['error']}"
    return Row(
        f"fastest fp32 variant: {best_v.label}",
        f"{fmt_rate(rate, 'samples/s')}, MFU {100 * mfu:.0f} %",
        f"{base_v.label}: {fmt_rate(base['samples_per_s'], 'samples/s')}",
        _speedup(best, base),
        f"MFU ≥ {100 * MFU_TARGET:.0f} %",
        mfu >= MFU_TARGET,
        note,
    ), profile_md


def _rerun_with_profile(v: Variant, spec: dict, threads: int) -> dict:
    """The variant again (same steps), then one step under torch.profiler."""
    try:
        return run_worker(
            "train_step",
            v.spec({k: spec[k] for k in PAPER}, spec["warmup"], spec["steps"], threads, profile=True),
            env=allocator_env(v.allocator),
            timeout=900,
        )
    except RuntimeError as e:
        return {"error": str(e).splitlines()[0]}


def _limit(v: Variant, r: dict) -> tuple[str, str]:
    """Why a variant stays under the target: torch.profiler's top ops of one step, in words and as a table."""
    conv = r["conv_share"]
    others = [p for p in r["profile"] if "conv" not in p["op"].lower()][:4]
    lines = [
        f"Profile of one step of **{v.label}** (torch.profiler, self CPU time):",
        "",
        "| op | self ms | share | calls |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| `{p['op']}` | {p['self_ms']:.0f} | {100 * p['share']:.1f} % | {p['calls']} |" for p in r["profile"]]
    return (
        f"convolutions (oneDNN, forward + backward) take {100 * conv:.0f} % of the step's CPU time; the other "
        f"{100 * (1 - conv):.0f} % is memory-bound work with no model FLOPs ("
        + ", ".join(f"`{p['op']}` {100 * p['share']:.0f} %" for p in others)
        + ("; `aten::bernoulli_` draws dropout's masks" if any("bernoulli" in p["op"] for p in others) else "")
        + f"); system/user CPU {r['sys_s'] / max(r['user_s'], 1e-9):.2f} (profile below)"
    ), "\n".join(lines)


def _demo_rows(quick: bool, have_je: bool) -> list[Row]:
    """fcn.train's demo scale (what the default grid trains): does the allocator matter there, and which layout?
    One thread, as the local back end gives each of its one-cell-per-core workers."""
    warmup, steps = (2, 5) if quick else (3, 15)
    allocs = ["glibc", "glibc-keep"] + (["jemalloc-keep"] if have_je else [])
    r = {}
    for alloc, cl in [(a, True) for a in allocs] + [("glibc-keep", False)]:
        v = Variant(alloc, channels_last=cl, allocator=alloc)
        try:
            r[alloc, cl] = run_worker(
                "train_step", v.spec(DEMO, warmup, steps, 1), env=allocator_env(alloc), timeout=300
            )
        except RuntimeError as e:
            return [Row("demo-scale step", f"failed: {str(e).splitlines()[0]}", met=False)]
    g = r["glibc", True]
    scale = "demo-scale step (width 0.125, 96×188, batch 32, 1 thread"
    rows = []
    for alloc in allocs[1:]:
        x = r[alloc, True]
        rows.append(
            Row(
                f"{scale}, channels_last), {alloc}",
                fmt_rate(x["samples_per_s"], "samples/s"),
                f"glibc: {fmt_rate(g['samples_per_s'], 'samples/s')}",
                _speedup(x, g),
                "—",
                None,
                f"page faults/step glibc {g['faults_per_step'] / 1e3:,.1f} k vs "
                f"{x['faults_per_step'] / 1e3:,.1f} k: what the default grid's cells would gain",
            )
        )
    cl, nc = r["glibc-keep", True], r["glibc-keep", False]
    rows.append(
        Row(
            f"{scale}, contiguous), glibc-keep",
            fmt_rate(nc["samples_per_s"], "samples/s"),
            f"channels_last, glibc-keep: {fmt_rate(cl['samples_per_s'], 'samples/s')}",
            _speedup(nc, cl),
            "—",
            None,
            "fcn.train's memory_format auto takes channels_last at this width",
        )
    )
    if not native_bf16():
        return rows + [
            Row(f"{scale}, channels_last), glibc-keep, bf16 autocast", "not run: this CPU has no bf16 arithmetic")
        ]
    try:
        bf = run_worker(
            "train_step",
            Variant("bf16", channels_last=True, amp="bf16", allocator="glibc-keep").spec(DEMO, warmup, steps, 1),
            env=allocator_env("glibc-keep"),
            timeout=300,
        )
    except RuntimeError as e:
        return rows + [Row(f"{scale}, bf16", f"failed: {str(e).splitlines()[0]}", met=False)]
    rows.append(
        Row(
            f"{scale}, channels_last), glibc-keep, bf16 autocast",
            fmt_rate(bf["samples_per_s"], "samples/s"),
            f"fp32 channels_last, glibc-keep: {fmt_rate(cl['samples_per_s'], 'samples/s')}",
            _speedup(bf, cl),
            "—",
            None,
            f"fcn.train's amp auto at this width: {_auto_words(DEMO['width'])}; AUC in the next rows",
        )
    )
    return rows


AUC_EPOCHS = 2  # [D] the demo cell's bf16-vs-fp32 check: 2 epochs (a few minutes here), as in the loader's check


def _auto_words(width: float) -> str:
    return describe(RunConfig(width=width), torch.device("cpu"))


def _auc_rows(quick: bool) -> list[Row]:
    """The default demo cell (`python -m fcn.train --epochs AUC_EPOCHS`) trained with --amp off and --amp bf16,
    same seed, in fresh processes: test ROC-AUC and training time of each."""
    name = f"demo cell, test ROC-AUC after {AUC_EPOCHS} epochs, --amp bf16 vs off"
    if quick:
        return [Row(name, "not run: --quick")]
    if not native_bf16():
        return [Row(name, "not run: this CPU has no bf16 arithmetic")]
    out = {}
    tmp = Path(tempfile.mkdtemp(prefix="bench-auc-"))
    try:
        for amp in ("off", "bf16"):
            cmd = [
                sys.executable,
                "-m",
                "fcn.train",
                "--out-dir",
                str(tmp / amp),
                "--epochs",
                str(AUC_EPOCHS),
                "--amp",
                amp,
            ]
            p = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=1800,
                cwd=REPO,
                env=dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true"),
            )
            if p.returncode:
                return [Row(name, f"failed: {(p.stderr or p.stdout).strip().splitlines()[-1]}", met=False)]
            out[amp] = json.loads(next(tmp.joinpath(amp).rglob("metrics.json")).read_text())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    off, bf = out["off"], out["bf16"]
    return [
        Row(
            name,
            f"bf16 {bf['test_roc_auc']:.4f}, fp32 {off['test_roc_auc']:.4f}",
            f"fp32 {off['test_roc_auc']:.4f}",
            f"Δ {bf['test_roc_auc'] - off['test_roc_auc']:+.4f}",
            "—",
            None,
            f"training time {bf['train_time_s']:.0f} s vs {off['train_time_s']:.0f} s "
            f"({off['train_time_s'] / bf['train_time_s']:.2f}×, whole cells incl. evaluation, run one after the "
            f"other on a shared machine); fcn.train's amp auto here: {_auto_words(DEMO['width'])}",
        )
    ]


def _gpu_rows(quick: bool) -> list[Row]:
    if not gpu_available():
        return [Row(v.label, f"not run: {NO_GPU}") for v in GPU_VARIANTS]
    rows, base = [], None
    warmup, steps = (3, 5) if quick else (5, 20)
    for v in GPU_VARIANTS:
        try:
            r = run_worker("train_step", v.spec(PAPER, warmup, steps, 1), timeout=600)
        except RuntimeError as e:
            rows.append(Row(v.label, f"failed: {str(e).splitlines()[0]}", met=False))
            continue
        base = base or r
        note = f"peak = bf16 matmul 8192² {r['kernels']['bf16 matmul 8192²']:,.0f} GFLOP/s"
        if v.compile:
            note += f"; first step {r['first_step_s']:.0f} s"
        rows.append(
            Row(
                v.label,
                f"{fmt_rate(r['samples_per_s'], 'samples/s')}, MFU {100 * r['mfu']:.0f} %",
                f"{GPU_VARIANTS[0].label}: {fmt_rate(base['samples_per_s'], 'samples/s')}",
                f"{r['samples_per_s'] / base['samples_per_s']:.2f}×",
                "—",
                None,
                note,
            )
        )
    return rows


def _details(results: dict) -> str:
    any_r = next(iter(results.values()))
    sp = any_r["spec"]
    lines = [
        f"Forward FLOPs per clip {any_r['fwd_flops'] / 1e9:.2f} G (2 × fcn.models.forward_macs); a training "
        f"step counts 3× that. {sp['warmup']} warm-up + {sp['steps']} timed steps per variant, {sp['threads']} "
        f"threads, each variant in a fresh process. Ratios: normalised = samples/s ÷ the fp32 conv2 peak "
        f"measured beside each step (cancels part of the shared machine's drift), raw = plain samples/s.",
        "",
        "Allocators: " + "; ".join(f"`{k}` = {d}" for k, d in ALLOCATORS.items()) + ".",
        "",
        "| variant | step times (s) | samples/s | MFU | kernels measured in that process (GFLOP/s) | "
        "user s | sys s | faults/step | load avg |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for v, r in results.items():
        ks = ", ".join(f"{k} {g:.0f}" for k, g in r["kernels"].items())
        lines.append(
            f"| {v.label} | {', '.join(f'{t:.2f}' for t in r['step_s'])} | {r['samples_per_s']:.2f} | "
            f"{100 * r['mfu']:.0f} % | {ks} | {r['user_s']:.1f} | {r['sys_s']:.1f} | "
            f"{r['faults_per_step'] / 1e3:,.0f} k | {r['load_avg']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    worker_main(worker)
