"""Finetuning speed on this machine: fp32 vs. bf16 autocast, and random vs. length-grouped batching.

The model is the gpt2-small architecture with RANDOM weights (speed does not depend on the
values, and nothing needs downloading); the data is the real train split in the Alpaca format,
batch size 8, full finetuning with AdamW. Four runs start from the same weights:

    random batching  x {fp32, bf16 autocast}
    length-grouped   x {fp32, bf16 autocast}

Model FLOPs per optimizer step, summed over its batches of shape (B, T), padding included (the
hardware computes on padding too):

    6 * N * B * T  +  12 * L * d * B * T^2

N = parameters used in matmuls (the Linear layers of the blocks + the output head; embedding
lookups excluded), L = layers, d = emb_dim. 6N = forward 2N + backward 4N per token; the second
term is attention (QK^T and AV over the full T x T, forward + backward), under 5% here.
Achieved GFLOP/s is set against a large square torch.matmul of the same dtype, timed in the same
run just before each training run (same load). Target: >= 60% of it.

By default each run times --steps optimizer steps after --warmup untimed ones, and the time per
epoch is extrapolated from the measured seconds per FLOP (labelled so); --full-epoch measures
a whole epoch instead (slow on a CPU: about 116 steps per run).

    python benchmarks/bench_training.py                  # ~6 min on 2 cores
    python benchmarks/bench_training.py --steps 3        # quicker
    python benchmarks/bench_training.py --full-epoch     # the real thing; long
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
SHARED_TOKENIZER = REPO_ROOT.parent / "shared" / "gpt2-tokenizer"
if "GPT2_TOKENIZER_DIR" not in os.environ and (SHARED_TOKENIZER / "encoder.json").exists():
    os.environ["GPT2_TOKENIZER_DIR"] = str(SHARED_TOKENIZER)  # as tests/conftest.py does

# STAGING ONLY: at merge, import these from utils.
sys.path.insert(0, "/work/staging")
from model_section import GPT_CONFIGS, GPTModel  # noqa: E402
from train_section import (bf16_autocast_recommended, calc_loss_batch, create_optimizer,  # noqa: E402
                           length_grouped_loader, train_model)

import utils  # noqa: E402


def machine_line() -> str:
    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} cores ({usable} usable), torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, bf16 autocast recommended: {bf16_autocast_recommended('cpu')}; "
            f"load average {load:.2f} at start (other work on the machine skews timings)")


def matmul_gflops(dtype: torch.dtype, n: int = 2048, reps: int = 8) -> float:
    """Median GFLOP/s of an n x n @ n x n torch.matmul in `dtype`."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def optimizer_step_seconds(model: GPTModel) -> dict[str, float]:
    """Seconds per AdamW step over all of `model`'s parameters: torch's default per-tensor loop vs. fused."""
    model = copy.deepcopy(model)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    result = {}
    for name, kwargs in (("for-loop", {}), ("fused", {"fused": True})):
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, **kwargs)
        optimizer.step()  # creates the state
        times = []
        for _ in range(3):
            start = time.perf_counter()
            optimizer.step()
            times.append(time.perf_counter() - start)
        result[name] = statistics.median(times)
        del optimizer
    return result


def matmul_params(model: GPTModel) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def batch_flops(batch_shape: tuple[int, int], n_matmul: int, cfg: dict) -> float:
    b, t = batch_shape
    return 6 * n_matmul * b * t + 12 * cfg["n_layers"] * cfg["emb_dim"] * b * t * t


def epoch_stats(loader, n_matmul: int, cfg: dict) -> dict:
    """Padding efficiency, positions and model FLOPs of one whole epoch (no model involved)."""
    real = positions = flops = 0
    for inputs, targets in loader:
        real += int((targets != utils.IGNORE_INDEX).sum())
        positions += inputs.numel()
        flops += batch_flops(tuple(inputs.shape), n_matmul, cfg)
    return {"real": real, "positions": positions, "flops": flops, "efficiency": real / positions,
            "batches": len(loader)}


def timed_run(model: GPTModel, loader, batch_size: int, dtype: torch.dtype | None, steps: int | None,
              warmup: int, n_matmul: int, cfg: dict) -> dict:
    """Train a copy of `model`; time the optimizer steps after `warmup` (steps=None: the whole epoch, all timed)."""
    model = copy.deepcopy(model)
    optimizer = create_optimizer(model, lr=5e-5)  # fused AdamW, as finetune.py uses
    # (time, real targets, positions, loss) at the start and after every step
    marks: list[tuple[float, int, int, float]] = []

    def record(state) -> None:
        marks.append((time.perf_counter(), state.tokens_seen, state.positions_seen, state.last_loss))

    warmup = 0 if steps is None else warmup
    marks.append((time.perf_counter(), 0, 0, float("nan")))
    train_model(model, loader, [], optimizer, "cpu", num_epochs=1, eval_freq=10**9, eval_iter=0,
                autocast_dtype=dtype, max_steps=None if steps is None else warmup + steps, callback=record)
    timed = marks[warmup:]
    flops = 0.0
    for (_, _, before, _), (_, _, after, _) in zip(timed, timed[1:]):
        # One batch of batch_size rows per step (always full: the train loaders drop the last one).
        flops += batch_flops((batch_size, (after - before) // batch_size), n_matmul, cfg)
    losses = [m[3] for m in timed[1:]]
    return {"seconds": timed[-1][0] - timed[0][0], "steps": len(timed) - 1, "flops": flops,
            "real": timed[-1][1] - timed[0][1], "positions": timed[-1][2] - timed[0][2],
            "loss": statistics.mean(losses)}


def interleaved_ab(model: GPTModel, loader, pairs: int) -> dict[str, list[float]]:
    """Seconds per step of fp32 and bf16 taking turns on the same batches: a load spike hits both alike."""
    runs = {name: (copy.deepcopy(model).train(), dtype) for name, dtype in (("fp32", None), ("bf16", torch.bfloat16))}
    optimizers = {name: create_optimizer(m, lr=5e-5) for name, (m, _) in runs.items()}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for inputs, targets in itertools.islice(loader, pairs + 1):  # the first pair warms up
        for name, (m, dtype) in runs.items():
            start = time.perf_counter()
            calc_loss_batch(inputs, targets, m, "cpu", autocast_dtype=dtype).backward()
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
            times[name].append(time.perf_counter() - start)
    return {name: t[1:] for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps per run (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    parser.add_argument("--full-epoch", action="store_true", help="time a whole epoch per run (slow)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--ab-pairs", type=int, default=4, help="interleaved fp32/bf16 step pairs (default 4)")
    parser.add_argument("--matmul-size", type=int, default=2048, help="n of the reference n x n matmul")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.warmup < 1 and not args.full_epoch:
        parser.error("--warmup must be >= 1 (the first step has no start mark)")

    print(machine_line())
    cfg = GPT_CONFIGS["gpt2-small"]
    tokenizer = utils.get_tokenizer()
    train, val, test = utils.split_dataset(utils.load_instruction_data())
    random_loader, _, _ = utils.create_dataloaders(train, val, test, tokenizer, batch_size=args.batch_size)
    grouped_loader = length_grouped_loader(random_loader, seed=123)
    torch.manual_seed(0)
    model = GPTModel(cfg)  # RANDOM weights: timing only
    n_matmul = matmul_params(model)
    print(f"gpt2-small architecture, random weights: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
          f"parameters, N = {n_matmul / 1e6:.1f}M in matmuls; {len(train)} train examples, batch size "
          f"{args.batch_size}, AdamW, full finetuning")
    print("FLOPs per batch (B, T) = 6*N*B*T + 12*L*d*B*T^2 (padding included)\n")

    adam = optimizer_step_seconds(model)
    print(f"AdamW step over all parameters: {adam['for-loop']:.2f} s default per-tensor loop, "
          f"{adam['fused']:.2f} s fused (used below)\n")
    epochs = {"random": epoch_stats(random_loader, n_matmul, cfg),
              "grouped": epoch_stats(grouped_loader, n_matmul, cfg)}
    rows = []
    steps = None if args.full_epoch else args.steps
    for batching, loader in (("random", random_loader), ("grouped", grouped_loader)):
        for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            reference = matmul_gflops(dtype or torch.float32, args.matmul_size)
            print(f"{batching} batching, {name}: matmul {reference:.0f} GFLOP/s; training...", flush=True)
            result = timed_run(model, loader, args.batch_size, dtype, steps, args.warmup, n_matmul, cfg)
            achieved = result["flops"] / result["seconds"] / 1e9
            epoch = epochs[batching]
            epoch_seconds = (result["seconds"] if args.full_epoch
                             else result["seconds"] / result["flops"] * epoch["flops"])
            rows.append({"batching": batching, "dtype": name, **result, "matmul": reference,
                         "achieved": achieved, "epoch_seconds": epoch_seconds})

    print(f"\n{'batching':<9} {'dtype':<5} {'steps':>5} {'s/step':>7} {'tok/s':>7} {'real tok/s':>10} "
          f"{'GFLOP/s':>8} {'matmul':>7} {'ratio':>6} {'loss':>6} {'epoch':>12}")
    for r in rows:
        tag = "" if args.full_epoch else " (est.)"
        print(f"{r['batching']:<9} {r['dtype']:<5} {r['steps']:>5} {r['seconds'] / r['steps']:>7.2f} "
              f"{r['positions'] / r['seconds']:>7.0f} {r['real'] / r['seconds']:>10.0f} {r['achieved']:>8.1f} "
              f"{r['matmul']:>7.1f} {r['achieved'] / r['matmul']:>6.0%} {r['loss']:>6.2f} "
              f"{r['epoch_seconds'] / 60:>6.1f} min{tag}")
    print("\ntok/s: input positions incl. padding; real tok/s: real (unmasked) target tokens; "
          "ratio: achieved model GFLOP/s / matmul GFLOP/s of the same dtype (target >= 60%)")
    for batching, e in epochs.items():
        print(f"{batching:<8} batching: padding efficiency {e['efficiency']:.1%}, {e['batches']} batches, "
              f"{e['positions']:,} positions, {e['flops'] / 1e12:.1f} TFLOP per epoch")
    reached = [f"{r['batching']}/{r['dtype']}" for r in rows if r["achieved"] >= 0.6 * r["matmul"]]
    print(f"60% target reached by: {', '.join(reached) or 'none'}")
    ab = interleaved_ab(model, random_loader, args.ab_pairs)
    fp32, bf16 = statistics.median(ab["fp32"]), statistics.median(ab["bf16"])
    print(f"\ninterleaved fp32/bf16 steps on the same {args.ab_pairs} batches: median {fp32:.2f} s vs {bf16:.2f} s "
          f"per step, bf16 autocast {fp32 / bf16:.2f}x as fast")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
