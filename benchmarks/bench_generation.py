"""Generation speed: our generate_batch (KV cache) vs. transformers' generate, fp32 and bf16, side by side.

Both models hold the SAME random GPT-2 small weights (transformers writes the checkpoint, our
GPTModel loads it through utils.load_gpt2_weights), so nothing needs downloading: the speed is
that of the real GPT-2, the text is gibberish. Same prompts (the test split, formatted as
evaluation formats them), greedy decoding, all prompts in one left-padded batch, end-of-text
disabled in both, so every prompt gets exactly --new-tokens tokens. The ways take turns, round
after round, so a load spike from other work hits them alike:

    ours fp32       generate_batch(model, prompts, n, 1024)
    ours bf16       generate_batch(..., dtype=torch.bfloat16): the bf16 copy utils makes, made once (in the
                    warm-up) and reused until the weights change, its Linear layers packed and its output head
                    in bf16 with the near-top logits recomputed in float32 (support/fast.py)
    ours bf16 plain (opt-in) the same copy without support/fast.py: made on every call, F.linear's
                    per-call weight reorder, the output head in float32 (what this repository did before)
    hf fp32/bf16    GPT2LMHeadModel.generate(do_sample=False, eos disabled), the model in that dtype

Token agreement compares each way's greedy tokens with ours fp32, prompt by prompt: "identical"
counts prompts whose whole continuation matches; "agree" is the share of tokens before the first
difference (after a difference greedy decoding continues from a different text). Random weights
give flat logits with many near-ties, so a bf16 agreement measured here is a pessimistic bound
for the trained GPT-2.

--textbook K adds the book's loop (generate(use_cache=False), one prompt at a time) on the first
K prompts, extrapolated to all (slow: a few tokens per second).

    python benchmarks/bench_generation.py         # 32 prompts x 48 tokens, 2 rounds: 4 min here (--threads 1, load 5)
    python benchmarks/bench_generation.py --prompts 110 --new-tokens 256 --rounds 1   # notebook 08's size
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch

import utils  # noqa: E402  (common puts the repository on sys.path)
from common import load_both, machine_line, uptime
from utils import generate, generate_batch  # noqa: E402


def load_prompts(n: int) -> list[list[int]]:
    """Token IDs of the first `n` test-split prompts, exactly as evaluation formats them."""
    tokenizer = utils.get_tokenizer()
    _, _, test_data = utils.split_dataset(utils.load_instruction_data())
    return [utils.encode_text(utils.format_prompt(entry), tokenizer) for entry in test_data[:n]]


def hf_generate(model, prompts: list[list[int]], n_new: int, pad_token_id: int = utils.PAD_TOKEN_ID):
    """transformers' greedy generate on a left-padded batch; returns each prompt's new tokens."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(p)
        mask[row, width - len(p) :] = 1
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=n_new,
        min_new_tokens=n_new,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=pad_token_id,
    )
    return out[:, width:].tolist()


def agreement(tokens: list[list[int]], reference: list[list[int]]) -> tuple[int, float]:
    """(prompts with identical tokens, share of tokens before the first difference)."""
    identical, before, total = 0, 0, 0
    for a, b in zip(tokens, reference):
        identical += a == b
        first_diff = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        before, total = before + first_diff, total + len(b)
    return identical, before / max(total, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32, help="test prompts, all in one batch (default 32)")
    parser.add_argument("--new-tokens", type=int, default=48, help="tokens generated per prompt (default 48)")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds of every way (default 2)")
    parser.add_argument(
        "--ways",
        nargs="+",
        default=["ours fp32", "hf fp32", "ours bf16", "hf bf16"],
        choices=["ours fp32", "hf fp32", "ours bf16", "hf bf16", "ours bf16 plain"],
        metavar="WAY",
        help="which ways (default all four; 'ours fp32' is the reference for agreement)",
    )
    parser.add_argument(
        "--textbook",
        type=int,
        default=0,
        metavar="K",
        help="also time the book's uncached one-by-one loop on K prompts (default 0: skip)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"Machine: {machine_line()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        ours, hf32 = load_both(Path(tmp) / "random-gpt2")
        hf16 = copy.deepcopy(hf32).to(torch.bfloat16) if "hf bf16" in args.ways else None
    plain = utils._copy_in_dtype(ours, torch.bfloat16) if "ours bf16 plain" in args.ways else None
    prompts = load_prompts(args.prompts)
    n_new, lengths = args.new_tokens, [len(p) for p in prompts]
    print(
        f"Model: GPT-2 small with RANDOM weights, the same in both (speed only); {len(prompts)} test-split "
        f"prompts, {min(lengths)}-{max(lengths)} tokens, one batch; {n_new} new tokens each, greedy, "
        f"end-of-text disabled",
        flush=True,
    )

    runs = {
        "ours fp32": lambda: generate_batch(ours, prompts, n_new, 1024),
        "ours bf16": lambda: generate_batch(ours, prompts, n_new, 1024, dtype=torch.bfloat16),
        "hf fp32": lambda: hf_generate(hf32, prompts, n_new),
        "hf bf16": lambda: hf_generate(hf16, prompts, n_new),
        "ours bf16 plain": lambda: generate_batch(utils._copy_in_dtype(ours, torch.bfloat16), prompts, n_new, 1024),
    }
    runs = {way: runs[way] for way in args.ways}
    warm_up = {  # one-time setup (allocator, kernels) is not timed
        "ours fp32": lambda: generate_batch(ours, prompts[:2], 2, 1024),
        "ours bf16": lambda: generate_batch(ours, prompts[:2], 2, 1024, dtype=torch.bfloat16),
        "hf fp32": lambda: hf_generate(hf32, prompts[:2], 2),
        "hf bf16": lambda: hf_generate(hf16, prompts[:2], 2),
        "ours bf16 plain": lambda: generate_batch(plain, prompts[:2], 2, 1024),
    }
    for way in runs:
        warm_up[way]()
    seconds: dict[str, list[float]] = {way: [] for way in runs}
    tokens: dict[str, list[list[int]]] = {}
    for r in range(args.rounds):
        for way, run in runs.items():
            start = time.perf_counter()
            tokens[way] = run()
            seconds[way].append(time.perf_counter() - start)
        print(
            f"round {r + 1}/{args.rounds}: "
            + ", ".join(f"{w} {s[-1]:.1f} s" for w, s in seconds.items())
            + f"; {uptime().split('load')[-1].strip()}",
            flush=True,
        )

    reference = tokens.get("ours fp32")
    print(f"\n{'way':<18} {'tokens/s':>9} {'s (median)':>11} {'identical to ours fp32':>23} {'agree':>7}")
    for way, times in seconds.items():
        rate = len(prompts) * n_new / statistics.median(times)
        same, agree = agreement(tokens[way], reference) if reference else (0, float("nan"))
        print(
            f"{way:<18} {rate:>9.1f} {statistics.median(times):>11.1f} {f'{same} of {len(prompts)}':>23} {agree:>7.1%}"
        )
    median = {way: statistics.median(times) for way, times in seconds.items()}
    for a, b in (
        ("hf fp32", "ours fp32"),
        ("hf bf16", "ours bf16"),
        ("ours fp32", "ours bf16"),
        ("ours bf16 plain", "ours bf16"),
        ("hf bf16", "ours bf16 plain"),
    ):
        if a in median and b in median:
            paired = statistics.median(x / y for x, y in zip(seconds[a], seconds[b]))  # load drifts between rounds
            print(
                f"{b} vs {a}: {median[a] / median[b]:.2f}x the tokens per second "
                f"(median of the rounds' own ratios: {paired:.2f}x)"
            )

    head = utils._model_in_dtype(ours, torch.bfloat16).out_head if "ours bf16" in runs else None
    if hasattr(head, "rows_in_float32"):  # support.fast.RescoredHead
        rows = head.rows_rescored + head.rows_in_float32
        print(
            f"ours bf16 output head, over the warm-up and all rounds: {head.rows_rescored} of {rows} token "
            f"choices from its 64 recomputed candidates, {head.rows_in_float32} too close to call (whole float32 "
            f"head)"
        )

    if args.textbook:
        subset = prompts[: args.textbook]
        start = time.perf_counter()
        book = [generate(ours, torch.tensor([p]), n_new, 1024, use_cache=False)[0, len(p) :].tolist() for p in subset]
        rate = len(subset) * n_new / (time.perf_counter() - start)
        same = sum(a == b for a, b in zip(book, reference or []))
        print(
            f"textbook loop (one by one, no KV cache): {rate:.2f} tokens/s on {len(subset)} prompts, "
            f"all {len(prompts)} EXTRAPOLATED: {len(prompts) * n_new / rate:.0f} s; same tokens as ours fp32 "
            f"for {same} of {len(subset)}"
        )
    print(f"end: {uptime()}")


if __name__ == "__main__":
    main()
