"""Instruction-finetune GPT-2 from the command line, end to end.

data -> split -> loaders -> model -> finetuning -> loss plot -> test-set responses -> evaluation

    python finetune.py --smoke --out runs/smoke          # offline, UNTRAINED tiny model, well under a minute
    python finetune.py --model gpt2-medium --epochs 2 --out runs/medium
    python finetune.py --model gpt2-small --lora-rank 16 --lora-alpha 16 --mask-prompt --out runs/lora
    torchrun --nproc_per_node=2 finetune.py --smoke --out runs/ddp   # DistributedDataParallel, one process per GPU/CPU
    python finetune.py --dpo runs/small/model.safetensors --out runs/small-dpo   # preference tuning (notebook 09)
    python finetune.py --smoke --dpo runs/smoke/model.safetensors --out runs/smoke-dpo

Everything lands in --out, each file written atomically:
    loss.png                 training and validation loss
    test-responses.json      the test entries, each with the model's "model_response"
    metrics.json             exact match and ROUGE-L on the test set, plus the training numbers
    model.safetensors        the finetuned weights (LoRA merged in)
    checkpoint.safetensors   weights + optimizer state, for --resume after an interruption

When something goes wrong:
    - --out is checked before training (a folder, writable, room for a checkpoint); a folder that
      holds a run is never overwritten without --resume (continue it) or --overwrite (replace it).
    - Ctrl-C or SIGTERM: the last checkpoint stays; rerun the same command with --resume.
    - A NaN or infinite loss stops the run; the checkpoint on disk is the last good one.
    - --resume with other settings than the checkpoint's is refused, listing the differences.
    - Errors are one message and exit code 1; --debug (or LLM_DEBUG=1) shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from support.batching import length_grouped_loader
from support.checkpoints import CheckpointError, save_checkpoint
from support.ddp import DistributedRun, DistributedStall, exit_process
from support.files import FolderInUseError, OutputFolderLock, atomic_write_json, remove_stale_temporaries
from support.ollama import OLLAMA_CHAT_URL, OLLAMA_JUDGE_MODEL, OllamaUnavailableError
from support.plots import plot_losses
from support.precision import bf16_autocast_recommended
from support.tokenizer_files import TokenizerUnavailableError
from support.trainer import TrainingError, TrainingRun, seed_everything
from utils import (
    DEFAULT_DATA_PATH,
    DEFAULT_PREFERENCE_PATH,
    GPT_CONFIGS,
    IGNORE_INDEX,
    PROMPT_STYLES,
    DatasetError,
    GPTModel,
    PreferenceDataset,
    WeightsUnavailableError,
    apply_lora,
    build_gpt2,
    count_parameters,
    create_dataloaders,
    create_optimizer,
    evaluate_responses,
    generate_responses,
    get_device,
    get_tokenizer,
    judge_responses,
    load_checkpoint,
    load_instruction_data,
    load_preference_data,
    merge_lora,
    precompute_reference_logprobs,
    preference_collate_fn,
    split_dataset,
    split_preference_data,
    train_dpo,
    train_model,
)

# --smoke: the tiny model on a few examples; the whole pipeline offline in seconds.
SMOKE = {
    "train": 48,
    "val": 8,
    "test": 5,
    "batch_size": 4,
    "max_steps": 6,
    "eval_freq": 2,
    "eval_iter": 1,
    "max_new_tokens": 12,
    "lr": 1e-3,
}  # a higher learning rate: visible progress in a handful of steps
DEFAULT_LR = 5e-5
DOWNLOAD_DEADLINE = 120.0  # seconds for the whole --data download (the course data is ~1 MB)
JUDGE_TIMEOUT = 120.0  # seconds for each judge request as a whole
DDP_TIMEOUT = 600.0  # seconds; see support/ddp.py
# --dpo: preference tuning from a finetuned model (notebook 09); --smoke takes a few pairs and steps.
DPO_SMOKE = {"train": 32, "val": 8, "batch_size": 2, "max_steps": 8, "eval_freq": 4, "lr": 3e-3}
DPO_LR, DPO_STEPS = 5e-6, 60
DPO_OUTPUT_NAMES = ("dpo-model.safetensors", "dpo-metrics.json", "dpo-checkpoint.safetensors")
CHECKPOINT_NAME = "checkpoint.safetensors"
OUTPUT_NAMES = ("loss.png", "test-responses.json", "metrics.json", "model.safetensors", CHECKPOINT_NAME)
DEBUG_ENV = "LLM_DEBUG"  # set to 1: errors show their traceback (like --debug)
# Errors whose message already says what went wrong and how to fix it: shown as they are.
EXPECTED_ERRORS = (
    DatasetError,
    TokenizerUnavailableError,
    WeightsUnavailableError,
    CheckpointError,
    TrainingError,
    OllamaUnavailableError,
    DistributedStall,
    OSError,
)


class UsageError(Exception):
    """A problem with the command line or the output folder, found before any training."""


class Terminated(BaseException):
    """SIGTERM (`timeout`, Slurm, `docker stop`): unwinds like Ctrl-C, so no half-written file is left."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every flag's default, unless its help text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if "default" in (action.help or "") or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action)


def _number(kind: type, minimum: float, strict: bool = False, maximum: float | None = None):
    """An argparse type: a finite `kind` that is at least (or, if strict, above) `minimum`, at most `maximum`."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        if maximum is not None and not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"{text} is out of range: from {minimum:g} to {maximum}")
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"{text} must be a finite number {'>' if strict else '>='} {minimum:g}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=_HelpFormatter)
    count, at_least_0 = _number(int, 1), _number(int, 0)
    p.add_argument(
        "--model",
        choices=sorted(GPT_CONFIGS),
        default="gpt2-small",
        help="GPT-2 size with OpenAI's weights; 'tiny' is UNTRAINED (random weights, offline)",
    )
    p.add_argument(
        "--weights",
        type=Path,
        help="a local model.safetensors instead of downloading (default: download OpenAI's weights)",
    )
    p.add_argument(
        "--data",
        default=str(DEFAULT_DATA_PATH),
        help=f"instruction data: JSON file path or URL (default: {DEFAULT_DATA_PATH.name} beside this script)",
    )
    p.add_argument("--style", choices=sorted(PROMPT_STYLES), default="alpaca", help="prompt template")
    p.add_argument("--mask-prompt", action="store_true", help="train on the response tokens only")
    p.add_argument("--lora-rank", type=at_least_0, default=0, help="LoRA rank; 0 = full finetuning")
    p.add_argument(
        "--lora-alpha", type=_number(float, 0, strict=True), default=16.0, help="LoRA scaling numerator (alpha / rank)"
    )
    p.add_argument("--epochs", type=count, default=2, help="passes over the training split")
    p.add_argument(
        "--lr",
        type=_number(float, 0, strict=True),
        help=f"AdamW learning rate, a positive number (default: {DEFAULT_LR:g}; {SMOKE['lr']:g} with "
        "--smoke; LoRA usually wants ~1e-4 or more)",
    )
    p.add_argument("--weight-decay", type=_number(float, 0), default=0.1, help="AdamW weight decay")
    p.add_argument("--batch-size", type=count, default=8, help="examples per micro-batch")
    p.add_argument("--grad-accum", type=count, default=1, help="micro-batches per optimizer step")
    p.add_argument(
        "--max-length",
        type=count,
        help="cut longer training sequences to this many tokens (default: the model's context length)",
    )
    p.add_argument("--group-by-length", action="store_true", help="batch examples of similar length (less padding)")
    p.add_argument(
        "--bf16",
        choices=["auto", "on", "off"],
        default="auto",
        help="bfloat16 autocast; auto = where the hardware has bf16 (see bf16_autocast_recommended)",
    )
    p.add_argument(
        "--gen-bf16",
        action="store_true",
        help="generate the test answers with a bfloat16 copy of the model (faster on CPUs with native "
        "bf16; greedy tokens can differ from float32's on near-ties)",
    )
    p.add_argument(
        "--eval-freq",
        type=count,
        default=20,
        help="evaluate every N optimizer steps (each evaluation costs about 2 x eval-iter x 0.26 steps)",
    )
    p.add_argument("--eval-iter", type=at_least_0, default=5, help="batches per evaluation (0: no evaluation)")
    p.add_argument(
        "--save-every",
        type=count,
        help="also checkpoint every N optimizer steps (default: at the end of each epoch only; "
        "a GPT-2 small checkpoint is about 2 GB)",
    )
    p.add_argument(
        "--save-every-minutes",
        type=_number(float, 0, strict=True),
        help="also checkpoint when this many minutes have passed since the last one",
    )
    p.add_argument("--max-steps", type=count, help="stop after N optimizer steps (default: no limit)")
    p.add_argument("--resume", action="store_true", help=f"continue the run in --out from its {CHECKPOINT_NAME}")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out (its files are deleted)")
    p.add_argument("--max-new-tokens", type=count, default=256, help="response length limit at test time")
    p.add_argument("--gen-batch-size", type=count, default=8, help="test prompts generated at once")
    p.add_argument("--judge", action="store_true", help="also score the responses with an LLM judge served by Ollama")
    p.add_argument("--judge-model", default=OLLAMA_JUDGE_MODEL, help="the Ollama model that judges")
    p.add_argument("--judge-url", default=OLLAMA_CHAT_URL, help="the Ollama server's /api/chat address")
    p.add_argument(
        "--seed",
        type=_number(int, 0, maximum=2**32 - 1),
        default=123,
        help="seeds the model's start, data order and dropout (0 to 4294967295)",
    )
    seconds = _number(float, 0, strict=True)
    p.add_argument(
        "--download-deadline",
        type=seconds,
        default=DOWNLOAD_DEADLINE,
        help="seconds a --data URL download may take in all (a server that drips is cut off)",
    )
    p.add_argument(
        "--judge-timeout",
        type=seconds,
        default=JUDGE_TIMEOUT,
        help="seconds each --judge request may take in all (the first one loads the model)",
    )
    p.add_argument(
        "--ddp-timeout",
        type=seconds,
        default=DDP_TIMEOUT,
        help="under torchrun: seconds a process waits for the others at each exchange before the job "
        "stops (a stopped or crashed process)",
    )
    p.add_argument("--out", type=Path, default=Path("runs/finetune"), help="output directory")
    p.add_argument(
        "--dpo",
        type=Path,
        metavar="FINETUNED",
        help="instead of finetuning: preference-tune this finetuned model (model.safetensors of a run) "
        "with DPO on --preference-data (notebook 09); --max-steps, --lr, --batch-size (pairs), "
        "--eval-freq apply",
    )
    p.add_argument(
        "--preference-data",
        type=Path,
        default=DEFAULT_PREFERENCE_PATH,
        help="preference pairs for --dpo, split as --data is",
    )
    p.add_argument(
        "--beta",
        type=_number(float, 0, strict=True),
        default=0.1,
        help="DPO's beta: how far --dpo may move the model from where it starts",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny UNTRAINED model, a few examples and steps: checks the pipeline offline",
    )
    p.add_argument("--debug", action="store_true", help=f"show the traceback of an error (or set {DEBUG_ENV}=1)")
    return p


def _given_flags(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The destinations of the flags written on the command line (not left at their default)."""
    quiet = argparse.ArgumentParser(add_help=False, allow_abbrev=parser.allow_abbrev)
    for action in parser._actions:
        if action.option_strings and not isinstance(action, argparse._HelpAction):
            kwargs = {"dest": action.dest, "default": argparse.SUPPRESS}
            if action.nargs == 0:
                kwargs["action"] = "store_true"
            quiet.add_argument(*action.option_strings, **kwargs)
    return set(vars(quiet.parse_known_args(argv)[0]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if args.resume and args.overwrite:
        p.error("--resume continues the run in --out, --overwrite replaces it: choose one")
    if args.smoke:
        given = _given_flags(p, argv)
        if args.weights is not None:
            p.error("--smoke trains the UNTRAINED tiny model: drop --weights (or --smoke)")
        if args.model != "tiny":
            print(f"--smoke: using the tiny model instead of {args.model}")
        # --smoke's small settings, except those given on the command line: those are honoured.
        smoke = {
            "model": "tiny",
            "epochs": 1,
            "batch_size": SMOKE["batch_size"],
            "max_steps": SMOKE["max_steps"],
            "eval_freq": SMOKE["eval_freq"],
            "eval_iter": SMOKE["eval_iter"],
            "max_new_tokens": min(args.max_new_tokens, SMOKE["max_new_tokens"]),
        }
        for name, value in smoke.items():
            if name == "model" or name not in given:
                setattr(args, name, value)
    if args.dpo is not None and args.lr is None:
        args.lr = DPO_SMOKE["lr"] if args.smoke else DPO_LR
    if args.lr is None:  # an --lr the user gave is always honoured, with --smoke too
        args.lr = SMOKE["lr"] if args.smoke else DEFAULT_LR
    return args


# --- the output folder: checked before anything is trained ---


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _not_a_file(path: Path) -> str | None:
    """What `path` is when something is there but not a regular file (a checkpoint must be one), else None."""
    if not os.path.lexists(path) or path.is_file():
        return None
    if path.is_symlink() and not path.exists():
        return "a symbolic link that leads nowhere (dangling, or a loop)"
    return "a folder" if path.is_dir() else "not a regular file (a FIFO, socket or device?)"


def check_out_folder(
    args: argparse.Namespace, main_process: bool = True, names: tuple[str, ...] = OUTPUT_NAMES
) -> OutputFolderLock | None:
    """Make sure --out can take this run's files; refuse to replace another run's without --resume/--overwrite.

    The main process takes the folder's lock (returned; the caller releases it when the run ends) before it
    looks at the folder: a second run in the same --out is refused instead of deleting the first one's files.
    """
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder: choose another --out")
    created = out  # the topmost folder this run creates, removed again if the run fails before writing into it
    while not created.parent.exists() and created.parent != created:
        created = created.parent
    args.created_out = None if created.exists() else created
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise UsageError(f"--out {out} cannot hold the results ({exc.strerror or exc}): choose another --out") from None
    lock = None
    if main_process:
        try:
            lock = OutputFolderLock(out).acquire()
        except (FolderInUseError, OSError) as exc:
            raise UsageError(f"--out {exc}") from None
    try:
        _check_out_contents(args, names)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    if main_process:
        for stale in remove_stale_temporaries(out, names):
            print(f"removed {stale}, left by an interrupted save")
    return lock


def _check_out_contents(args: argparse.Namespace, names: tuple[str, ...] = OUTPUT_NAMES) -> None:
    out: Path = args.out
    inputs = {
        "--weights": args.weights,
        "--data": None if str(args.data).startswith(("http://", "https://")) else Path(args.data),
    }
    for flag, path in inputs.items():
        for name in names:
            if path is not None and _same_file(path, out / name):
                raise UsageError(
                    f"{flag} {path} is {out / name}, a file this run writes: copy it out of --out "
                    "first, or choose another --out"
                )
    previous = [name for name in names if os.path.lexists(out / name)]
    if previous and not (args.resume or args.overwrite):
        raise UsageError(
            f"--out {out} already holds a run ({', '.join(previous)}): pass --resume to continue it, "
            "--overwrite to replace it, or choose another --out"
        )
    checkpoint = out / names[-1]  # each run's tuple of output names ends with its checkpoint
    if args.resume and (what := _not_a_file(checkpoint)):
        raise UsageError(
            f"--resume: {checkpoint} is {what}, not a checkpoint: remove it, or start afresh with --overwrite"
        )
    if args.resume and not os.path.lexists(checkpoint) and previous:
        raise UsageError(
            f"--resume: --out {out} holds a run's results ({', '.join(previous)}) but no "
            f"{checkpoint.name} to continue from: pass --overwrite to start afresh, or choose another "
            "--out"
        )


def weights_bytes(model: torch.nn.Module) -> int:
    """The size of the model's weights (a tied tensor counted once)."""
    unique = {t.data_ptr(): t for t in model.state_dict().values()}
    return sum(t.numel() * t.element_size() for t in unique.values())


def check_room(out: Path, model: torch.nn.Module, reclaimable: int = 0) -> None:
    """Two checkpoints side by side (the next one is written beside the last) must fit on the disk of --out.

    A checkpoint holds the weights and AdamW's two moments per trainable weight; the final model, written
    while one checkpoint stays, is smaller than a second checkpoint. `reclaimable`: bytes already on the disk
    that count towards it (files --overwrite deletes, the checkpoint --resume continues from).
    """
    moments = 2 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    needed = int(1.05 * 2 * (weights_bytes(model) + moments))  # 5% for headers, metadata and the file system
    free = shutil.disk_usage(out).free + reclaimable
    if free < needed:
        raise UsageError(
            f"--out {out}: {free / 1e6:,.0f} MB free, but two checkpoints side by side need about "
            f"{needed / 1e6:,.0f} MB: free some space or choose another --out"
        )


# --- the run ---


def load_splits(args) -> tuple[list[dict], list[dict], list[dict]]:
    # The split has its own fixed seed: runs with different --seed are scored on the same test set.
    train, val, test = split_dataset(load_instruction_data(args.data, download_deadline=args.download_deadline))
    if args.smoke:
        train, val, test = train[: SMOKE["train"]], val[: SMOKE["val"]], test[: SMOKE["test"]]
    if not (train and val and test):
        raise DatasetError(
            f"{args.data}: {len(train)}/{len(val)}/{len(test)} train/val/test entries; "
            "each split needs at least one (use a larger dataset)"
        )
    print(f"data: {len(train)} train, {len(val)} val, {len(test)} test entries from {args.data}")
    return train, val, test


def data_fingerprint(*splits: list[dict]) -> str:
    """sha256 of the entries this run uses: a resume on other data is refused."""
    return hashlib.sha256(json.dumps(splits, sort_keys=True).encode()).hexdigest()


def drop_untrainable(train_loader, args) -> None:
    """Leave out training examples with no real target left (--mask-prompt and a short --max-length).

    Such an example has no loss: a step made only of them would update the model with nothing learnt.
    """
    dataset = train_loader.dataset
    keep = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sequences were cut": expected here, and counted below
        for start in range(0, len(dataset), 256):
            _, targets = train_loader.collate_fn([dataset[i] for i in range(start, min(start + 256, len(dataset)))])
            keep += (targets != IGNORE_INDEX).any(dim=1).tolist()
    if all(keep):
        return
    if not any(keep):
        raise UsageError(
            f"no training example keeps a single response token within --max-length "
            f"{args.max_length}{' with --mask-prompt' if args.mask_prompt else ''}: nothing to train "
            "on. Raise --max-length."
        )
    print(
        f"{keep.count(False)} of {len(keep)} training examples keep no response token within --max-length "
        f"{args.max_length}: they are left out of training"
    )
    dataset.data = [entry for entry, k in zip(dataset.data, keep) if k]
    dataset.examples = [example for example, k in zip(dataset.examples, keep) if k]


def load_model(args) -> GPTModel:
    """The GPT-2 to finetune. Raises WeightsUnavailableError (with how-to-fix text) if weights are missing."""
    if args.model == "tiny" and args.weights is None:
        model = GPTModel(GPT_CONFIGS["tiny"])  # seeded by seed_everything: the same every run
        print(
            f"model: tiny, UNTRAINED (random weights, {count_parameters(model) / 1e6:.1f}M parameters): "
            "its responses are gibberish; this only exercises the pipeline"
        )
        return model
    try:
        model = build_gpt2(args.model, weights_path=args.weights)
    except ImportError as exc:  # huggingface_hub missing
        raise WeightsUnavailableError(
            f"Could not download {args.model}: {exc}. Install the requirements "
            "(make setup) or pass --weights /path/to/model.safetensors."
        ) from None
    except ValueError as exc:  # a --weights file for another GPT-2 size, or a damaged one
        raise WeightsUnavailableError(str(exc)) from None
    print(f"model: {args.model} with pretrained weights ({count_parameters(model) / 1e6:.0f}M parameters)")
    return model


def run_settings(
    args: argparse.Namespace, max_length: int, use_bf16: bool, data_sha256: str, world_size: int = 1
) -> dict:
    """Everything besides seed, batches and accumulation (checked anyway) that makes two runs differ.

    The batch is the global one (--batch-size x processes): 2 processes x 4 resume as 1 x 8 (README).
    """
    return {
        "model": args.model,
        "weights": str(args.weights) if args.weights else None,
        "data_sha256": data_sha256,
        "style": args.style,
        "mask_prompt": args.mask_prompt,
        "max_length": max_length,
        "group_by_length": args.group_by_length,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "global_batch_size": args.batch_size * world_size,
        "lora_rank": args.lora_rank,
        "lora_alpha": args.lora_alpha if args.lora_rank > 0 else None,
        "bf16": use_bf16,
    }


def run(args: argparse.Namespace, ddp: DistributedRun | None = None) -> dict:
    """The whole pipeline; returns the metrics. Under torchrun (ddp), only rank 0 goes past training."""
    lock = check_out_folder(args, main_process=ddp is None or ddp.is_main)
    try:
        return _run(args, ddp)
    finally:
        if lock is not None:
            lock.release()


def _run(args: argparse.Namespace, ddp: DistributedRun | None = None) -> dict:
    out: Path = args.out
    world_size = 1 if ddp is None else ddp.world_size
    try:
        device = get_device() if ddp is None else ddp.device
    except RuntimeError as exc:
        raise UsageError(f"LLM_DEVICE={os.environ.get('LLM_DEVICE')!r} is not a device torch knows ({exc})") from None
    seed_everything(args.seed)
    with ddp.local_main_first() if ddp else contextlib.nullcontext():  # a download happens once per node
        train_data, val_data, test_data = load_splits(args)
        tokenizer = get_tokenizer()

    context_length = GPT_CONFIGS[args.model]["context_length"]
    max_length = min(args.max_length or context_length, context_length)
    if args.max_length is not None and max_length < args.max_length:
        print(f"--max-length {args.max_length} exceeds the model's context: using {max_length}")
    args.max_length = max_length
    if len(train_data) < args.batch_size * world_size:
        raise UsageError(
            f"{len(train_data)} training examples make not one batch of --batch-size {args.batch_size}"
            f"{f' x {world_size} processes' if ddp else ''}: use a smaller --batch-size or more data"
        )
    train_loader, val_loader, _ = create_dataloaders(
        train_data,
        val_data,
        test_data,
        tokenizer,
        batch_size=args.batch_size * world_size,
        style=args.style,
        mask_prompt=args.mask_prompt,
        allowed_max_length=max_length,
        seed=args.seed,
    )
    drop_untrainable(train_loader, args)
    if len(train_loader) == 0:
        raise UsageError(f"too few trainable examples left for one batch of --batch-size {args.batch_size}")
    if args.group_by_length:
        train_loader = length_grouped_loader(train_loader, seed=args.seed)
    if ddp is not None:  # --batch-size is per process
        train_loader, val_loader = ddp.shard(train_loader), ddp.shard(val_loader)
        print(
            f"DistributedDataParallel: {world_size} processes ({ddp.backend}); each optimizer step sees "
            f"{args.batch_size} x {world_size} processes x {args.grad_accum} accumulated = "
            f"{args.batch_size * world_size * args.grad_accum} sequences"
        )

    with ddp.local_main_first() if ddp else contextlib.nullcontext():
        model = load_model(args)
    if args.lora_rank > 0:
        apply_lora(model, rank=args.lora_rank, alpha=args.lora_alpha)
    n_trainable = count_parameters(model, trainable_only=True)
    print(
        f"trainable parameters: {n_trainable:,} of {count_parameters(model):,}"
        + (f" (LoRA rank {args.lora_rank}, alpha {args.lora_alpha:g})" if args.lora_rank > 0 else "")
    )
    replaced = [out / name for name in OUTPUT_NAMES if args.overwrite and (out / name).exists()]
    continued = [out / CHECKPOINT_NAME] if args.resume and (out / CHECKPOINT_NAME).is_file() else []
    check_room(out, model, reclaimable=sum(path.stat().st_size for path in replaced + continued))
    for path in replaced:  # every check passed: only now is the previous run given up
        if ddp is None or ddp.is_main:
            path.unlink(missing_ok=True)
    if replaced:
        print(f"--overwrite: removed the previous run's {', '.join(path.name for path in replaced)}")

    use_bf16 = args.bf16 == "on" or (args.bf16 == "auto" and bf16_autocast_recommended(device))
    print(f"device: {device}, {'bfloat16 autocast' if use_bf16 else 'float32'}, learning rate {args.lr:g}")
    optimizer = create_optimizer(model, lr=args.lr, weight_decay=args.weight_decay)
    if ddp is not None and args.resume:
        ddp.check_resume(out / CHECKPOINT_NAME)
    # Checkpoints, resume, timed saves, max_steps and DDP reach the course loop through its hooks;
    # under DDP the hooks wrap the model, and `model` stays the plain GPTModel rank 0 merges, saves and uses.
    hooks = TrainingRun(
        out / CHECKPOINT_NAME,
        resume=args.resume,
        seed=args.seed,
        save_every=args.save_every,
        save_every_minutes=args.save_every_minutes,
        max_steps=args.max_steps,
        settings=run_settings(
            args, max_length, use_bf16, data_fingerprint(train_data, val_data, test_data), world_size
        ),
        ddp=ddp,
    )
    start = time.perf_counter()
    history = train_model(
        model,
        train_loader,
        val_loader,
        optimizer,
        device,
        num_epochs=args.epochs,
        eval_freq=args.eval_freq,
        eval_iter=args.eval_iter,
        grad_accum_steps=args.grad_accum,
        autocast_dtype=torch.bfloat16 if use_bf16 else None,
        hooks=hooks,
    )
    train_seconds = time.perf_counter() - start
    if ddp is not None and not ddp.is_main:
        return {}  # generation, evaluation and files: rank 0 alone (its model holds the same weights)
    untrained = args.model == "tiny" and args.weights is None
    plot_losses(
        history,
        save_path=out / "loss.png",
        title=f"{args.model}{' (UNTRAINED start)' if untrained else ''}, {args.style}"
        + (f", LoRA r={args.lora_rank}" if args.lora_rank > 0 else ""),
    )

    if args.lora_rank > 0:
        merge_lora(model)
    save_checkpoint(out / "model.safetensors", model)

    entries = generate_responses(
        model,
        test_data,
        tokenizer,
        args.style,
        args.max_new_tokens,
        args.gen_batch_size,
        dtype=torch.bfloat16 if args.gen_bf16 else None,
    )
    atomic_write_json(out / "test-responses.json", entries)

    metrics = {
        "model": args.model,
        "untrained_start": untrained,
        "style": args.style,
        "mask_prompt": args.mask_prompt,
        "lora": {"rank": args.lora_rank, "alpha": args.lora_alpha} if args.lora_rank > 0 else None,
        "trainable_parameters": n_trainable,
        "seed": args.seed,
        "autocast": "bfloat16" if use_bf16 else None,
        "lr": args.lr,
        "train_examples": len(train_loader.dataset),
        "test_examples": len(test_data),
        "steps": history.steps[-1] if history.steps else 0,
        "tokens_seen": history.tokens_seen[-1] if history.tokens_seen else 0,
        "final_train_loss": history.train_losses[-1] if history.train_losses else None,
        "final_val_loss": history.val_losses[-1] if history.val_losses else None,
        "train_seconds": round(train_seconds, 1),
        **({"processes": world_size} if ddp is not None else {}),  # --batch-size is per process
        "evaluation": evaluate_responses(entries),  # exact match, ROUGE-L
    }
    ev = metrics["evaluation"]
    print(f"test set: exact match {ev['exact_match']:.1%}, ROUGE-L {ev['rouge_l']:.3f} over {ev['n']} entries")
    atomic_write_json(out / "metrics.json", metrics)  # written before the judge: its failure loses nothing
    if args.judge:
        metrics["judge"] = run_judge(entries, args)
        atomic_write_json(out / "metrics.json", metrics)
    print(f"wrote {out}/: {', '.join(OUTPUT_NAMES)}")
    return metrics


def run_dpo(args: argparse.Namespace) -> dict:
    """Preference-tune the finetuned model in --dpo with DPO (notebook 09); returns the metrics.

    The reference is the model as loaded; its log-probs of every pair are computed once and the copy freed,
    so training holds one model. Writes dpo-model.safetensors (weights) and dpo-metrics.json (held-out
    loss, reward margin and preference accuracy at every evaluation); dpo-checkpoint.safetensors for --resume.
    """
    lock = check_out_folder(args, names=DPO_OUTPUT_NAMES)
    try:
        return _run_dpo(args)
    finally:
        lock.release()


def _run_dpo(args: argparse.Namespace) -> dict:
    out: Path = args.out
    device = get_device()
    seed_everything(args.seed)
    pairs = load_preference_data(args.preference_data)
    train, val, _ = split_preference_data(pairs, load_instruction_data(args.data))
    num_steps, eval_freq, batch_size = args.max_steps or DPO_STEPS, args.eval_freq, args.batch_size
    if args.smoke:
        train, val = train[: DPO_SMOKE["train"]], val[: DPO_SMOKE["val"]]
        num_steps, eval_freq, batch_size = DPO_SMOKE["max_steps"], DPO_SMOKE["eval_freq"], DPO_SMOKE["batch_size"]
    if len(train) < batch_size or not val:
        raise UsageError(
            f"{args.preference_data}: {len(train)} training and {len(val)} validation pairs; DPO needs "
            f"one batch of --batch-size {batch_size} and at least one validation pair"
        )
    print(f"preference data: {len(train)} train, {len(val)} val pairs from {args.preference_data}")
    tokenizer = get_tokenizer()
    model = load_checkpoint(GPTModel(GPT_CONFIGS[args.model]), args.dpo).to(device)
    print(f"model: {args.model} from {args.dpo}")
    collate = partial(preference_collate_fn, allowed_max_length=model.cfg["context_length"])
    train_set, val_set = (PreferenceDataset(part, tokenizer, args.style) for part in (train, val))
    for dataset in (train_set, val_set):  # the model as loaded is the reference
        # batches as the val loader's: the same padding, so the first evaluation's margins are exactly 0
        precompute_reference_logprobs(model, dataset, device, batch_size, model.cfg["context_length"])
    train_loader = DataLoader(
        train_set,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(args.seed),
    )
    val_loader = DataLoader(val_set, batch_size=batch_size, collate_fn=collate)
    optimizer = create_optimizer(model, lr=args.lr, weight_decay=0.0)
    start = time.perf_counter()
    # train_model's hooks: a checkpoint at each epoch's end and the run's, --resume, the finite-loss stop
    hooks = TrainingRun(
        out / DPO_OUTPUT_NAMES[2],
        resume=args.resume,
        seed=args.seed,
        save_every=args.save_every,
        save_every_minutes=args.save_every_minutes,
        settings={"start": str(args.dpo), "beta": args.beta, "lr": args.lr, "batch_size": batch_size},
    )
    history = train_dpo(
        model,
        None,
        train_loader,
        val_loader,
        optimizer,
        device,
        num_steps=num_steps,
        eval_freq=eval_freq,
        beta=args.beta,
        hooks=hooks,
    )
    seconds = time.perf_counter() - start
    save_checkpoint(out / DPO_OUTPUT_NAMES[0], model)
    metrics = {
        "model": args.model,
        "start": str(args.dpo),
        "beta": args.beta,
        "lr": args.lr,
        "seed": args.seed,
        "batch_size": batch_size,
        "train_pairs": len(train),
        "val_pairs": len(val),
        "steps": num_steps,
        "train_seconds": round(seconds, 1),
        "history": dataclasses.asdict(history),
    }
    atomic_write_json(out / DPO_OUTPUT_NAMES[1], metrics)
    print(
        f"held-out pairs: preference accuracy {history.val_accuracies[0]:.2f} -> {history.val_accuracies[-1]:.2f}, "
        f"reward margin {history.val_margins[0]:.3f} -> {history.val_margins[-1]:.3f} after {num_steps} steps "
        f"({seconds:.0f} s)"
    )
    print(f"wrote {out}/: {', '.join(DPO_OUTPUT_NAMES)}")
    return metrics


def run_judge(entries: list[dict], args: argparse.Namespace) -> dict:
    """LLM-judge scores; if the judge fails, the reason and whatever scores it gave (the other results still count).

    judge_responses raises only before it sends anything (no server, model not pulled); a failure later on
    comes back as a partial result with its "error".
    """
    try:
        judged = judge_responses(
            entries, model=args.judge_model, url=args.judge_url, style=args.style, timeout=args.judge_timeout
        )
    except (OllamaUnavailableError, OSError, ValueError) as exc:
        print(f"judge skipped: {exc}", file=sys.stderr)
        return {"model": args.judge_model, "error": str(exc)}
    mean = "no parsable score" if judged.get("mean") is None else f"{judged['mean']:.1f}"
    print(
        f"judge {judged['model']}: judged {judged['n_judged']} of {judged['n']} responses, mean {mean} over the "
        f"{judged['n_scored']} with a score; {judged['unparsed']['count']} replies without a usable score"
    )
    if judged.get("error"):
        print(f"judge stopped early, the scores above are partial: {judged['error']}", file=sys.stderr)
    return {
        key: judged[key]
        for key in ("model", "n", "n_judged", "n_scored", "mean", "scores", "unparsed", "error")
        if key in judged
    }


def parse_args_quietly(argv: list[str] | None) -> argparse.Namespace:
    """--ddp-timeout, before the process group exists (the full parse prints, and only rank 0 may)."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--ddp-timeout", type=_number(float, 0, strict=True), default=DDP_TIMEOUT)
    try:
        return early.parse_known_args(argv)[0]
    except SystemExit:  # a bad value: the full parse reports it
        return argparse.Namespace(ddp_timeout=DDP_TIMEOUT)


def _terminate(signum, frame) -> None:
    raise Terminated


def _remove_empty_out(args: argparse.Namespace) -> None:
    """A run that failed before writing anything leaves no empty --out folder behind (nor the parents it made)."""
    created = getattr(args, "created_out", None)
    if created is None:
        return
    folder = args.out
    lock_file = folder / OutputFolderLock.NAME  # released by now; in a folder this run made, nobody else's
    if lock_file.is_file() and [p.name for p in folder.iterdir()] == [OutputFolderLock.NAME]:
        lock_file.unlink()
    while True:
        try:
            folder.rmdir()  # only succeeds when empty
        except OSError:
            return
        if folder == created:
            return
        folder = folder.parent


def main(argv: list[str] | None = None) -> int:
    ddp_timeout = parse_args_quietly(argv).ddp_timeout
    # None unless torchrun started more than one process
    ddp = DistributedRun.from_environment(get_device, timeout=ddp_timeout)
    if ddp is not None:
        ddp.quiet_unless_main()
    args = parse_args(argv)
    debug = args.debug or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
    previous_handler = signal.signal(signal.SIGTERM, _terminate)
    try:
        if args.dpo is not None:
            if ddp is not None:
                raise UsageError("--dpo runs in one process: start it with python, not torchrun")
            run_dpo(args)
        else:
            run(args, ddp)
    except (KeyboardInterrupt, Terminated) as exc:
        what = "terminated" if isinstance(exc, Terminated) else "interrupted"
        print(f"\n{what}: rerun with --resume --out {args.out} to continue from the last checkpoint", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except Exception as exc:  # noqa: BLE001 - every error ends in one message; --debug shows the traceback
        if debug:
            raise
        if ddp is not None and isinstance(exc, RuntimeError) and "timed out" in str(exc).lower():
            # the gradient exchange inside backward() timed out: a peer stopped (see DistributedRun.sum)
            exc = DistributedStall(
                f"another process of this torchrun job did not take part within --ddp-timeout "
                f"{args.ddp_timeout:g} s (stopped, crashed or far slower?); stopping. "
                f"({str(exc).splitlines()[0][:200]})"
            )
        print(f"finetune.py: {exc}", file=sys.stderr)
        if isinstance(exc, OSError) and (args.out / CHECKPOINT_NAME).is_file():
            print(
                f"  (the last checkpoint is kept: fix that, then rerun with --resume --out {args.out})", file=sys.stderr
            )
        if isinstance(exc, WeightsUnavailableError):
            print("  (finetune.py: that is --weights /path/to/model.safetensors, or --model tiny)", file=sys.stderr)
        elif not isinstance(exc, (UsageError, *EXPECTED_ERRORS)):
            print(
                f"  (an unexpected {type(exc).__name__}: rerun with --debug or {DEBUG_ENV}=1 for the traceback)",
                file=sys.stderr,
            )
        _remove_empty_out(args)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        if ddp is not None:
            ddp.close()
    return 0


if __name__ == "__main__":
    exit_process(main())
