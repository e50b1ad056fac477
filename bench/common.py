"""What every benchmark shares: result rows, machine facts, timing, and running a measurement in a fresh process.

Why fresh processes: the allocator (jemalloc via LD_PRELOAD) can only be chosen when a process starts, and
torch.compile, MLflow and Ray leave state behind. A worker is `python -m bench.<module> --worker '<json spec>'`; it
prints one line `BENCH_RESULT <json>` that `run_worker` parses.

Why ratios: this machine's 2 cores are shared with other jobs, so absolute timings drift from minute to minute. Every
figure is compared with a baseline measured in the same run (ideally the same process, interleaved in time), and each
timing is the median of a few repeats.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fcn.malloc import keep_freed_memory

REPO = Path(__file__).resolve().parents[1]
RESULT_MARK = "BENCH_RESULT "

# Debian's libjemalloc2 (and the usual other places); FCN_JEMALLOC overrides.
JEMALLOC_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2",
    "/usr/local/lib/libjemalloc.so.2",
    "/usr/lib/libjemalloc.so.2",
)


def jemalloc_path() -> str | None:
    env = os.environ.get("FCN_JEMALLOC")
    if env:
        return env if Path(env).exists() else None
    return next((p for p in JEMALLOC_CANDIDATES if Path(p).exists()), None)


# The allocators compared. glibc's malloc serves blocks of more than 32 MB with fresh mmap()s and returns them on
# free, so every training step page-faults its activations in again (hundreds of MB at paper scale: system time
# ≈ user time, docs/MEASURED.md). Both fixes keep freed memory for reuse; "-keep" variants are the ones this project
# proposes.
ALLOCATORS = {
    "glibc": "glibc malloc (the default)",
    "glibc-keep": "glibc malloc + mallopt(M_MMAP_MAX=0, M_TRIM_THRESHOLD=-1, M_ARENA_MAX=1) called inside the "
    "process (fcn.malloc.keep_freed_memory, what fcn.train does on CPU)",
    "jemalloc": "jemalloc via LD_PRELOAD, its default MALLOC_CONF",
    "jemalloc-keep": "jemalloc via LD_PRELOAD + MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1 (never purge)",
}
JEMALLOC_KEEP_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"


def allocator_env(allocator: str) -> dict[str, str]:
    """Environment overrides for a worker that must run with `allocator` (a key of ALLOCATORS). glibc-keep needs
    the worker to call glibc_keep_memory() too (see apply_allocator)."""
    preload = [p for p in os.environ.get("LD_PRELOAD", "").split(":") if p and "jemalloc" not in p]
    conf = ""
    if allocator.startswith("jemalloc"):
        lib = jemalloc_path()
        if lib is None:
            raise RuntimeError("jemalloc not found (Debian: apt-get install libjemalloc2; or set FCN_JEMALLOC)")
        preload.insert(0, lib)
        conf = JEMALLOC_KEEP_CONF if allocator == "jemalloc-keep" else ""
    return {"LD_PRELOAD": ":".join(preload), "MALLOC_CONF": conf}


def glibc_keep_memory() -> bool:
    """glibc keeps freed memory (fcn.malloc.keep_freed_memory, what fcn.train and fcn.preprocess's workers call)."""
    return keep_freed_memory()


def apply_allocator(allocator: str) -> None:
    """Inside a worker: the part of `allocator` that is set at run time rather than in the environment."""
    if allocator == "glibc-keep":
        glibc_keep_memory()


# ---------------------------------------------------------------- result rows


@dataclass
class Row:
    """One line of a benchmark table: a figure, what it is compared with, the ratio, the target and a note."""

    name: str
    figure: str
    baseline: str = "—"
    ratio: str = "—"
    target: str = "—"
    met: bool | None = None  # None: no target, or not run
    note: str = ""

    @property
    def met_text(self) -> str:
        return {True: "**yes**", False: "**no**", None: "—"}[self.met]


@dataclass
class Section:
    """One benchmark's result: rows, free-form details (markdown), and when / how long it ran."""

    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    details: str = ""
    seconds: float = 0.0
    date: str = ""
    quick: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Section:
        d = dict(d)
        d["rows"] = [Row(**r) for r in d.get("rows", [])]
        return cls(**d)


def not_run(name: str, why: str, target: str = "—") -> Row:
    return Row(name=name, figure=f"not run: {why}", target=target, met=None)


# ---------------------------------------------------------------- timing


def median(xs) -> float:
    return float(statistics.median(xs))


def time_calls(fn, repeat: int, warmup: int = 1, sync=None) -> list[float]:
    """Seconds of each of `repeat` calls of fn() after `warmup` untimed ones; `sync` (e.g. cuda.synchronize) is
    called before each clock read so asynchronous devices are timed honestly."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        if sync:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        out.append(time.perf_counter() - t0)
    return out


def max_rss_gb() -> float:
    """Peak resident memory of this process in GiB (what a keep-memory allocator costs)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def cpu_times() -> tuple[float, float, int]:
    """(user s, system s, minor page faults) of this process and its finished children. Page faults are the
    allocator's fingerprint: glibc returns big blocks to the OS on free and faults them in again on the next step."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + c.ru_utime, s.ru_stime + c.ru_stime, s.ru_minflt + c.ru_minflt


def fmt_rate(x: float, unit: str) -> str:
    if x >= 100:
        return f"{x:,.0f} {unit}"
    if x >= 10:
        return f"{x:.1f} {unit}"
    return f"{x:.2f} {unit}"


def fmt_s(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 120:
        return f"{s / 60:.1f} min"
    return f"{s:.1f} s"


# ---------------------------------------------------------------- workers in fresh processes


def run_worker(module: str, spec: dict, *, env: dict | None = None, timeout: float = 900) -> dict:
    """Run `python -m bench.<module> --worker <spec>` and return the dict it reports; errors carry its stderr tail."""
    e = dict(os.environ, PYTHONUNBUFFERED="1", MLFLOW_DISABLE_TELEMETRY="true", RAY_AUTH_MODE="disabled")
    e.update(env or {})
    cmd = [sys.executable, "-m", f"bench.{module}", "--worker", json.dumps(spec)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e, cwd=REPO)
    except subprocess.TimeoutExpired as ex:
        raise RuntimeError(f"bench.{module} worker {spec} timed out after {timeout:.0f} s") from ex
    for line in reversed(p.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK) :])
    tail = (p.stderr or p.stdout)[-2000:]
    raise RuntimeError(f"bench.{module} worker {spec} failed (exit {p.returncode}):\n{tail}")


def worker_main(worker) -> None:
    """Entry point of a module's worker: `python -m bench.<module> --worker '<json>'`."""
    if len(sys.argv) != 3 or sys.argv[1] != "--worker":
        sys.exit(
            f"usage: python -m {sys.modules['__main__'].__spec__.name} --worker '<json spec>' "
            f"(run all benchmarks with `python -m bench`)"
        )
    result = worker(json.loads(sys.argv[2]))
    print(RESULT_MARK + json.dumps(result), flush=True)


# ---------------------------------------------------------------- machine and versions


def machine() -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count() or 1}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")]
        flags = next((ln for ln in cpuinfo.splitlines() if ln.startswith("flags")), "")
        if names:
            info["cpu"] = names[0]
        isa = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "avx2") if f" {f}" in flags]
        info["isa"] = ", ".join(isa) or "—"
    except OSError:
        pass
    try:
        mem_kb = int(
            next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")).split()[1]
        )
        info["memory"] = f"{mem_kb / 2**20:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    try:
        info["cores_usable"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    info["load_avg"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    try:
        # torch inside the functions: bench.harness_overhead's worker imports this module and then times each of a
        # cell's one-off imports, torch first, in its fresh process (import_costs)
        import torch

        if torch.cuda.is_available():
            info["gpu"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        else:
            info["gpu"] = "none"
    except ImportError:
        info["gpu"] = "unknown (no torch)"
    info["os"] = platform.platform()
    return info


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("torch", "torchaudio", "numpy", "h5py", "librosa", "soundfile", "mlflow", "ray"):
        try:
            mod = __import__(name)
            out[name] = getattr(mod, "__version__", "?")
        except Exception:  # noqa: BLE001 - a missing optional package is a fact to report, not an error
            out[name] = "not installed"
    lib = jemalloc_path()
    out["jemalloc"] = lib or "not found"
    return out


def gpu_available() -> bool:
    try:
        import torch  # see machine()

        return torch.cuda.is_available()
    except ImportError:
        return False


NO_GPU = "no GPU in this session"
