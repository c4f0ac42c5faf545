"""What a DPO step costs on this machine: time and peak memory, with a reference model or precomputed log-probs.

    .venv/bin/python benchmarks/bench_dpo.py                      # gpt2-small and gpt2-medium, 3 timed steps each
    .venv/bin/python benchmarks/bench_dpo.py --models gpt2-small --steps 5

RANDOM weights (the cost does not depend on their values); random token IDs shaped like our preference batches
(`--pairs` pairs of a 50-token prompt with a 20- and a 40-token answer, so 8 rows of 91 positions by default).
Each (model, variant) runs in its own process, so that its peak resident memory (ru_maxrss) is its own:
- "reference model": policy + frozen reference in memory, a reference forward pass every step;
- "precomputed": the reference's log-probs stored once (utils.precompute_reference_logprobs), the reference
  freed before the policy is built, so the peak is the training step's.
Time per step: the two ways take turns in the "reference model" process (the median of each, after a warm-up
step; AdamW, float32), so load from other work hits both alike.
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

import utils
from common import REPO_ROOT, machine_line

VARIANTS = ("reference model", "precomputed")


def fake_pairs(n_pairs: int, seed: int = 0) -> utils.PreferenceDataset:
    generator = torch.Generator().manual_seed(seed)
    dataset = utils.PreferenceDataset([], tokenizer=None)
    for _ in range(n_pairs):
        prompt, chosen, rejected = (torch.randint(0, 50000, (n,), generator=generator).tolist() for n in (50, 20, 40))
        dataset.examples.append(
            utils.PreferenceExample(
                utils.TokenizedExample(prompt + chosen, 50), utils.TokenizedExample(prompt + rejected, 50)
            )
        )
    return dataset


def dpo_step(policy, reference, batch, optimizer) -> float:
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss, _, _ = utils.dpo_loss_batch(policy, reference, batch, "cpu")
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def measure(model_name: str, variant: str, n_pairs: int, steps: int) -> dict:
    """One process, one variant, for its peak memory; the "reference model" process also times both ways.

    Timing: steps with the reference's forward pass and steps with precomputed log-probs take turns in the
    same process, so load from other work hits both alike. Memory: each variant's own process.
    """
    dataset = fake_pairs(n_pairs)
    torch.manual_seed(0)
    reference = utils.GPTModel(utils.GPT_CONFIGS[model_name]).eval().requires_grad_(False)
    start = time.perf_counter()
    utils.precompute_reference_logprobs(reference, dataset, "cpu", batch_size=n_pairs)
    precompute_seconds = time.perf_counter() - start
    with_logprobs = utils.preference_collate_fn(dataset.examples)
    if variant == "precomputed":  # the reference is freed before the policy is built: the peak is training's
        del reference
        reference = None
    torch.manual_seed(0)
    policy = utils.GPTModel(utils.GPT_CONFIGS[model_name])  # the same weights as the reference
    optimizer = utils.create_optimizer(policy, lr=1e-6, weight_decay=0.0)
    times = {"reference model": [], "precomputed": []}
    without_logprobs = with_logprobs._replace(reference_logprobs=None)
    dpo_step(policy, reference, with_logprobs, optimizer)  # warm-up: allocations, AdamW's state
    for _ in range(steps if variant == "reference model" else 0):
        times["reference model"].append(dpo_step(policy, reference, without_logprobs, optimizer))
        times["precomputed"].append(dpo_step(policy, None, with_logprobs, optimizer))
    return {
        "model": model_name,
        "variant": variant,
        "precompute_seconds": precompute_seconds,
        "step_seconds": {way: statistics.median(t) for way, t in times.items() if t},
        "rows": tuple(with_logprobs.inputs.shape),
        "parameters": utils.count_parameters(policy),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
    }


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
    print(
        f"DPO step, RANDOM weights, {args.pairs} pairs per step; time: median of {args.steps} steps of each way, "
        "taking turns in one process after a warm-up; memory: peak RSS of a process per way\n"
    )
    print(f"{'model':12} {'way':16} {'s/step':>7} {'peak RSS GB':>12}")
    for model_name in args.models:
        results = {}
        for variant in VARIANTS:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--one",
                    model_name,
                    variant,
                    "--pairs",
                    str(args.pairs),
                    "--steps",
                    str(args.steps),
                ],
                capture_output=True,
                text=True,
                cwd=REPO_ROOT,
                check=False,
            )
            if out.returncode:
                print(f"{model_name} {variant}: failed\n{out.stderr[-2000:]}")
                return 1
            results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        times = results["reference model"]["step_seconds"]
        for way in VARIANTS:
            print(f"{model_name:12} {way:16} {times[way]:7.2f} {results[way]['peak_rss_gb']:12.2f}")
        first = results["reference model"]
        print(
            f"{model_name:12} {'ratio pre/ref':16} {times['precomputed'] / times['reference model']:7.2f} "
            f"{results['precomputed']['peak_rss_gb'] / first['peak_rss_gb']:12.2f}   "
            f"({first['parameters'] / 1e6:.0f}M parameters; rows x positions {first['rows']}; precomputing "
            f"{args.pairs} pairs took {first['precompute_seconds']:.1f} s)"
        )
    print(f"\nafter: {machine_line().split('uptime: ')[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
