"""The machine's practical limit: the fastest dense kernel measured here, in GFLOP/s.

Model-FLOPs utilisation (MFU) is achieved FLOP/s divided by this peak. Vendor peaks are not used: on this CPU MKL's
float32 matmul takes an AVX2 path (~237 GFLOP/s) while oneDNN's AVX-512 convolutions reach ~528 (docs/MEASURED.md),
so the honest "peak" is the best of what the libraries we train with can do, measured in the same process as the
training steps it is compared with.

CPU candidates: a float32 2048² matmul (MKL) and a float32 convolution of FCN-4's conv2 shape (128 → 384 maps, 3×3,
48×341, channels_last: oneDNN, the kernel that dominates the model: 7.2 of its 10.0 G multiply-adds). Batch 1 keeps
the conv's output (25 MB) small enough that neither allocator page-faults it on every call, so the peak does not
depend on the allocator being compared. GPU: a bf16 8192² matmul (tensor cores).
"""

from __future__ import annotations

import functools

import torch

from bench.common import median, time_calls

CONV2 = dict(c_in=128, c_out=384, h=48, w=341)  # FCN-4's second block at paper scale (after the (2,4) pool)


def conv2_flops(batch: int) -> float:
    c = CONV2
    return 2.0 * batch * c["c_in"] * c["c_out"] * 9 * c["h"] * c["w"]


@functools.lru_cache(maxsize=8)  # built once per process: interleaved measurements reuse the tensors
def matmul_fn(n: int, dtype: torch.dtype, device: str):
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return (lambda: a @ b), 2.0 * n**3


@functools.lru_cache(maxsize=8)
def conv_fn(batch: int, dtype: torch.dtype, device: str):
    c = CONV2
    conv = torch.nn.Conv2d(c["c_in"], c["c_out"], 3, padding=1).to(device=device, dtype=dtype)
    conv = conv.to(memory_format=torch.channels_last)
    x = torch.randn(batch, c["c_in"], c["h"], c["w"], device=device, dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last)

    def run():
        with torch.no_grad():
            conv(x)

    return run, conv2_flops(batch)


def gflops(fn_flops, repeat: int, sync=None) -> float:
    fn, flops = fn_flops
    return flops / median(time_calls(fn, repeat, warmup=1, sync=sync)) / 1e9


def cpu_kernels(dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """GFLOP/s of each CPU candidate (median of a few calls)."""
    return {
        "matmul 2048²": gflops(matmul_fn(2048, dtype, "cpu"), 5),
        "conv2 (oneDNN, channels_last)": gflops(conv_fn(1, dtype, "cpu"), 7),
    }


def gpu_kernels() -> dict[str, float]:
    sync = torch.cuda.synchronize
    return {
        "bf16 matmul 8192²": gflops(matmul_fn(8192, torch.bfloat16, "cuda"), 20, sync),
        "bf16 conv2 (batch 16)": gflops(conv_fn(16, torch.bfloat16, "cuda"), 20, sync),
    }


def quick_conv_gflops(dtype: torch.dtype = torch.float32, repeat: int = 3) -> float:
    """A short conv2 measurement (~0.1-0.3 s) to interleave with training steps, so MFU pairs a step with the
    peak measured right beside it in time (other jobs on the machine slow both alike)."""
    return gflops(conv_fn(1, dtype, "cpu"), repeat)
