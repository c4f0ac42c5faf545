"""What the checkpoint checks cost: saving and resuming a gpt2-small training checkpoint, with and without them.

save_checkpoint refuses NaN/infinite values and writes a CRC-32 per tensor; resume_from checks
the checksums, shapes, dtypes and finite values before it loads. This times both against the
same calls with those checks switched off (monkeypatched), taking turns round by round so that a
load spike on this shared machine hits both alike. The model is the gpt2-small architecture with
RANDOM weights after one fused-AdamW step (a checkpoint of ~1.5 GB: weights + two moments).

    .venv/bin/python benchmarks/bench_checkpoint.py              # 3 rounds
    .venv/bin/python benchmarks/bench_checkpoint.py --rounds 5 --model tiny
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import support.checkpoints as checkpoints  # noqa: E402
import utils  # noqa: E402


@contextlib.contextmanager
def checks_off():
    saved = checkpoints._checksum, checkpoints._is_finite, checkpoints._read_checkpoint
    checkpoints._checksum = lambda tensor: 0
    checkpoints._is_finite = lambda tensor: True

    checkpoints._read_checkpoint = _read_raw
    try:
        yield
    finally:
        checkpoints._checksum, checkpoints._is_finite, checkpoints._read_checkpoint = saved


def _read_raw(path):
    """_read_checkpoint without the checksum comparison."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {key: f.get_tensor(key) for key in f.keys()}, f.metadata() or {}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gpt2-small", choices=sorted(utils.GPT_CONFIGS))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = utils.GPTModel(utils.GPT_CONFIGS[args.model])
    optimizer = utils.create_optimizer(model, lr=1e-4)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    optimizer.step()
    state = utils.TrainState(batches_per_epoch=10)
    times = {(what, checks): [] for what in ("save", "resume") for checks in ("checked", "unchecked")}
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parents[1]) as folder:
        path = Path(folder) / "checkpoint.safetensors"
        for _ in range(args.rounds):
            for checks in ("checked", "unchecked"):
                with checks_off() if checks == "unchecked" else contextlib.nullcontext():
                    times["save", checks].append(
                        timed(lambda: checkpoints.save_checkpoint(path, model, optimizer, state))
                    )
                    times["resume", checks].append(
                        timed(lambda: checkpoints.resume_from(path, model, optimizer, state))
                    )
        size = path.stat().st_size
    print(
        f"{args.model}: checkpoint {size / 1e9:.2f} GB, {args.rounds} rounds, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    for what in ("save", "resume"):
        checked, unchecked = (statistics.median(times[what, c]) for c in ("checked", "unchecked"))
        print(f"  {what:6s}  checked {checked:6.2f} s   unchecked {unchecked:6.2f} s   ratio {checked / unchecked:.2f}")


if __name__ == "__main__":
    main()
