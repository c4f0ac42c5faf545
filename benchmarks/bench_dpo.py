"""What a DPO step costs on this machine: time and peak memory, with a reference model or precomputed log-probs.

    .venv/bin/python benchmarks/bench_dpo.py                      # gpt2-small and gpt2-medium, 3 timed steps each
    .venv/bin/python benchmarks/bench_dpo.py --models gpt2-small --steps 5

RANDOM weights (the cost does not depend on their values); random token IDs shaped like our preference batches
(`--pairs` pairs of a 50-token prompt with a 20- and a 40-token answer, so 8 rows of 91 positions by default).
Each (model, variant) runs in its own process, so that its peak resident memory (ru_maxrss) is its own:
- "reference model": policy + frozen reference in memory, a reference forward pass every step;
- "precomputed": the reference's log-probs stored once (utils.precompute_reference_logprobs), the reference
  freed before the policy is built, so the peak is the training step's.
Time per step is the median of the timed steps after one warm-up step (AdamW, float32).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from common import REPO_ROOT, machine_line

import utils

VARIANTS = ("reference model", "precomputed")


def fake_pairs(n_pairs: int, seed: int = 0) -> utils.PreferenceDataset:
    generator = torch.Generator().manual_seed(seed)
    dataset = utils.PreferenceDataset([], tokenizer=None)
    for _ in range(n_pairs):
        prompt, chosen, rejected = (torch.randint(0, 50000, (n,), generator=generator).tolist() for n in (50, 20, 40))
        dataset.examples.append(utils.PreferenceExample(utils.TokenizedExample(prompt + chosen, 50),
                                                        utils.TokenizedExample(prompt + rejected, 50)))
    return dataset


def measure(model_name: str, variant: str, n_pairs: int, steps: int) -> dict:
    """One process, one variant: build, (precompute,) then time `steps` DPO steps after a warm-up."""
    dataset = fake_pairs(n_pairs)
    torch.manual_seed(0)
    reference = utils.GPTModel(utils.GPT_CONFIGS[model_name]).eval().requires_grad_(False)
    precompute_seconds = None
    if variant == "precomputed":  # the reference's log-probs first, then the reference is freed
        start = time.perf_counter()
        utils.precompute_reference_logprobs(reference, dataset, "cpu", batch_size=n_pairs)
        precompute_seconds = time.perf_counter() - start
        del reference
        reference = None
    torch.manual_seed(0)
    policy = utils.GPTModel(utils.GPT_CONFIGS[model_name])  # the same weights as the reference
    batch = utils.preference_collate_fn(dataset.examples)
    optimizer = utils.create_optimizer(policy, lr=1e-6, weight_decay=0.0)
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss, _, _ = utils.dpo_loss_batch(policy, reference, batch, "cpu")
        loss.backward()
        optimizer.step()
        if step:  # the first step is a warm-up (allocations, AdamW's state)
            times.append(time.perf_counter() - start)
    return {"model": model_name, "variant": variant, "step_seconds": statistics.median(times),
            "precompute_seconds": precompute_seconds, "rows": tuple(batch.inputs.shape),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            "parameters": utils.count_parameters(policy)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["gpt2-small", "gpt2-medium"])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], args.pairs, args.steps)))
        return 0
    print(machine_line())
    print(f"DPO step, RANDOM weights, {args.pairs} pairs per step, median of {args.steps} steps after a warm-up\n")
    print(f"{'model':12} {'variant':16} {'s/step':>7} {'peak RSS GB':>12} {'precompute s':>13}")
    for model_name in args.models:
        results = {}
        for variant in VARIANTS:
            out = subprocess.run([sys.executable, __file__, "--one", model_name, variant, "--pairs", str(args.pairs),
                                  "--steps", str(args.steps)], capture_output=True, text=True, cwd=REPO_ROOT)
            if out.returncode:
                print(f"{model_name} {variant}: failed\n{out.stderr[-2000:]}")
                return 1
            results[variant] = r = json.loads(out.stdout.strip().splitlines()[-1])
            pre = "" if r["precompute_seconds"] is None else f"{r['precompute_seconds']:.1f}"
            print(f"{model_name:12} {variant:16} {r['step_seconds']:7.2f} {r['peak_rss_gb']:12.2f} {pre:>13}")
        with_ref, pre = results["reference model"], results["precomputed"]
        print(f"{model_name:12} {'ratio pre/ref':16} {pre['step_seconds'] / with_ref['step_seconds']:7.2f} "
              f"{pre['peak_rss_gb'] / with_ref['peak_rss_gb']:12.2f}   "
              f"({with_ref['parameters'] / 1e6:.0f}M parameters; rows x positions {with_ref['rows']})")
    print(f"\nafter: {machine_line().split('uptime: ')[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
