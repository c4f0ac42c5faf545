"""bfloat16 where it pays: whether the hardware does it natively, and attention kept in float32 on a CPU."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_autocast_recommended(device: str | torch.device) -> bool:
    """Whether bfloat16 autocast should make training steps faster on `device`.

    - CUDA: when the GPU does bf16 natively (Ampere and newer).
    - CPU: when /proc/cpuinfo lists `avx512_bf16` or `amx_bf16` (bf16 dot products in hardware).
      Without them bf16 is emulated and gains nothing. benchmarks/bench_training.py measures
      both on the machine at hand. Apple's mps and anything else: False.
    Weights, optimizer state and the loss stay float32 either way (mixed precision).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    return False


# torch's CPU attention kernel is several times slower in bfloat16 than in float32 when training
# (its backward ~4x), and attention is a small share of the FLOPs: on a CPU, bf16 training steps
# (autocast or bf16 weights) compute attention in float32. Not generation (no gradients): casting
# a whole KV cache to float32 for every new token would cost more than it saves.
CPU_BF16_ATTENTION_IN_FLOAT32 = True


def _cpu_autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 has no device argument
        return torch.is_autocast_cpu_enabled()


def attention_precision(q: torch.Tensor):
    """No autocast inside attention when it is to run in float32 (autocast would cast it back to bf16)."""
    if CPU_BF16_ATTENTION_IN_FLOAT32 and q.device.type == "cpu" and torch.is_grad_enabled() and _cpu_autocast_on():
        return torch.autocast("cpu", enabled=False)
    return contextlib.nullcontext()


def attention_inputs(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """q, k, v in float32 for a bf16 training step on a CPU (see above); else as they are."""
    if (
        CPU_BF16_ATTENTION_IN_FLOAT32
        and tensors[0].device.type == "cpu"
        and torch.is_grad_enabled()
        and (tensors[0].dtype == torch.bfloat16 or _cpu_autocast_on())
    ):
        return tuple(z.float() for z in tensors)
    return tensors
