"""Notebook 07's finetuning and notebook 08's answers: older commits ("old") against this tree ("new"), one run.

The notebooks' own calls and settings, on GPT-2 small with RANDOM weights (written by transformers,
loaded with utils.build_gpt2 as the real ones are): the cost does not depend on the values.

- 07 (finetuning): create_dataloaders(batch_size=8), bf16 autocast when bf16_autocast_recommended,
  create_optimizer(lr=5e-5, weight_decay=0.1), train_model(eval_freq=20, eval_iter=5) with its checkpoint
  (temporary folder); two epochs are 232 steps. `--steps K` times the first K steps only and
  EXTRAPOLATES the two epochs: the first K-1 steps (one evaluation at step 20) scaled to 230, plus twice
  the last step, which evaluates and writes the checkpoint as each epoch's end does.
- 08 (generation and evaluation): generate_responses on the first `--answers` test entries (the notebook:
  all 110), max_new_tokens=256; random weights almost never say end-of-text, so every answer is full
  length. "old" calls it as the notebook did (float32); "new" as notebook 08 now does (bf16 where
  bf16_autocast_recommended, as 07's training); "new fp32" is this tree with the old call.

Each commit runs from its own `git archive` in a temporary folder, in a process of its own; old and new
take turns part by part, so load from other work hits both alike. The FLOP limit is the model FLOPs of
the same work at the matmul ceiling measured in this run (bf16 2048 x 2048 matmul for bf16 work, fp32
for fp32 work): training 6*N*B*T + 12*L*d*B*T^2 per batch, evaluation a third of that, generation
2*N + 4*L*d*(context) per token, N = 123.5M matmul parameters.

    python benchmarks/time_notebooks.py --threads 1 --steps 21 --answers 16   # about 20 min on a loaded 2-core machine
    python benchmarks/time_notebooks.py --steps 232 --answers 110               # the notebooks' whole work
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
OLD_COMMITS = ["6ebbf29"]  # the commit issue 24's times were measured on
STEPS_PER_TWO_EPOCHS = 232


def train_07(utils, model, train_loader, val_loader, optimizer, autocast_dtype, checkpoint: Path, n: int, stamps):
    """Notebook 07's train_model call, stopped after n steps; stamps gets the time after every step."""
    if hasattr(utils, "TrainingHooks"):  # the hooks layout: checkpoints and max_steps through TrainingRun
        from support.trainer import TrainingRun

        class Stamped(TrainingRun):
            def on_step_end(self, state) -> None:
                super().on_step_end(state)
                stamps.append(time.perf_counter())

        hooks = Stamped(checkpoint, max_steps=n, progress=False)
        kwargs, epoch_batches = {"hooks": hooks}, hooks.epoch_batches
    else:  # commit 6ebbf29: train_model took them as parameters
        kwargs = {
            "checkpoint_path": checkpoint,
            "max_steps": n,
            "progress": False,
            "callback": lambda state: stamps.append(time.perf_counter()),
        }

        def epoch_batches(loader, epoch):
            return utils._epoch_batches(loader, 123, epoch)

    history = utils.train_model(
        model,
        train_loader,
        val_loader,
        optimizer,
        "cpu",
        num_epochs=2,
        eval_freq=20,
        eval_iter=5,
        autocast_dtype=autocast_dtype,
        **kwargs,
    )
    return history, epoch_batches


def recommended(utils):
    """bf16_autocast_recommended of the tree under test (it moved from utils to support/precision.py)."""
    if hasattr(utils, "bf16_autocast_recommended"):
        return utils.bf16_autocast_recommended
    from support.precision import bf16_autocast_recommended

    return bf16_autocast_recommended


def worker(part: str, root: Path, weights: Path, n: int, threads: int | None, bf16_generation: bool) -> dict:
    """Run one part with the utils.py found in `root`; returns its measurements."""
    sys.path.insert(0, str(root))
    import torch

    import utils

    if threads:
        torch.set_num_threads(threads)
    tokenizer = utils.get_tokenizer()
    train_data, val_data, test_data = utils.split_dataset(utils.load_instruction_data())
    model = utils.build_gpt2("gpt2-small", weights_path=weights)
    n_matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    cfg = model.cfg
    if part == "07":
        train_loader, val_loader, _ = utils.create_dataloaders(train_data, val_data, test_data, tokenizer, batch_size=8)
        autocast_dtype = torch.bfloat16 if recommended(utils)("cpu") else None
        optimizer = utils.create_optimizer(model, lr=5e-5, weight_decay=0.1)
        stamps = []
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            history, epoch_batches = train_07(
                utils,
                model,
                train_loader,
                val_loader,
                optimizer,
                autocast_dtype,
                Path(tmp) / "checkpoint.safetensors",
                n,
                stamps,
            )
            seconds = time.perf_counter() - start
        # the last step also evaluates and saves the checkpoint, which the whole run does twice (each epoch's end)
        last = stamps[-1] - (stamps[-2] if len(stamps) > 1 else start)
        steps_before = (stamps[-2] - start) if len(stamps) > 1 else 0.0
        if n >= STEPS_PER_TWO_EPOCHS:
            whole = seconds
        else:
            whole = steps_before * (STEPS_PER_TWO_EPOCHS - 2) / max(len(stamps) - 1, 1) + 2 * last
        # FLOPs of the whole two epochs (both epochs' batches) plus the evaluations, padding included
        flops = 0.0
        for epoch in range(2):
            for inputs, _ in epoch_batches(train_loader, epoch):
                b, t = inputs.shape
                flops += 6 * n_matmul * b * t + 12 * cfg["n_layers"] * cfg["emb_dim"] * b * t * t
        eval_batches = [x for x, _ in list(val_loader)[:5]] * 2  # train batches of the same size, roughly
        flops += (STEPS_PER_TWO_EPOCHS // 20 + 1) * sum(
            2 * n_matmul * x.numel() + 4 * cfg["n_layers"] * cfg["emb_dim"] * x.shape[0] * x.shape[1] ** 2
            for x in eval_batches
        )
        return {
            "seconds": seconds,
            "steps": history.steps[-1],
            "flops_full": flops,
            "whole": whole,
            "last_step": last,
            "dtype": "bf16" if autocast_dtype else "fp32",
        }
    entries = test_data[:n]
    kwargs = {"dtype": torch.bfloat16} if bf16_generation else {}
    start = time.perf_counter()
    responses = utils.generate_responses(model, entries, tokenizer, max_new_tokens=256, progress=False, **kwargs)
    seconds = time.perf_counter() - start
    tokens = sum(len(tokenizer.encode(r["model_response"], allowed_special="all")) for r in responses)
    prompt_lengths = [len(utils.encode_text(utils.format_prompt(e), tokenizer)) for e in test_data]
    per_answer = sum(
        2 * n_matmul * 256 + 4 * cfg["n_layers"] * cfg["emb_dim"] * sum(p + i for i in range(256))
        for p in prompt_lengths
    ) / len(prompt_lengths)
    return {
        "seconds": seconds,
        "answers": len(responses),
        "tokens": tokens,
        "flops_full": per_answer * 110,
        "whole": seconds * 110 / len(responses),
        "dtype": "bf16" if bf16_generation else "fp32",
    }


def tree_of(commit: str, folder: Path) -> Path:
    """The files of `commit` (git archive) in `folder`: no worktree, nothing of this checkout touched."""
    data = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", commit], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def run_part(part: str, root: Path, weights: Path, n: int, threads: int | None, bf16: bool = False) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        part,
        "--root",
        str(root),
        "--weights",
        str(weights),
        "--n",
        str(n),
        *(["--threads", str(threads)] if threads else []),
        *(["--bf16"] if bf16 else []),
    ]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=21, help="07: timed steps, then extrapolated (232 = all)")
    parser.add_argument("--answers", type=int, default=16, help="08: test entries answered (110 = all)")
    parser.add_argument("--only", choices=["07", "08"], default=None)
    parser.add_argument("--old", nargs="+", default=OLD_COMMITS, help=f"commits to compare (default {OLD_COMMITS})")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--worker", choices=["07", "08"], help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.root, args.weights, args.n, args.threads, args.bf16)))
        return

    sys.path.insert(0, str(Path(__file__).parent))
    import torch

    import utils

    # common sets GPT2_TOKENIZER_DIR for the workers
    from common import machine_line, matmul_gflops, random_gpt2_checkpoint, uptime

    if args.threads:
        torch.set_num_threads(args.threads)  # the workers set theirs too
    bf16_here = recommended(utils)("cpu")  # notebook 08's choice of generation dtype, as 07's

    print(f"Machine: {machine_line()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        weights = random_gpt2_checkpoint(Path(tmp) / "random-gpt2")
        trees = [(f"old {c}", tree_of(c, Path(tempfile.mkdtemp(dir=tmp))), False) for c in args.old]
        ceilings = {"bf16": [], "fp32": []}

        def ceiling_now() -> None:
            for name, measured in ceilings.items():
                measured.append(matmul_gflops({"bf16": torch.bfloat16, "fp32": torch.float32}[name], reps=5))

        results = {}
        if args.only in (None, "07"):
            n = min(args.steps, STEPS_PER_TWO_EPOCHS)
            print(f"07: first {n} of the {STEPS_PER_TWO_EPOCHS} steps of two epochs; start: {uptime()}", flush=True)
            for label, root, _ in [*trees, ("new", REPO_ROOT, False)]:
                ceiling_now()
                results[("07", label)] = r = run_part("07", root, weights, n, args.threads)
                print(
                    f"  07 {label}: {r['seconds']:.1f} s for {r['steps']} steps ({r['dtype']}), the last one with "
                    f"evaluation and checkpoint {r['last_step']:.1f} s; {uptime()}",
                    flush=True,
                )
        if args.only in (None, "08"):
            print(f"08: {args.answers} of the 110 test answers, 256 tokens; start: {uptime()}", flush=True)
            new_ways = [("new", REPO_ROOT, bf16_here)] + ([("new fp32", REPO_ROOT, False)] if bf16_here else [])
            for label, root, bf16 in [*trees, *new_ways]:
                ceiling_now()
                results[("08", label)] = r = run_part("08", root, weights, args.answers, args.threads, bf16)
                print(
                    f"  08 {label}: {r['seconds']:.1f} s for {r['answers']} answers, {r['tokens']} tokens "
                    f"({r['dtype']}); {uptime()}",
                    flush=True,
                )
        ceiling_now()
    ceiling = {name: statistics.median(v) for name, v in ceilings.items()}
    print(
        f"\nmatmul ceiling (median of {len(ceilings['bf16'])}): bf16 {ceiling['bf16']:.0f} GFLOP/s, "
        f"fp32 {ceiling['fp32']:.0f} GFLOP/s"
    )
    print(
        f"{'notebook, code':<28} {'measured s':>10} {'whole notebook, min':>20} {'FLOP limit, min':>16} "
        f"{'limit/time':>10} {'vs ' + args.old[0]:>11}"
    )
    labels = [f"old {c}" for c in args.old] + ["new", "new fp32"]
    for part, full, unit in (("07", STEPS_PER_TWO_EPOCHS, "steps"), ("08", 110, "answers")):
        base = results.get((part, labels[0]))
        for label in labels:
            r = results.get((part, label))
            if r is None:
                continue
            done = r["steps"] if part == "07" else r["answers"]
            limit = r["flops_full"] / (ceiling[r["dtype"]] * 1e9)
            mark = "" if done == full else f" (x{full / done:.1f} EXTRAPOLATED from {done} {unit})"
            print(
                f"{part + ' ' + label + ' (' + r['dtype'] + ')':<28} {r['seconds']:>10.1f} {r['whole'] / 60:>20.2f} "
                f"{limit / 60:>16.2f} {limit / r['whole']:>10.0%} {r['whole'] / base['whole']:>11.0%}{mark}"
            )
    print(f"vs {args.old[0]}: the share of that commit's time (goal: 07 <= 60%, 08 <= 50%); end: {uptime()}")


if __name__ == "__main__":
    main()
