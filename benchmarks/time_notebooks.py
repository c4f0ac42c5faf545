"""End-to-end times of notebook 07's training and notebook 08's test-set generation, GPT-2 small.

The notebooks' own calls with their own settings, on GPT-2 small with RANDOM weights (written
by transformers, loaded with utils.build_gpt2 as the real ones are): the cost does not depend on
the values. 07: create_dataloaders(batch_size=8), bf16 autocast when bf16_autocast_recommended,
create_optimizer(lr=5e-5, weight_decay=0.1), train_model(num_epochs=2, eval_freq=20, eval_iter=5)
with its checkpoint (written to a temporary folder). 08: generate_responses on the 110 test
entries, max_new_tokens=256, end-of-text stops a response as in the notebook; random weights
almost never produce it, so nearly every response is the full 256 tokens (the count is printed).

    python benchmarks/time_notebooks.py               # both (README gives the measured times)
    python benchmarks/time_notebooks.py --only 08     # generation only
    python benchmarks/time_notebooks.py --only 07 --epochs 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import support.precision  # noqa: E402
import utils  # noqa: E402  (common puts the repository on sys.path)
from common import machine_line, random_gpt2_checkpoint, uptime


def time_07(weights: Path, checkpoint: Path, epochs: int) -> None:
    tokenizer = utils.get_tokenizer()
    train_data, val_data, test_data = utils.split_dataset(utils.load_instruction_data())
    train_loader, val_loader, _ = utils.create_dataloaders(train_data, val_data, test_data, tokenizer, batch_size=8)
    model = utils.build_gpt2("gpt2-small", weights_path=weights)
    autocast_dtype = torch.bfloat16 if support.precision.bf16_autocast_recommended("cpu") else None
    optimizer = utils.create_optimizer(model, lr=5e-5, weight_decay=0.1)
    print(
        f"07: {len(train_data)} examples, {len(train_loader)} batches per epoch, {epochs} epochs, "
        f"bf16 autocast {'on' if autocast_dtype else 'off'}; start: {uptime()}",
        flush=True,
    )
    start = time.perf_counter()
    history = utils.train_model(
        model,
        train_loader,
        val_loader,
        optimizer,
        "cpu",
        num_epochs=epochs,
        eval_freq=20,
        eval_iter=5,
        autocast_dtype=autocast_dtype,  # notebook 07's settings
        checkpoint_path=checkpoint,
    )
    seconds = time.perf_counter() - start
    print(
        f"07: train_model took {seconds / 60:.1f} min for {epochs} epochs ({history.steps[-1]} steps, "
        f"{history.tokens_seen[-1]:,} real target tokens, evaluations and checkpoints included); "
        f"end: {uptime()}",
        flush=True,
    )


def time_08(weights: Path, max_new_tokens: int) -> None:
    tokenizer = utils.get_tokenizer()
    _, _, test_data = utils.split_dataset(utils.load_instruction_data())
    model = utils.build_gpt2("gpt2-small", weights_path=weights)
    print(f"08: {len(test_data)} test entries, max_new_tokens={max_new_tokens}; start: {uptime()}", flush=True)
    start = time.perf_counter()
    responses = utils.generate_responses(model, test_data, tokenizer, max_new_tokens=max_new_tokens)
    seconds = time.perf_counter() - start
    tokens = sum(len(tokenizer.encode(r["model_response"], allowed_special="all")) for r in responses)
    print(
        f"08: generate_responses took {seconds / 60:.1f} min for {len(responses)} responses (about {tokens:,} "
        f"tokens re-encoded from their text; full length would be {len(responses) * max_new_tokens:,}); "
        f"end: {uptime()}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["07", "08"], default=None)
    parser.add_argument("--epochs", type=int, default=2, help="notebook 07 trains 2")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="notebook 08 generates up to 256")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_line(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        weights = random_gpt2_checkpoint(Path(tmp) / "random-gpt2")
        if args.only in (None, "07"):
            time_07(weights, Path(tmp) / "checkpoint.safetensors", args.epochs)
        if args.only in (None, "08"):
            time_08(weights, args.max_new_tokens)


if __name__ == "__main__":
    main()
