"""How a run computes: autocast precision and the activations' memory layout, decided once per run from its config
and device (the measurements behind each rule are in bench/train_step.py and results/benchmarks.md)."""
from __future__ import annotations

import contextlib

import torch

from fcn.config import RunConfig


def autocast(config: RunConfig, device: torch.device):
    use = config.amp == "bf16" or (config.amp == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if use else contextlib.nullcontext()


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
