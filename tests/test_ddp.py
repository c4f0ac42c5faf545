"""finetune.py under torchrun: DistributedDataParallel with 2 CPU processes (gloo, 127.0.0.1), the tiny model.

Every job runs `python -m torch.distributed.run` (torchrun) in a session of its own, killed whole on a timeout.
The DDP jobs go through a small launcher (written to tmp_path) that records every file each rank opens for
writing, and can stop a run with KeyboardInterrupt in the middle of an optimizer step, as Ctrl-C does.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO_ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 240  # seconds per job; each takes a few seconds on an idle machine

# The same run in every job; only the batch size, step count and output folder change.
COMMON = [
    "--model",
    "tiny",
    "--bf16",
    "off",
    "--grad-accum",
    "2",
    "--epochs",
    "2",
    "--eval-freq",
    "2",
    "--eval-iter",
    "1",
    "--save-every",
    "2",
    "--lr",
    "1e-3",
    "--max-length",
    "256",
    "--max-new-tokens",
    "2",
]

LAUNCHER = """
import builtins, contextlib, os, sys
sys.path.insert(0, os.environ["REPO_ROOT"])
import finetune, support.checkpoints, support.ddp, support.files, utils

log = open(f"{os.environ['WRITE_LOG']}.rank{os.environ.get('RANK', '0')}", "w")
real_destination, real_open, real_step = support.files.atomic_destination, builtins.open, utils._optimizer_step

@contextlib.contextmanager
def logged_destination(path):
    print(os.path.abspath(path), file=log, flush=True)
    with real_destination(path) as tmp:
        yield tmp

def logged_open(file, mode="r", *args, **kwargs):
    if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
        print(os.path.abspath(file), file=log, flush=True)
    return real_open(file, mode, *args, **kwargs)

steps = 0
def step_or_interrupt(*args, **kwargs):
    global steps
    steps += 1
    if steps == int(os.environ.get("INTERRUPT_AT_STEP", 0)):
        raise KeyboardInterrupt  # inside the step: its work is lost, as with Ctrl-C
    return real_step(*args, **kwargs)

support.files.atomic_destination = support.checkpoints.atomic_destination = logged_destination
builtins.open, utils._optimizer_step = logged_open, step_or_interrupt
support.ddp.exit_process(finetune.main(sys.argv[1:]))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_job(args: list[str], nproc: int | None, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node=nproc ARGS` (or plain `python ARGS` when nproc is None), offline, on CPU."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "LLM_DEVICE": "cpu",
        "OMP_NUM_THREADS": "1",
        "REPO_ROOT": str(REPO_ROOT),
        **(extra_env or {}),
    }
    launch = [sys.executable]
    if nproc is not None:
        launch += [
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={nproc}",
            "--nnodes=1",
            "--master-addr=127.0.0.1",
            f"--master-port={free_port()}",
        ]
    proc = subprocess.Popen(
        launch + args,
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its workers: nothing is left running
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """60 entries: 51 train (12 global batches of 4 per epoch), 3 val (an uneven last batch), 6 test."""
    data = json.loads((REPO_ROOT / "instruction-data.json").read_text(encoding="utf-8"))[:60]
    path = tmp_path_factory.mktemp("data") / "small.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def launcher(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("launcher") / "launch.py"
    path.write_text(LAUNCHER, encoding="utf-8")
    return path


def ddp_run(launcher, data, out: Path, *args: str, interrupt_at: int | None = None) -> subprocess.CompletedProcess:
    extra = {"WRITE_LOG": str(out.parent / f"{out.name}-writes")}
    if interrupt_at is not None:
        extra["INTERRUPT_AT_STEP"] = str(interrupt_at)
    return run_job(
        [str(launcher), *COMMON, "--data", str(data), "--batch-size", "2", "--out", str(out), *args],
        nproc=2,
        extra_env=extra,
    )


def written(out: Path, rank: int) -> set[str]:
    log = out.parent / f"{out.name}-writes.rank{rank}"
    return set(log.read_text(encoding="utf-8").split()) if log.exists() else set()


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory, launcher, small_data) -> Path:
    """8 optimizer steps (into the second epoch) with DDP: 2 processes x batch 2 x 2 accumulated."""
    out = tmp_path_factory.mktemp("ddp") / "full"
    result = ddp_run(launcher, small_data, out, "--max-steps", "8")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def key_bias_free(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights with the key part of every attention bias left out.

    Adding a constant to a query's scores does not change its softmax, so the key bias gets a
    gradient of exactly 0 in exact arithmetic; in float32 it is rounding noise (~1e-10), which
    AdamW divides by its own magnitude into steps of up to lr. Two summation orders give two noises.
    """
    out = {}
    for name, tensor in weights.items():
        if name.endswith("att.qkv.bias"):
            q, _, v = tensor.chunk(3)
            tensor = torch.cat([q, v])
        out[name] = tensor
    return out


def assert_same_weights(a: Path, b: Path, atol: float) -> None:
    wa, wb = key_bias_free(load_file(a)), key_bias_free(load_file(b))
    assert wa.keys() == wb.keys()
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst <= atol, f"largest weight difference {worst:.3g} > {atol:g}"


def test_ddp_with_batch_b_per_process_equals_one_process_with_batch_2b(tmp_path, ddp_reference, small_data):
    single = tmp_path / "single"
    result = run_job(
        [
            "finetune.py",
            *COMMON,
            "--data",
            str(small_data),
            "--batch-size",
            "4",
            "--max-steps",
            "8",
            "--out",
            str(single),
        ],
        nproc=None,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # Not bitwise: the gradients are summed in another order (per rank, then across ranks). After 8
    # AdamW steps at lr 1e-3 the weights differ by at most 3e-6 here (key biases aside, see
    # key_bias_free); the tolerance, 1e-5, is 1% of one step's size. AdamW hardly sees the scale of a
    # gradient: test_ddp_gradient_is_the_gradient_of_one_big_batch checks that.
    assert_same_weights(ddp_reference / "model.safetensors", single / "model.safetensors", atol=1e-5)
    ddp, one = (json.loads((d / "metrics.json").read_text(encoding="utf-8")) for d in (ddp_reference, single))
    assert ddp["processes"] == 2 and "processes" not in one
    assert ddp["steps"] == one["steps"] == 8
    assert ddp["tokens_seen"] == one["tokens_seen"]  # counted over all ranks
    # validation loss: summed over the ranks' shares of the same batches, so it matches one process
    assert ddp["final_val_loss"] == pytest.approx(one["final_val_loss"], rel=1e-5)
    assert ddp["final_train_loss"] == pytest.approx(one["final_train_loss"], rel=1e-5)


def test_ddp_interrupted_and_resumed_ends_like_the_uninterrupted_run(tmp_path, ddp_reference, launcher, small_data):
    out = tmp_path / "resumed"
    # Ctrl-C during step 5 on every rank (checkpoints every 2 steps). Rank 1 gets there first, while rank 0
    # may still be writing step 4's checkpoint; its exit ends the job, and a checkpoint cut short leaves the
    # previous one whole. Either way the run resumes from a whole checkpoint and ends bit for bit the same.
    result = ddp_run(launcher, small_data, out, "--max-steps", "8", interrupt_at=5)
    assert result.returncode != 0
    assert "--resume" in result.stderr
    saved_step = json.loads(load_file_metadata(out / "checkpoint.safetensors")["train_state"])["step"]
    assert saved_step in (2, 4)
    assert not (out / "model.safetensors").exists()
    result = ddp_run(launcher, small_data, out, "--max-steps", "8", "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resuming from" in result.stdout and f"at step {saved_step}" in result.stdout
    # the same processes, data order and arithmetic: the same weights, bit for bit
    a, b = load_file(ddp_reference / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def load_file_metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def test_only_rank_0_writes_files(ddp_reference):
    # .lock: the output folder's lock file, which rank 0 takes for the run
    expected = {
        "loss.png",
        "test-responses.json",
        "metrics.json",
        "model.safetensors",
        "checkpoint.safetensors",
        ".lock",
    }
    assert {p.name for p in ddp_reference.iterdir()} == expected  # no stray temporary files either
    rank0, rank1 = written(ddp_reference, 0), written(ddp_reference, 1)
    assert {str(ddp_reference / name) for name in expected} <= rank0
    assert rank1 <= {os.devnull}, f"rank 1 wrote {sorted(rank1 - {os.devnull})}"


def test_torchrun_smoke_runs_end_to_end(tmp_path):
    """The acceptance command: torchrun --nproc_per_node=2 finetune.py --smoke."""
    result = run_job(["finetune.py", "--smoke", "--out", str(tmp_path)], nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert result.stdout.count("UNTRAINED") == 1  # printed by rank 0 only
    assert "2 processes (gloo)" in result.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["processes"] == 2 and metrics["steps"] == 6 and metrics["evaluation"]["n"] == 5
    assert torch.isfinite(torch.tensor(metrics["final_val_loss"]))


# --- the gradient itself, in-process workers (torch.multiprocessing) ---


def gradient_worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LLM_DEVICE": "cpu",
        }
    )
    torch.set_num_threads(1)
    from safetensors.torch import save_file

    import finetune
    import utils
    from support.ddp import exit_process
    from support.trainer import TrainingRun

    ddp = finetune.DistributedRun.from_environment(utils.get_device)
    try:
        model, window = gradient_problem()
        shares = [utils.custom_collate_fn(batch[rank::world_size]) for batch in window]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # leaves the weights (and .grad) as they are
        hooks = TrainingRun(ddp=ddp)
        wrapped = hooks.on_train_start(model, optimizer, utils.TrainState())  # DistributedDataParallel
        loss, n_real, _ = utils._optimizer_step(wrapped, shares, optimizer, ddp.device, None, hooks)
        if ddp.is_main:
            grads = {name: p.grad for name, p in model.named_parameters()}
            save_file(grads, out, metadata={"loss": repr(loss), "n_real": str(n_real)})
    finally:
        ddp.close()
    exit_process(0)  # as finetune.py does under torchrun (see its docstring)


def gradient_problem():
    """The tiny model and 2 micro-batches of 4 sequences of uneven length: the ranks' shares hold
    different numbers of real targets, so dividing by each rank's own count would be wrong."""
    import utils

    torch.manual_seed(0)
    model = utils.GPTModel(utils.GPT_CONFIGS["tiny"])
    lengths = [[5, 31, 9, 2], [17, 3, 26, 11]]
    window = [[torch.randint(0, 50257, (n,)).tolist() for n in batch] for batch in lengths]
    return model, window


def test_ddp_gradient_is_the_gradient_of_one_big_batch(tmp_path):
    import torch.multiprocessing as mp

    import utils

    out = tmp_path / "grads.safetensors"
    context = mp.start_processes(
        gradient_worker, args=(2, free_port(), str(out)), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + TIMEOUT
    try:
        while not context.join(timeout=max(deadline - time.monotonic(), 0)):  # False until every worker is done
            assert time.monotonic() < deadline, f"the workers did not finish in {TIMEOUT} s"
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    model, window = gradient_problem()
    batches = [utils.custom_collate_fn(batch) for batch in window]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    loss, n_real, _ = utils._optimizer_step(model, batches, optimizer, torch.device("cpu"), None, utils.TrainingHooks())
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert int(meta["n_real"]) == n_real  # the real targets of both ranks
    assert float(meta["loss"]) == pytest.approx(loss, rel=1e-6)
    grads = load_file(out)
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-7, msg=name)


def test_torchrun_bad_data_gives_one_clear_message(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "Say hi.", "input": ""}]), encoding="utf-8")
    result = run_job(["finetune.py", "--smoke", "--data", str(bad), "--out", str(tmp_path / "out")], nproc=2)
    assert result.returncode != 0
    # rank 0 reads the file first and says what is wrong; rank 1 stops without a traceback of its own
    assert result.stderr.count("entry 0: missing field 'output'") == 1
    assert "[rank0]: Traceback" not in result.stderr and "[rank1]: Traceback" not in result.stderr


# --- the sharding sampler, without processes ---


@pytest.mark.parametrize("grouped", [False, True])
def test_shards_are_disjoint_and_make_up_the_one_process_batches(grouped):
    import types

    import finetune
    import support.trainer
    import utils
    from support.batching import length_grouped_loader

    lengths = [(7 * i) % 23 + 1 for i in range(40)]
    # prompt_length holds each item's index: the collate function below returns the indices of a batch
    dataset = [utils.TokenizedExample(list(range(n)), i) for i, n in enumerate(lengths)]

    def loader():
        plain = torch.utils.data.DataLoader(
            dataset,
            batch_size=8,
            shuffle=True,
            drop_last=True,
            collate_fn=lambda batch: [x.prompt_length for x in batch],
            generator=torch.Generator().manual_seed(5),
        )
        return length_grouped_loader(plain, seed=5, chunk_batches=2) if grouped else plain

    one_process = loader()
    shards = [finetune.DistributedRun.shard(types.SimpleNamespace(rank=r, world_size=3), loader()) for r in range(3)]
    for epoch in (0, 1):
        batches = list(support.trainer._epoch_batches(one_process, seed=5, epoch=epoch))
        shares = [list(support.trainer._epoch_batches(s, seed=5, epoch=epoch)) for s in shards]
        assert all(len(s) == len(batches) == len(one_process) == 5 for s in shares)
        for i, batch in enumerate(batches):
            assert sorted(sum((s[i] for s in shares), [])) == sorted(batch)  # disjoint, and all of it
            assert [len(s[i]) for s in shares] == [3, 3, 2]
    assert batches != list(support.trainer._epoch_batches(one_process, seed=5, epoch=0))  # epochs differ


def test_a_ddp_checkpoint_resumes_with_the_same_global_batch_in_one_process(tmp_path, ddp_reference, small_data):
    """Issue 26: README says only the global batch must match: 2 processes x 2 continue as 1 process x 4."""
    out = tmp_path / "regrouped"
    import shutil

    shutil.copytree(ddp_reference, out)
    (out / "checkpoint.safetensors").unlink()
    first = run_job(
        [
            "finetune.py",
            *COMMON,
            "--data",
            str(small_data),
            "--batch-size",
            "2",
            "--max-steps",
            "2",
            "--overwrite",
            "--out",
            str(out),
        ],
        nproc=2,
    )
    assert first.returncode == 0, first.stderr[-2000:]
    resumed = run_job(
        [
            "finetune.py",
            *COMMON,
            "--data",
            str(small_data),
            "--batch-size",
            "4",
            "--max-steps",
            "3",
            "--resume",
            "--out",
            str(out),
        ],
        nproc=None,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming" in resumed.stdout and "at step 2" in resumed.stdout
    refused = run_job(
        [
            "finetune.py",
            *COMMON,
            "--data",
            str(small_data),
            "--batch-size",
            "2",
            "--max-steps",
            "4",
            "--resume",
            "--out",
            str(out),
        ],
        nproc=None,
    )
    assert refused.returncode == 1 and "global_batch_size: checkpoint 4, this run 2" in refused.stderr


STOPPING_LAUNCHER = """
import os, signal, sys, torch
real_step = torch.optim.AdamW.step
steps = 0
def step(self, *args, **kwargs):
    global steps
    steps += 1
    if steps == 2 and os.environ["RANK"] == "1":
        os.kill(os.getpid(), signal.SIGSTOP)  # this rank stops, as a hung node or a debugger would stop it
    return real_step(self, *args, **kwargs)
torch.optim.AdamW.step = step
import finetune, support.ddp
support.ddp.exit_process(finetune.main(sys.argv[1:]))
"""


def test_a_stopped_rank_ends_the_others_after_the_ddp_timeout(tmp_path, small_data):
    """Issue 26, case 8: with a stopped peer, the process group's timeout ends rank 0 with one clear message.

    The two ranks are started directly (as torchrun would, without its 30 s grace period for the stopped
    one), so the test takes seconds; the test then kills the stopped rank itself.
    """
    launcher = tmp_path / "stop.py"
    launcher.write_text(STOPPING_LAUNCHER, encoding="utf-8")
    port = free_port()
    ranks = []
    for rank in (0, 1):
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "LLM_DEVICE": "cpu",
            "OMP_NUM_THREADS": "1",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "PYTHONPATH": str(REPO_ROOT),
        }
        ranks.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(launcher),
                    *COMMON,
                    "--data",
                    str(small_data),
                    "--batch-size",
                    "2",
                    "--max-steps",
                    "6",
                    "--ddp-timeout",
                    "3",
                    "--out",
                    str(tmp_path / "out"),
                ],
                cwd=REPO_ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        _, err = ranks[0].communicate(timeout=TIMEOUT)
    finally:
        for proc in ranks:
            proc.kill()
            proc.communicate()
    assert ranks[0].returncode == 1, err[-2000:]
    last = err.strip().splitlines()
    assert "Traceback" not in err and any("--ddp-timeout 3 s" in line for line in last[-3:]), err[-2000:]
