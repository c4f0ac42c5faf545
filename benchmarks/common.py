"""Shared by the benchmark scripts: the machine line, and random GPT-2 weights saved by transformers."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
SHARED_TOKENIZER = REPO_ROOT.parent / "shared" / "gpt2-tokenizer"
if "GPT2_TOKENIZER_DIR" not in os.environ and (SHARED_TOKENIZER / "encoder.json").exists():
    os.environ["GPT2_TOKENIZER_DIR"] = str(SHARED_TOKENIZER)  # as tests/conftest.py does

import support.precision  # noqa: E402
import utils  # noqa: E402


def matmul_gflops(dtype: torch.dtype, n: int = 2048, reps: int = 3) -> float:
    """Median GFLOP/s of an n x n @ n x n torch.matmul in `dtype`: the ceiling a run is compared with."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def uptime() -> str:
    """`uptime`'s load averages (1, 5, 15 min): other work on the machine skews every timing."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


def machine_line() -> str:
    cpu = "unknown CPU"
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    bf16 = sorted(support.precision.cpu_flags() & {"avx512_bf16", "amx_bf16"}) or ["no native bf16"]
    return (
        f"{cpu}, {os.cpu_count()} cores ({usable} usable), {'/'.join(bf16)}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; uptime: {uptime()}"
    )


def random_gpt2_checkpoint(folder: Path, seed: int = 0) -> Path:
    """A GPT-2 small checkpoint with RANDOM weights, written by transformers (save_pretrained, safetensors).

    Both our GPTModel (through utils.load_gpt2_weights) and transformers' GPT2LMHeadModel load
    it, so the two run the very same weights. Reused if present.
    """
    path = Path(folder) / "model.safetensors"
    if not path.exists():
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(seed)
        GPT2LMHeadModel(GPT2Config()).save_pretrained(folder, safe_serialization=True)
    return path


def load_both(folder: Path, dtype: torch.dtype = torch.float32, hf_kwargs: dict | None = None):
    """(ours, transformers') GPT-2 small, eval mode, with the same random weights from random_gpt2_checkpoint(folder).

    hf_kwargs: config overrides for transformers (e.g. dropout 0, as our GPT-2 configs have).
    """
    from transformers import GPT2LMHeadModel

    path = random_gpt2_checkpoint(folder)
    ours = utils.build_gpt2("gpt2-small", weights_path=path).to(dtype)
    theirs = GPT2LMHeadModel.from_pretrained(
        folder, dtype=dtype, attn_implementation="sdpa", **(hf_kwargs or {})
    ).eval()
    return ours, theirs
