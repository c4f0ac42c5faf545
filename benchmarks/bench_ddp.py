"""Training throughput: one process against DistributedDataParallel with 2 processes (gloo), on this machine's CPUs.

All run finetune.py on the same global batch (8 sequences per optimizer step: 8 in one process, or
4 in each of 2 processes). Three ways: one process with 2 threads and DDP with 2 processes of 1
thread each (the same 2 cores), and one process with 1 thread (to tell DDP's effect from threading's).
The model is the tiny one (UNTRAINED, 6.5M parameters): it keeps the benchmark short; speed does not
depend on the weights. The ways take turns, --rounds times each, so a load spike on a shared machine
hits all. tokens/s = real target tokens trained on / seconds in train_model (rank 0's clock), from
each run's metrics.json.

On a machine with 2 cores, expect no speed-up: both ways have the same 2 cores, and DDP adds an
all-reduce of every gradient per step. The point of DDP here is correctness (tests/test_ddp.py); the
speed-up comes with one GPU (or one machine) per process.

    python benchmarks/bench_ddp.py                  # 2 rounds of 20 steps each, a few minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_TOKENIZER = REPO_ROOT.parent / "shared" / "gpt2-tokenizer"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


WAYS = [(1, 2), (2, 1), (1, 1)]  # (processes, threads per process)


def run(processes: int, threads: int, steps: int, out: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LLM_DEVICE": "cpu", "OMP_NUM_THREADS": str(threads)}
    if "GPT2_TOKENIZER_DIR" not in env and (SHARED_TOKENIZER / "encoder.json").exists():
        env["GPT2_TOKENIZER_DIR"] = str(SHARED_TOKENIZER)
    args = [
        "finetune.py",
        "--model",
        "tiny",
        "--bf16",
        "off",
        "--batch-size",
        str(8 // processes),
        "--max-steps",
        str(steps),
        "--eval-freq",
        str(10 * steps),
        "--eval-iter",
        "1",
        "--save-every",
        str(10 * steps),
        "--max-new-tokens",
        "1",
        "--out",
        str(out),
    ]
    launch = [sys.executable]
    if processes > 1:
        launch += [
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={processes}",
            "--master-addr=127.0.0.1",
            f"--master-port={free_port()}",
        ]
    subprocess.run(launch + args, cwd=REPO_ROOT, env=env, check=True, capture_output=True, timeout=1800)
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    return {"tokens": metrics["tokens_seen"], "seconds": metrics["train_seconds"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per run")
    p.add_argument("--rounds", type=int, default=2, help="runs of each way, taking turns")
    args = p.parse_args()
    results: dict[tuple[int, int], list[float]] = {way: [] for way in WAYS}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for processes, threads in WAYS:
                r = run(processes, threads, args.steps, Path(tmp) / f"{processes}x{threads}-{round_}")
                results[processes, threads].append(r["tokens"] / r["seconds"])
                print(
                    f"round {round_ + 1}: {processes} process(es) x {threads} thread(s): {r['tokens']} tokens "
                    f"in {r['seconds']} s = {results[processes, threads][-1]:.0f} tokens/s",
                    flush=True,
                )
    base = statistics.median(results[WAYS[0]])
    print(f"\n| way | tokens/s (median of {args.rounds}) | vs 1 process x 2 threads |\n|---|---|---|")
    for (processes, threads), values in results.items():
        name = f"DDP (gloo), {processes} processes" if processes > 1 else "1 process"
        print(
            f"| {name} x {threads} thread(s) | {statistics.median(values):.0f} | "
            f"{statistics.median(values) / base:.2f}x |"
        )


if __name__ == "__main__":
    main()
