"""What evaluating during training costs: one evaluation batch (forward only) against one training step.

gpt2-small architecture with RANDOM weights (speed does not depend on the values), batches of 8
from the real training split. The two take turns, round after round, so a load spike on this
shared machine hits both alike; the ratio is what matters. With E = eval batch time / step time,
evaluating `eval_iter` train + `eval_iter` val batches every `eval_freq` steps adds
2 * eval_iter * E / eval_freq to the training time.

    .venv/bin/python benchmarks/bench_eval_cost.py --rounds 3
"""

from __future__ import annotations

import argparse
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
    os.environ["GPT2_TOKENIZER_DIR"] = str(SHARED_TOKENIZER)

from utils import (  # noqa: E402
    GPT_CONFIGS,
    GPTModel,
    calc_loss_batch,
    calc_loss_loader,
    create_dataloaders,
    create_optimizer,
    get_tokenizer,
    load_instruction_data,
    split_dataset,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after one warm-up round")
    parser.add_argument("--bf16", action="store_true", help="both under bf16 autocast")
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.bf16 else None
    torch.manual_seed(123)
    model = GPTModel(GPT_CONFIGS["gpt2-small"])
    optimizer = create_optimizer(model, lr=5e-5)
    train, val, test = split_dataset(load_instruction_data())
    loader, _, _ = create_dataloaders(train, val, test, get_tokenizer(), batch_size=8)
    batches = iter(loader)
    step_times, eval_times = [], []
    print(
        f"load average at start: {os.getloadavg()[0]:.2f}; {torch.get_num_threads()} threads; "
        f"{'bf16 autocast' if dtype else 'fp32'}"
    )
    for round_ in range(args.rounds + 1):
        inputs, targets = next(batches)
        start = time.perf_counter()
        model.train()
        loss = calc_loss_batch(inputs, targets, model, "cpu", dtype)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step = time.perf_counter() - start
        start = time.perf_counter()
        model.eval()
        calc_loss_loader([(inputs, targets)], model, "cpu", autocast_dtype=dtype)
        evaluation = time.perf_counter() - start
        if round_:  # the first round warms up
            step_times.append(step)
            eval_times.append(evaluation)
        print(f"round {round_}: step {step:.2f} s, eval batch {evaluation:.2f} s" + ("" if round_ else " (warm-up)"))
    ratio = statistics.median(e / s for e, s in zip(eval_times, step_times))
    print(
        f"median step {statistics.median(step_times):.2f} s, eval batch {statistics.median(eval_times):.2f} s, "
        f"eval/step = {ratio:.2f}"
    )
    for eval_freq, eval_iter in ((5, 5), (20, 5), (116, 7)):
        print(f"eval_freq={eval_freq}, eval_iter={eval_iter}: evaluation adds {2 * eval_iter * ratio / eval_freq:.0%}")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
