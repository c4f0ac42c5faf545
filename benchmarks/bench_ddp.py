"""Training throughput: one process against DistributedDataParallel with 2 processes (gloo), on this machine's CPUs.

Both run finetune.py on the same global batch (8 sequences per optimizer step: 8 in one process, or
4 in each of 2 processes) with the same total number of threads (2 in one process, 1 in each of 2).
The model is the tiny one (UNTRAINED, 6.5M parameters): it keeps the benchmark short; speed does not
depend on the weights. The two take turns, --rounds times each, so a load spike on a shared machine
hits both. tokens/s = real target tokens trained on / seconds in train_model (rank 0's clock), from
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


def run(processes: int, steps: int, out: Path, threads: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LLM_DEVICE": "cpu", "OMP_NUM_THREADS": str(threads // processes)}
    if "GPT2_TOKENIZER_DIR" not in env and (SHARED_TOKENIZER / "encoder.json").exists():
        env["GPT2_TOKENIZER_DIR"] = str(SHARED_TOKENIZER)
    args = ["finetune.py", "--model", "tiny", "--bf16", "off", "--batch-size", str(8 // processes),
            "--max-steps", str(steps), "--eval-freq", str(10 * steps), "--eval-iter", "1",
            "--save-every", str(10 * steps), "--max-new-tokens", "1", "--out", str(out)]
    launch = [sys.executable]
    if processes > 1:
        launch += ["-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--master-addr=127.0.0.1",
                   f"--master-port={free_port()}"]
    subprocess.run(launch + args, cwd=REPO_ROOT, env=env, check=True, capture_output=True, timeout=1800)
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    return {"tokens": metrics["tokens_seen"], "seconds": metrics["train_seconds"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per run")
    p.add_argument("--rounds", type=int, default=2, help="runs of each way, taking turns")
    p.add_argument("--threads", type=int, default=2, help="threads in all, split over the processes")
    args = p.parse_args()
    results: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for processes in (1, 2):
                r = run(processes, args.steps, Path(tmp) / f"{processes}-{round_}", args.threads)
                results[processes].append(r["tokens"] / r["seconds"])
                print(f"round {round_ + 1}: {processes} process(es): {r['tokens']} tokens in {r['seconds']} s "
                      f"= {results[processes][-1]:.0f} tokens/s", flush=True)
    one, two = statistics.median(results[1]), statistics.median(results[2])
    print(f"\n| way | tokens/s (median of {args.rounds}) |\n|---|---|\n| 1 process, {args.threads} threads | "
          f"{one:.0f} |\n| DDP, 2 processes x {args.threads // 2} thread(s), gloo | {two:.0f} |\n"
          f"| ratio DDP / 1 process | {two / one:.2f}x |")


if __name__ == "__main__":
    main()
