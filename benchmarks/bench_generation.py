"""Generation speed: one prompt at a time without KV cache (the book's loop) vs. batched with KV cache.

The model is the gpt2-small architecture with RANDOM weights, so nothing needs downloading: the
speed is that of the real GPT-2, the text is gibberish. End-of-text is disabled, so both ways
generate exactly --new-tokens tokens for every prompt.

The one-by-one way is slow on a CPU, so it runs on the first --subset prompts only and its time
for all prompts is extrapolated (and labelled so).

    python benchmarks/bench_generation.py                                # 110 x 256 tokens, subset 8
    python benchmarks/bench_generation.py --new-tokens 64 --subset 2     # a quicker run
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
import utils  # noqa: E402
from utils import GPT_CONFIGS, GPTModel, generate, generate_batch  # noqa: E402


def load_prompts(n: int) -> tuple[list[list[int]], str]:
    """Token IDs of the first `n` test-split prompts, exactly as evaluation formats them, and a description."""
    tokenizer = utils.get_tokenizer()
    _, _, test_data = utils.split_dataset(utils.load_instruction_data())
    prompts = [utils.encode_text(utils.format_prompt(entry), tokenizer) for entry in test_data[:n]]
    return prompts, f"{len(prompts)} test-split prompts of instruction-data.json (Alpaca template)"


def machine_line() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} cores ({usable} usable), torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads; load average {load:.2f} at start (other work skews timings)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=110, help="prompts for the batched run (default 110)")
    parser.add_argument("--new-tokens", type=int, default=256, help="tokens generated per prompt (default 256)")
    parser.add_argument("--subset", type=int, default=8,
                        help="prompts for the slow one-by-one run, extrapolated to all (default 8)")
    parser.add_argument("--batch-size", type=int, default=None, help="prompts per batch (default: all at once)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(123)
    cfg = GPT_CONFIGS["gpt2-small"]
    model = GPTModel(cfg).eval()
    n_params = sum(p.numel() for p in model.parameters())
    prompts, source = load_prompts(args.prompts)
    subset = prompts[:min(args.subset, len(prompts))]
    n_new, context = args.new_tokens, cfg["context_length"]
    lengths = [len(p) for p in prompts]

    print(f"Machine: {machine_line()}")
    print(f"Model:   gpt2-small architecture ({n_params / 1e6:.1f}M parameters incl. the untied head) with "
          f"RANDOM weights: measures speed only")
    print(f"Prompts: {source}; {min(lengths)}-{max(lengths)} tokens (mean {sum(lengths) / len(lengths):.0f}); "
          f"{n_new} new tokens each, end-of-text disabled")

    # Warm-up, so one-time setup (allocator, kernels) is not timed.
    generate(model, torch.tensor([prompts[0]]), 2, context, use_cache=False)
    generate_batch(model, prompts[:2], 2, context)

    start = time.perf_counter()
    one_by_one = [generate(model, torch.tensor([p]), n_new, context, use_cache=False)[0, len(p):].tolist()
                  for p in subset]
    seconds_a = time.perf_counter() - start
    rate_a = len(subset) * n_new / seconds_a
    print(f"(a) one by one, no KV cache: measured on {len(subset)} of {len(prompts)} prompts: "
          f"{len(subset) * n_new} tokens in {seconds_a:.1f} s = {rate_a:.2f} tokens/s")
    extrapolated = len(prompts) * n_new / rate_a
    print(f"    EXTRAPOLATED to all {len(prompts)} prompts: {extrapolated:.0f} s ({extrapolated / 3600:.2f} h)")

    start = time.perf_counter()
    batched = generate_batch(model, prompts, n_new, context, batch_size=args.batch_size)
    seconds_b = time.perf_counter() - start
    rate_b = len(prompts) * n_new / seconds_b
    per_batch = args.batch_size or len(prompts)
    print(f"(b) batched ({per_batch} per batch), KV cache: all {len(prompts)} prompts: "
          f"{len(prompts) * n_new} tokens in {seconds_b:.1f} s = {rate_b:.2f} tokens/s")

    same = sum(a == b for a, b in zip(one_by_one, batched))
    print(f"(b)/(a): {rate_b / rate_a:.1f}x the tokens per second; "
          f"(b) gave the same tokens as (a) for {same} of {len(subset)} prompts")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"Peak memory (max RSS): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2:.1f} GiB; "
          f"load average {load:.2f} at the end")


if __name__ == "__main__":
    main()
