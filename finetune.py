"""Instruction-finetune GPT-2 from the command line, end to end.

data -> split -> loaders -> model -> finetuning -> loss plot -> test-set responses -> evaluation

    python finetune.py --smoke --out runs/smoke          # offline, UNTRAINED tiny model, well under a minute
    python finetune.py --model gpt2-medium --epochs 2 --out runs/medium
    python finetune.py --model gpt2-small --lora-rank 16 --lora-alpha 16 --mask-prompt --out runs/lora

Everything lands in --out, each file written atomically:
    loss.png                 training and validation loss
    test-responses.json      the test entries, each with the model's "model_response"
    metrics.json             exact match and ROUGE-L on the test set, plus the training numbers
    model.safetensors        the finetuned weights (LoRA merged in)
    checkpoint.safetensors   weights + optimizer state, for --resume after an interruption
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from utils import (DEFAULT_DATA_PATH, GPT_CONFIGS, OLLAMA_CHAT_URL, OLLAMA_JUDGE_MODEL, PROMPT_STYLES, DatasetError,
                   GPTModel, OllamaUnavailableError, TokenizerUnavailableError, WeightsUnavailableError, judge_responses, apply_lora, atomic_write_json, bf16_autocast_recommended, build_gpt2,
                   count_parameters, create_dataloaders, create_optimizer, evaluate_responses, generate_responses,
                   get_device, get_tokenizer, length_grouped_loader, load_instruction_data, merge_lora, plot_losses,
                   save_checkpoint, seed_everything, split_dataset, train_model)

# --smoke: the tiny model on a few examples; the whole pipeline offline in seconds.
SMOKE = {"train": 48, "val": 8, "test": 5, "batch_size": 4, "max_steps": 6, "eval_freq": 2, "eval_iter": 1,
         "max_new_tokens": 12}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", choices=sorted(GPT_CONFIGS), default="gpt2-small",
                   help="GPT-2 size with OpenAI's weights; 'tiny' is UNTRAINED (random weights, offline)")
    p.add_argument("--weights", type=Path, help="a local model.safetensors instead of downloading")
    p.add_argument("--data", default=str(DEFAULT_DATA_PATH), help="instruction data: JSON file path or URL")
    p.add_argument("--style", choices=sorted(PROMPT_STYLES), default="alpaca", help="prompt template")
    p.add_argument("--mask-prompt", action="store_true", help="train on the response tokens only")
    p.add_argument("--lora-rank", type=int, default=0, help="LoRA rank; 0 = full finetuning")
    p.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA scaling numerator (alpha / rank)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=5e-5, help="AdamW learning rate (LoRA usually wants ~1e-4 or more)")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--max-length", type=int, default=1024, help="cut longer training sequences (tokens)")
    p.add_argument("--group-by-length", action="store_true", help="batch examples of similar length (less padding)")
    p.add_argument("--bf16", choices=["auto", "on", "off"], default="auto",
                   help="bfloat16 autocast; auto = where the hardware has bf16 (see bf16_autocast_recommended)")
    p.add_argument("--gen-bf16", action="store_true",
                   help="generate the test answers with a bfloat16 copy of the model (faster on CPUs with native "
                        "bf16; greedy tokens can differ from float32's on near-ties)")
    p.add_argument("--eval-freq", type=int, default=5, help="evaluate every N optimizer steps")
    p.add_argument("--eval-iter", type=int, default=5, help="batches per evaluation")
    p.add_argument("--save-every", type=int, default=50, help="checkpoint every N optimizer steps")
    p.add_argument("--max-steps", type=int, help="stop after N optimizer steps")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")
    p.add_argument("--max-new-tokens", type=int, default=256, help="response length limit at test time")
    p.add_argument("--gen-batch-size", type=int, default=8, help="test prompts generated at once")
    p.add_argument("--judge", action="store_true", help="also score the responses with an LLM judge served by Ollama")
    p.add_argument("--judge-model", default=OLLAMA_JUDGE_MODEL, help="the Ollama model that judges")
    p.add_argument("--judge-url", default=OLLAMA_CHAT_URL, help="the Ollama server's /api/chat address")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--out", type=Path, default=Path("runs/finetune"), help="output directory")
    p.add_argument("--smoke", action="store_true",
                   help="tiny UNTRAINED model, a few examples and steps: checks the pipeline offline")
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "grad_accum", "max_length", "eval_freq", "save_every", "gen_batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.lora_rank < 0:
        p.error("--lora-rank must be 0 (off) or more")
    if args.smoke:
        if args.model != "tiny":
            print(f"--smoke: using the tiny model instead of {args.model}")
        args.model, args.weights, args.epochs = "tiny", None, 1
        args.batch_size, args.max_steps = SMOKE["batch_size"], SMOKE["max_steps"]
        args.eval_freq, args.eval_iter = SMOKE["eval_freq"], SMOKE["eval_iter"]
        args.max_new_tokens = min(args.max_new_tokens, SMOKE["max_new_tokens"])
        args.lr = max(args.lr, 1e-3)  # visible progress in a handful of steps
    return args


def load_splits(args) -> tuple[list[dict], list[dict], list[dict]]:
    # The split has its own fixed seed: runs with different --seed are scored on the same test set.
    train, val, test = split_dataset(load_instruction_data(args.data))
    if args.smoke:
        train, val, test = train[:SMOKE["train"]], val[:SMOKE["val"]], test[:SMOKE["test"]]
    if not (train and val and test):
        raise DatasetError(f"{args.data}: {len(train)}/{len(val)}/{len(test)} train/val/test entries; "
                           "each split needs at least one (use a larger dataset)")
    print(f"data: {len(train)} train, {len(val)} val, {len(test)} test entries from {args.data}")
    return train, val, test


def load_model(args) -> GPTModel:
    """The GPT-2 to finetune. Raises WeightsUnavailableError (with how-to-fix text) if weights are missing."""
    if args.model == "tiny" and args.weights is None:
        model = GPTModel(GPT_CONFIGS["tiny"])  # seeded by seed_everything: the same every run
        print(f"model: tiny, UNTRAINED (random weights, {count_parameters(model) / 1e6:.1f}M parameters): "
              "its responses are gibberish; this only exercises the pipeline")
        return model
    try:
        model = build_gpt2(args.model, weights_path=args.weights)
    except ImportError as exc:  # huggingface_hub missing
        raise WeightsUnavailableError(f"Could not download {args.model}: {exc}. Install the requirements "
                                      "(make setup) or pass --weights /path/to/model.safetensors.") from None
    except ValueError as exc:  # a --weights file for another GPT-2 size
        raise WeightsUnavailableError(str(exc)) from None
    print(f"model: {args.model} with pretrained weights ({count_parameters(model) / 1e6:.0f}M parameters)")
    return model


def run(args: argparse.Namespace) -> dict:
    seed_everything(args.seed)
    out: Path = args.out
    train_data, val_data, test_data = load_splits(args)
    tokenizer = get_tokenizer()

    context_length = GPT_CONFIGS[args.model]["context_length"]
    max_length = min(args.max_length, context_length)
    if max_length < args.max_length:
        print(f"--max-length {args.max_length} exceeds the model's context: using {max_length}")
    train_loader, val_loader, _ = create_dataloaders(
        train_data, val_data, test_data, tokenizer, batch_size=args.batch_size, style=args.style,
        mask_prompt=args.mask_prompt, allowed_max_length=max_length, seed=args.seed)
    if args.group_by_length:
        train_loader = length_grouped_loader(train_loader, seed=args.seed)

    model = load_model(args)
    if args.lora_rank > 0:
        apply_lora(model, rank=args.lora_rank, alpha=args.lora_alpha)
    n_trainable = count_parameters(model, trainable_only=True)
    print(f"trainable parameters: {n_trainable:,} of {count_parameters(model):,}"
          + (f" (LoRA rank {args.lora_rank}, alpha {args.lora_alpha:g})" if args.lora_rank > 0 else ""))

    device = get_device()
    use_bf16 = args.bf16 == "on" or (args.bf16 == "auto" and bf16_autocast_recommended(device))
    print(f"device: {device}, {'bfloat16 autocast' if use_bf16 else 'float32'}")
    optimizer = create_optimizer(model, lr=args.lr, weight_decay=args.weight_decay)
    start = time.perf_counter()
    history = train_model(model, train_loader, val_loader, optimizer, device, num_epochs=args.epochs,
                          eval_freq=args.eval_freq, eval_iter=args.eval_iter, grad_accum_steps=args.grad_accum,
                          autocast_dtype=torch.bfloat16 if use_bf16 else None,
                          checkpoint_path=out / "checkpoint.safetensors", resume=args.resume, seed=args.seed,
                          save_every=args.save_every, max_steps=args.max_steps)
    train_seconds = time.perf_counter() - start
    untrained = args.model == "tiny" and args.weights is None
    plot_losses(history, save_path=out / "loss.png",
                title=f"{args.model}{' (UNTRAINED start)' if untrained else ''}, {args.style}"
                      + (f", LoRA r={args.lora_rank}" if args.lora_rank > 0 else ""))

    if args.lora_rank > 0:
        merge_lora(model)
    save_checkpoint(out / "model.safetensors", model)

    entries = generate_responses(model, test_data, tokenizer, args.style, args.max_new_tokens, args.gen_batch_size,
                                 dtype=torch.bfloat16 if args.gen_bf16 else None)
    atomic_write_json(out / "test-responses.json", entries)

    metrics = {
        "model": args.model, "untrained_start": untrained, "style": args.style, "mask_prompt": args.mask_prompt,
        "lora": {"rank": args.lora_rank, "alpha": args.lora_alpha} if args.lora_rank > 0 else None,
        "trainable_parameters": n_trainable, "seed": args.seed, "autocast": "bfloat16" if use_bf16 else None,
        "train_examples": len(train_data), "test_examples": len(test_data),
        "steps": history.steps[-1] if history.steps else 0,
        "tokens_seen": history.tokens_seen[-1] if history.tokens_seen else 0,
        "final_train_loss": history.train_losses[-1] if history.train_losses else None,
        "final_val_loss": history.val_losses[-1] if history.val_losses else None,
        "train_seconds": round(train_seconds, 1),
        "evaluation": evaluate_responses(entries),  # exact match, ROUGE-L
    }
    ev = metrics["evaluation"]
    print(f"test set: exact match {ev['exact_match']:.1%}, ROUGE-L {ev['rouge_l']:.3f} over {ev['n']} entries")
    if args.judge:
        metrics["judge"] = run_judge(entries, args)
    atomic_write_json(out / "metrics.json", metrics)
    print(f"wrote {out}/: loss.png, test-responses.json, metrics.json, model.safetensors, checkpoint.safetensors")
    return metrics


def run_judge(entries: list[dict], args: argparse.Namespace) -> dict:
    """LLM-judge scores; without a reachable Ollama server, the reason (the other results still count)."""
    try:
        judged = judge_responses(entries, model=args.judge_model, url=args.judge_url, style=args.style)
    except OllamaUnavailableError as exc:
        print(f"judge skipped: {exc}", file=sys.stderr)
        return {"model": args.judge_model, "error": str(exc)}
    mean = "no parsable score" if judged["mean"] is None else f"{judged['mean']:.1f}"
    print(f"judge {judged['model']}: mean {mean} over {judged['n_scored']} of {judged['n']} responses; "
          f"{judged['unparsed']['count']} replies without a usable score")
    return {key: judged[key] for key in ("model", "n", "n_scored", "mean", "scores", "unparsed")}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except (DatasetError, TokenizerUnavailableError, WeightsUnavailableError) as exc:
        print(exc, file=sys.stderr)  # each message already says what went wrong and how to fix it
        if isinstance(exc, WeightsUnavailableError):
            print("  (finetune.py: that is --weights /path/to/model.safetensors, or --model tiny)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted: rerun with --resume --out {args.out} to continue from the last checkpoint",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
