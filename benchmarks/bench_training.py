"""Finetuning speed on this machine: fp32 vs. bf16 autocast, and random vs. length-grouped batching.

The model is the gpt2-small architecture with RANDOM weights (speed does not depend on the
values, and nothing needs downloading); the data is the real train split in the Alpaca format,
batch size 8, full finetuning with fused AdamW (create_optimizer, as finetune.py). Four runs:

    random batching  x {fp32, bf16 autocast}
    length-grouped   x {fp32, bf16 autocast}

They take turns step by step (round robin), and every round first times a 2048 x 2048
torch.matmul in each dtype: this machine is shared, and a load spike then hits all runs and
their references alike instead of whichever ran at the time.

Model FLOPs of a batch (B, T), padding included (the hardware computes on padding too):

    6 * N * B * T  +  12 * L * d * B * T^2

N = parameters used in matmuls (the Linear layers of the blocks + the output head; embedding
lookups excluded), L = layers, d = emb_dim. 6N = forward 2N + backward 4N per token; the second
term is attention (QK^T and AV over the full T x T, forward + backward), under 5% here.
ratio = achieved model GFLOP/s / median matmul GFLOP/s of the same dtype. Target: >= 60%.

By default --steps rounds are timed after --warmup untimed ones, and the time per epoch is
extrapolated from the achieved FLOP/s and the epoch's FLOPs (labelled "est."); --full-epoch
runs every batch of the epoch in all four runs instead (116 rounds, over an hour on 2 cores).

    python benchmarks/bench_training.py                  # ~5 min on 2 cores
    python benchmarks/bench_training.py --steps 10       # steadier numbers
    python benchmarks/bench_training.py --full-epoch     # the real thing; long
"""

from __future__ import annotations

import argparse
import copy
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

import utils  # noqa: E402
from utils import (GPT_CONFIGS, GPTModel, bf16_autocast_recommended, calc_loss_batch, create_optimizer,  # noqa: E402
                   length_grouped_loader)


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


DTYPES = {"fp32": None, "bf16": torch.bfloat16}  # None: no autocast, everything float32


def round_robin(model: GPTModel, loaders: dict, rounds: int, warmup: int, matmul_size: int, n_matmul: int,
                cfg: dict) -> dict:
    """Time training steps of every (batching, dtype) in turn, plus each dtype's matmul, round after round.

    Taking turns step by step means a load spike from other work on the machine hits all four
    alike. A step is what train_model does for each batch: calc_loss_batch, backward, fused
    AdamW step. One model per dtype (from the same weights) sees the same batches, so their
    losses are comparable.
    """
    from tqdm import tqdm

    models = {name: copy.deepcopy(model).train() for name in DTYPES}
    optimizers = {name: create_optimizer(m, lr=5e-5) for name, m in models.items()}  # as finetune.py
    batches = {batching: iter(loader) for batching, loader in loaders.items()}
    records: dict[tuple[str, str], list[dict]] = {(b, d): [] for b in loaders for d in DTYPES}
    for r in tqdm(range(warmup + rounds), desc="rounds", unit="round"):
        reference = {name: matmul_gflops(dtype or torch.float32, matmul_size, reps=3)
                     for name, dtype in DTYPES.items()}
        for batching, it in batches.items():
            inputs, targets = next(it)
            for name, dtype in DTYPES.items():
                start = time.perf_counter()
                loss = calc_loss_batch(inputs, targets, models[name], "cpu", autocast_dtype=dtype)
                loss.backward()
                optimizers[name].step()
                optimizers[name].zero_grad(set_to_none=True)
                seconds = time.perf_counter() - start
                if r >= warmup:
                    records[(batching, name)].append({
                        "seconds": seconds, "flops": batch_flops(tuple(inputs.shape), n_matmul, cfg),
                        "positions": inputs.numel(), "real": int((targets != utils.IGNORE_INDEX).sum()),
                        "loss": loss.item(), "matmul": reference[name]})
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per run (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--full-epoch", action="store_true", help="time a whole epoch per run (slow)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--matmul-size", type=int, default=2048, help="n of the reference n x n matmul")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(machine_line())
    cfg = GPT_CONFIGS["gpt2-small"]
    tokenizer = utils.get_tokenizer()
    train, val, test = utils.split_dataset(utils.load_instruction_data())
    random_loader, _, _ = utils.create_dataloaders(train, val, test, tokenizer, batch_size=args.batch_size)
    loaders = {"random": random_loader, "grouped": length_grouped_loader(random_loader, seed=123)}
    torch.manual_seed(0)
    model = GPTModel(cfg)  # RANDOM weights: timing only
    n_matmul = matmul_params(model)
    print(f"gpt2-small architecture, random weights: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
          f"parameters, N = {n_matmul / 1e6:.1f}M in matmuls; {len(train)} train examples, batch size "
          f"{args.batch_size}, full finetuning with fused AdamW")
    print("model FLOPs per batch (B, T) = 6*N*B*T + 12*L*d*B*T^2, padding included")
    adam = optimizer_step_seconds(model)
    print(f"AdamW step over all parameters: {adam['for-loop']:.2f} s default per-tensor loop, "
          f"{adam['fused']:.2f} s fused")
    epochs = {batching: epoch_stats(loader, n_matmul, cfg) for batching, loader in loaders.items()}

    if args.full_epoch:
        rounds, warmup = min(len(loader) for loader in loaders.values()), 0
    else:
        rounds, warmup = args.steps, args.warmup
    print(f"{rounds} timed rounds after {warmup} warm-up; each round: both matmuls, then one step of each "
          f"of the 4 runs\n", flush=True)
    records = round_robin(model, loaders, rounds, warmup, args.matmul_size, n_matmul, cfg)

    tag = "" if args.full_epoch else " (est.)"
    print(f"\n{'batching':<9} {'dtype':<5} {'steps':>5} {'s/step':>7} {'tok/s':>7} {'real tok/s':>10} "
          f"{'GFLOP/s':>8} {'matmul':>7} {'ratio':>6} {'loss':>6} {'epoch':>14}")
    reached = []
    for (batching, name), steps in records.items():
        seconds = sum(s["seconds"] for s in steps)
        achieved = sum(s["flops"] for s in steps) / seconds / 1e9
        matmul = statistics.median(s["matmul"] for s in steps)
        epoch_seconds = seconds if args.full_epoch else epochs[batching]["flops"] / (achieved * 1e9)
        if achieved >= 0.6 * matmul:
            reached.append(f"{batching}/{name}")
        print(f"{batching:<9} {name:<5} {len(steps):>5} {seconds / len(steps):>7.2f} "
              f"{sum(s['positions'] for s in steps) / seconds:>7.0f} {sum(s['real'] for s in steps) / seconds:>10.0f} "
              f"{achieved:>8.1f} {matmul:>7.1f} {achieved / matmul:>6.0%} "
              f"{statistics.mean(s['loss'] for s in steps):>6.2f} {epoch_seconds / 60:>6.1f} min{tag}")
    print("\ntok/s: input positions incl. padding; real tok/s: real (unmasked) target tokens; matmul: median "
          "GFLOP/s of the reference matmul of that dtype; ratio: achieved / matmul (target >= 60%)")
    for batching, e in epochs.items():
        print(f"{batching:<8} batching: padding efficiency {e['efficiency']:.1%}, {e['batches']} batches, "
              f"{e['positions']:,} positions, {e['flops'] / 1e12:.1f} TFLOP per epoch")
    for batching in loaders:
        fp32, bf16 = (sum(s["seconds"] for s in records[(batching, d)]) for d in DTYPES)
        print(f"bf16 autocast vs fp32, {batching} batching: {fp32 / bf16:.2f}x as fast")
    print(f"60% target reached by: {', '.join(reached) or 'none'}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
