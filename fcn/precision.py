"""How a run computes: autocast precision and the activations' memory layout, decided once per run from its config
and device (the measurements behind each rule are in bench/train_step.py and results/benchmarks.md)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from fcn.config import RunConfig

# [D] --amp auto on a CPU with bf16 arithmetic (AVX-512 BF16, AMD EPYC, bench/train_step.py): bf16 autocast from this
# width up. FCN-4 at paper scale (width 1.0, 2 threads): bf16 1.9-2.0x the fp32 step's samples/s (normalised; raw
# 2.4-3x), the gain the project already takes on CUDA with the same arithmetic. Demo width 0.125 (1 thread): 1.4x per
# step, but the default demo cell lost AUC (2 epochs, seed 0: test ROC-AUC 0.7893 vs 0.7930 fp32, PR-AUC 0.257 vs
# 0.270) for 1.1x its wall time, so it stays fp32 (and bit-identical to its earlier results). Only widths 0.125 and
# 1.0 were measured: 0.5 splits them, as in channels_last's rule.
CPU_BF16_MIN_WIDTH = 0.5

# bf16 arithmetic on NVIDIA GPUs starts with Ampere (compute capability 8.0: A100, A10, H100, L4...). On Volta/Turing
# (V100 7.0, T4 7.5) torch's bf16 autocast runs, emulated, slower than fp32 and with bf16's rounding: auto takes fp32.
CUDA_BF16_MIN_CAPABILITY = (8, 0)


def cpu_bf16_arithmetic() -> bool:
    """Whether this CPU computes in bf16 natively (AVX-512 BF16 or AMX-BF16), not by oneDNN's emulation in fp32
    units, which is slower than fp32 (torch.ops.mkldnn._is_mkldnn_bf16_supported() is True for that too). torch's
    own CPUID checks where this torch has them, else the flags in /proc/cpuinfo."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(c is not None for c in checks):
        try:
            return any(c() for c in checks)
        except RuntimeError:
            pass
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def cuda_capability(device: torch.device) -> tuple[int, int]:
    """The GPU's compute capability (major, minor); tests set it through torch.cuda.get_device_capability."""
    return tuple(torch.cuda.get_device_capability(device))


def amp_dtype(config: RunConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of this run (None: fp32). auto: bf16 on a GPU of compute capability ≥ 8.0; on CPU where
    the CPU has bf16 arithmetic and the model is at least CPU_BF16_MIN_WIDTH wide (where bench/train_step.py measured
    it faster at equal AUC)."""
    if config.amp == "bf16":
        return torch.bfloat16
    if config.amp == "off":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if cuda_capability(device) >= CUDA_BF16_MIN_CAPABILITY else None
    if device.type == "cpu" and config.width >= CPU_BF16_MIN_WIDTH and cpu_bf16_arithmetic():
        return torch.bfloat16
    return None


def autocast(config: RunConfig, device: torch.device):
    dtype = amp_dtype(config, device)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def apply_precision(config: RunConfig, device: torch.device) -> None:
    """Set the process-wide switches that belong to the run's precision, once, before the model runs. fp32 on CUDA
    is full fp32, as the paper trained: TF32 off for matmuls and cuDNN convolutions (torch leaves cuDNN's TF32 on by
    default, so without this `--amp off` convolutions ran at TF32's 10-bit mantissa on Ampere and newer). With bf16
    autocast the fp32 remainder (loss, optimiser) keeps torch's defaults."""
    if device.type == "cuda" and amp_dtype(config, device) is None:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def describe(config: RunConfig, device: torch.device) -> str:
    """The run's precision in words, for its log line: e.g. "bf16 autocast (amp auto: CPU with bf16 arithmetic)"."""
    dtype = amp_dtype(config, device)
    name = "bf16 autocast" if dtype is not None else "fp32"
    if dtype is None and device.type == "cuda":
        name = "fp32 (TF32 off)"
    if config.amp != "auto":
        return f"{name} (amp {config.amp})"
    if device.type == "cuda":
        cap = cuda_capability(device)
        have = "≥" if dtype is not None else "<"
        why = f"GPU compute capability {cap[0]}.{cap[1]} {have} 8.0" + (", no bf16 arithmetic" if dtype is None else "")
    elif not cpu_bf16_arithmetic():
        why = "this CPU has no bf16 arithmetic"
    elif dtype is None:
        why = f"CPU with bf16 arithmetic, width {config.width:g} < {CPU_BF16_MIN_WIDTH:g}"
    else:
        why = f"CPU with bf16 arithmetic, width {config.width:g} ≥ {CPU_BF16_MIN_WIDTH:g}"
    return f"{name} (amp auto: {why})"


def channels_last(config: RunConfig, device: torch.device) -> bool:
    """Whether the model and its inputs use the channels_last layout (config.memory_format; "auto" decides by the
    measurements in bench/train_step.py and results/benchmarks.md).

    auto: channels_last on CUDA (cuDNN's NHWC kernels, the usual choice for bf16 convolutions) and on CPU at demo
    width (1.4× the samples/s of contiguous at width 0.125 on an AVX2 CPU, one thread); contiguous at full width on a
    CPU without AVX-512 (1.4× the samples/s of channels_last for FCN-4 at 96×1366 on an AVX2 EPYC), channels_last with
    it (as fast or faster on an AVX-512 EPYC). [D] Widths were measured at 0.125 and 1.0 only: 0.5 splits them.
    """
    if config.memory_format != "auto":
        return config.memory_format == "channels_last"
    if device.type != "cpu" or config.width < 0.5:
        return True
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")
