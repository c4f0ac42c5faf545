"""Finetuning speed: our GPTModel vs. Hugging Face transformers' GPT2LMHeadModel, fp32 and bf16, side by side.

Both models hold the SAME random GPT-2 small weights: transformers writes a random checkpoint
(save_pretrained, safetensors), transformers loads it, and utils.build_gpt2 loads it through
load_gpt2_weights. Speed does not depend on the values, and nothing needs downloading. The data
is the real train split in the Alpaca format, batch size 8; every run does what train_model does
per batch (loss, backward, AdamW step from create_optimizer: fused) on the same batches. Runs:

    ours  fp32                     no autocast, everything float32
    ours  bf16 autocast            torch.autocast: what train_model(autocast_dtype=torch.bfloat16) does
                                   (notebook 07 turns it on where the CPU does bf16 natively)
    ours  bf16 autocast, compiled  the same model through torch.compile(dynamic=True), what
                                   finetune.py --compile does; the compile time is in the warm-up round and is
                                   printed on its own
    ours  bf16 weights + master    weights and activations in bf16, fp32 master copy in the optimizer
    hf    fp32, hf bf16 autocast   transformers, same loss (float32 cross-entropy, -100 ignored)

They take turns step by step (round robin), and every round first times a 2048 x 2048 matmul in
each dtype: the machine may be shared, and a load spike then hits every run and its reference
alike. Forward, backward and optimizer step are timed separately.

Model FLOPs of a batch (B, T), padding included: 6*N*B*T + 12*L*d*B*T^2 with N = the 85M
parameters of the blocks' Linear layers + the 38.6M of the output head (embedding lookups
excluded), L = layers, d = emb_dim. ratio = achieved GFLOP/s / median matmul GFLOP/s of the dtype.
(Our model keeps the output head as its own matrix, as the book does; transformers ties it to the
token embedding, so our optimizer updates 38.6M more parameters. The FLOPs are the same.)

    python benchmarks/bench_training.py               # 1 warm-up + 3 timed rounds: 1.5 min here (--threads 1, load 4)
    python benchmarks/bench_training.py --steps 10    # steadier numbers
    python benchmarks/bench_training.py --runs "ours bf16 autocast" --steps 1 --profile   # where it goes
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import support.precision  # noqa: E402
import utils  # noqa: E402  (common puts the repository on sys.path)
from common import load_both, machine_line, matmul_gflops, uptime
from support.batching import length_grouped_loader  # noqa: E402
from utils import GPT_CONFIGS, IGNORE_INDEX, create_optimizer  # noqa: E402


def batch_flops(shape: tuple[int, int], n_matmul: int, cfg: dict) -> float:
    b, t = shape
    return 6 * n_matmul * b * t + 12 * cfg["n_layers"] * cfg["emb_dim"] * b * t * t


class MasterWeightAdamW:
    """Fused AdamW on float32 master copies of a bf16 model's parameters; the bf16 weights follow each step.

    Updates of lr * ~1 to weights of ~0.02 fall below bf16's resolution (8 bits of mantissa), so
    AdamW straight on bf16 weights would drop most of them: the master copy keeps them.
    """

    def __init__(self, model: torch.nn.Module, lr: float, weight_decay: float = 0.1):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.master = [p.detach().float().requires_grad_() for p in self.params]
        self.optimizer = torch.optim.AdamW(self.master, lr=lr, weight_decay=weight_decay, fused=True)

    @torch.no_grad()
    def step(self) -> None:
        for p, m in zip(self.params, self.master):
            m.grad = p.grad.float()
        self.optimizer.step()
        torch._foreach_copy_(self.params, self.master)  # round to bf16 once per step

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None
        self.optimizer.zero_grad(set_to_none=True)


def loss_of(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, hf: bool) -> torch.Tensor:
    """Mean float32 cross-entropy over the real targets, as utils.calc_loss_batch computes it."""
    logits = model(input_ids=inputs).logits if hf else model(inputs)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)


RUNS = {  # name: (model, autocast dtype or None, dtype of the reference matmul, attention in float32 on CPU)
    "ours fp32": ("ours", None, torch.float32, True),
    "ours bf16 autocast": ("ours", torch.bfloat16, torch.bfloat16, True),
    "ours bf16 autocast, compiled": ("ours-compiled", torch.bfloat16, torch.bfloat16, True),
    "ours bf16 weights+master": ("ours-bf16", None, torch.bfloat16, True),
    "ours bf16 autocast, bf16 attention": ("ours", torch.bfloat16, torch.bfloat16, False),
    "hf fp32": ("hf", None, torch.float32, True),
    "hf bf16 autocast": ("hf", torch.bfloat16, torch.bfloat16, True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--batching",
        choices=["random", "grouped"],
        default="random",
        help="the notebook's random batches, or length-grouped ones (finetune.py --group-by-length)",
    )
    parser.add_argument(
        "--runs",
        nargs="+",
        choices=list(RUNS),
        default=list(RUNS),
        metavar="RUN",
        help=f"which runs (default all): {', '.join(repr(r) for r in RUNS)}",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="at the end, torch.profiler's top operations (by shape) of one more step of the first bf16 run",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(machine_line(), flush=True)
    cfg = GPT_CONFIGS["gpt2-small"]
    tokenizer = utils.get_tokenizer()
    train, val, test = utils.split_dataset(utils.load_instruction_data())
    loader, _, _ = utils.create_dataloaders(train, val, test, tokenizer, batch_size=args.batch_size)
    if args.batching == "grouped":
        loader = length_grouped_loader(loader, seed=123)
    with tempfile.TemporaryDirectory() as tmp:
        ours, hf = load_both(
            Path(tmp) / "random-gpt2", hf_kwargs={"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
        )
    n_matmul = sum(m.weight.numel() for m in ours.modules() if isinstance(m, torch.nn.Linear))
    models = {"ours": ours, "hf": hf}
    print(
        f"GPT-2 small, the same random weights in both; N = {n_matmul / 1e6:.1f}M matmul parameters; "
        f"{args.batching} batches of {args.batch_size} from the {len(train)} train examples; dropout 0 in both"
    )

    instances, optimizers = {}, {}
    for name in args.runs:
        kind = RUNS[name][0]
        if kind == "ours-compiled":  # what TrainingRun(compile_model=True) hands train_model
            model = copy.deepcopy(ours).train()
            optimizers[name] = create_optimizer(model, lr=5e-5)
            instances[name] = torch.compile(model, dynamic=True)
            continue
        if kind == "ours-bf16":
            model = copy.deepcopy(ours).to(torch.bfloat16).train()
            optimizers[name] = MasterWeightAdamW(model, lr=5e-5)
        else:
            model = copy.deepcopy(models[kind]).train()
            optimizers[name] = create_optimizer(model, lr=5e-5)
        instances[name] = model
    ours_params = list(ours.parameters())
    del ours, hf, models

    rounds = args.warmup + args.steps
    print(
        f"{args.steps} timed rounds after {args.warmup} warm-up; each round: a matmul per dtype, then one step "
        f"of each of the {len(instances)} runs on the same batch\n",
        flush=True,
    )
    records: dict[str, list[dict]] = {name: [] for name in instances}
    first_step: dict[str, float] = {}
    batches = iter(loader)
    for r in range(rounds):
        reference = {dtype: matmul_gflops(dtype) for dtype in {RUNS[n][2] for n in instances}}
        inputs, targets = next(batches)
        for name, model in instances.items():
            kind, autocast_dtype, ref_dtype, attention_fp32 = RUNS[name]
            support.precision.CPU_BF16_ATTENTION_IN_FLOAT32 = attention_fp32  # what utils does (True) or torch's bf16
            t0 = time.perf_counter()
            with utils._autocast(torch.device("cpu"), autocast_dtype):
                loss = loss_of(model, inputs, targets, hf=kind == "hf")
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
            t3 = time.perf_counter()
            if r == 0:
                first_step[name] = t3 - t0
            if r >= args.warmup:
                records[name].append(
                    {
                        "fwd": t1 - t0,
                        "bwd": t2 - t1,
                        "opt": t3 - t2,
                        "seconds": t3 - t0,
                        "flops": batch_flops(tuple(inputs.shape), n_matmul, cfg),
                        "positions": inputs.numel(),
                        "loss": loss.item(),
                        "matmul": reference[ref_dtype],
                    }
                )
        if r >= args.warmup:
            print(
                f"round {r + 1}/{rounds}: batch {tuple(inputs.shape)}, "
                + ", ".join(f"{n} {records[n][-1]['seconds']:.1f} s" for n in instances)
                + f"; {uptime().split('load')[-1].strip()}",
                flush=True,
            )

    first = next(iter(records))
    print(
        f"\n{'run':<34} {'fwd s':>6} {'bwd s':>6} {'opt s':>6} {'s/step':>7} {'tok/s':>6} {'GFLOP/s':>8} "
        f"{'matmul':>7} {'ratio':>6} {'loss':>7} {'|dloss|':>8}"
    )
    for name, steps in records.items():
        seconds = sum(s["seconds"] for s in steps)
        achieved = sum(s["flops"] for s in steps) / seconds / 1e9
        matmul = statistics.median(s["matmul"] for s in steps)
        dloss = max(abs(a["loss"] - b["loss"]) for a, b in zip(steps, records[first]))
        print(
            f"{name:<34} "
            + " ".join(f"{statistics.mean(s[k] for s in steps):>6.2f}" for k in ("fwd", "bwd", "opt"))
            + f" {seconds / len(steps):>7.2f} {sum(s['positions'] for s in steps) / seconds:>6.0f} {achieved:>8.1f} "
            f"{matmul:>7.1f} {achieved / matmul:>6.0%} {statistics.mean(s['loss'] for s in steps):>7.3f} "
            f"{dloss:>8.4f}"
        )
    print(
        f"\nfwd/bwd/opt: mean seconds of forward (incl. loss), backward, optimizer step; tok/s: input positions "
        f"incl. padding; matmul: median GFLOP/s of the 2048 x 2048 reference matmul of that dtype; ratio: "
        f"achieved / matmul (goal for bf16: >= 35%); |dloss|: largest difference from {first!r}'s loss "
        f"on the same batch"
    )
    print(
        "first step (warm-up; for the compiled run, compiling included): "
        + ", ".join(f"{n} {s:.1f} s" for n, s in first_step.items())
    )
    now = records.get("ours bf16 autocast")
    if now:  # what stops the bf16 step short of the ceiling
        at_ceiling = statistics.mean(s["flops"] / (s["matmul"] * 1e9) for s in now)
        parts = {k: statistics.mean(s[k] for s in now) for k in ("fwd", "bwd", "opt")}
        print(
            f"\nours bf16 autocast (train_model): the batches' FLOPs at the bf16 ceiling take {at_ceiling:.2f} s; "
            f"the step took {sum(parts.values()):.2f} s, of which the optimizer step (fused AdamW over "
            f"{sum(p.numel() for p in ours_params) / 1e6:.0f}M float32 parameters, memory-bound) "
            f"{parts['opt']:.2f} s = {parts['opt'] / at_ceiling:.0%} of the whole step's budget "
            f"at the ceiling; forward + backward {parts['fwd'] + parts['bwd']:.2f} s "
            f"({at_ceiling / (parts['fwd'] + parts['bwd']):.0%} of the ceiling without the optimizer)"
        )
    total = {name: sum(s["seconds"] for s in steps) for name, steps in records.items()}
    for a, b in (
        ("hf fp32", "ours fp32"),
        ("hf bf16 autocast", "ours bf16 autocast"),
        ("hf bf16 autocast", "ours bf16 autocast, compiled"),
        ("ours bf16 autocast", "ours bf16 autocast, compiled"),
        ("ours fp32", "ours bf16 autocast"),
        ("ours bf16 autocast", "ours bf16 weights+master"),
        ("hf bf16 autocast", "ours bf16 weights+master"),
        ("ours bf16 autocast, bf16 attention", "ours bf16 autocast"),
    ):
        if a in total and b in total:
            paired = statistics.median(x["seconds"] / y["seconds"] for x, y in zip(records[a], records[b]))
            print(f"{b} vs {a}: {total[a] / total[b]:.2f}x as fast (median of the rounds' own ratios: {paired:.2f}x)")
    if args.profile:
        profile_step(instances, optimizers, next(batches))
    print(f"end: {uptime()}")


def profile_step(instances: dict, optimizers: dict, batch) -> None:
    """Where a bf16 step's time goes: the operations that took longest, each with its tensor shapes."""
    from torch.profiler import ProfilerActivity, profile

    name = next((n for n in instances if RUNS[n][1] == torch.bfloat16 and RUNS[n][0] != "hf"), None)
    if name is None:
        return
    inputs, targets = batch
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        with utils._autocast(torch.device("cpu"), torch.bfloat16):
            loss = loss_of(instances[name], inputs, targets, hf=False)
        loss.backward()
        optimizers[name].step()
        optimizers[name].zero_grad(set_to_none=True)
    print(f"\none profiled step of {name!r}, batch {tuple(inputs.shape)} (the profiler adds a little):")
    table = prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=15)
    print(table)


if __name__ == "__main__":
    main()
