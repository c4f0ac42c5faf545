"""Training in more than one process: torchrun + DistributedDataParallel.

A plain `python finetune.py` never creates a DistributedRun and never starts a process group. Under
torchrun every process runs the script; each trains on its share of every batch, DDP adds up the
gradients, and rank 0 alone writes files and generates. support.trainer.TrainingRun(ddp=...) brings
it into utils.train_model: wrap, sum_over_processes and no_sync are all it needs.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import torch
from torch.utils.data import DataLoader, Sampler


class ShardedBatchSampler(Sampler[list[int]]):
    """This rank's share of every batch of `batch_sampler`, which makes the GLOBAL batches.

    The global batches keep their seeded order (and length grouping); rank r takes the items
    r, r + world_size, ... of each, so the ranks' shares are disjoint and cover the batch. A share
    that would be empty (a last batch smaller than world_size) is skipped; train loaders drop
    their last partial batch, so every rank trains on the same number of batches.
    """

    def __init__(self, batch_sampler: Sampler[list[int]], rank: int, world_size: int):
        self.batch_sampler, self.rank, self.world_size = batch_sampler, rank, world_size

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.batch_sampler, "set_epoch"):  # LengthGroupedBatchSampler
            self.batch_sampler.set_epoch(epoch)

    def __iter__(self):
        for batch in self.batch_sampler:
            if share := list(batch)[self.rank :: self.world_size]:
                yield share

    def __len__(self) -> int:
        return len(self.batch_sampler)  # global batches: what train_model counts steps and epochs in


DEFAULT_TIMEOUT = 600.0  # seconds; finetune.py --ddp-timeout. Every collective operation must finish within it.

_process_group_started = False  # set by DistributedRun; read by exit_process


def exit_process(code: int) -> NoReturn:
    """End this process with `code`: sys.exit, or os._exit once a process group was started in it.

    After a collective operation returns, a gloo worker thread may still be releasing that operation's
    tensors, and releasing a tensor that Python has seen takes the GIL. If the interpreter is finalizing
    by then, the thread is stopped and the process aborts ("terminate called without an active
    exception", SIGABRT; torch 2.13: 4 of about 80 two-process runs on a loaded 2-core machine), and a
    finished run would fail.
    Everything this program writes is closed and renamed before this point, so skipping the
    finalization loses nothing once stdout and stderr are flushed.
    """
    if not _process_group_started:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class DistributedStall(RuntimeError):
    """Another process of the job did not answer within the process group's timeout."""


class DistributedRun:
    """This process's place in a torchrun job, and the few collective operations training needs."""

    def __init__(
        self, rank: int, local_rank: int, world_size: int, device: torch.device, timeout: float = DEFAULT_TIMEOUT
    ):
        import datetime

        import torch.distributed as dist

        self.rank, self.local_rank, self.world_size = rank, local_rank, world_size
        if device.type == "cuda":
            self.device, backend = torch.device("cuda", local_rank), "nccl"
            torch.cuda.set_device(self.device)
        elif device.type == "cpu":
            self.device, backend = device, "gloo"
        else:
            raise SystemExit(
                f"DistributedDataParallel runs on CUDA GPUs or CPUs, not {device.type}: set LLM_DEVICE=cpu"
            )
        # The timeout bounds every collective operation: a process that stops (SIGSTOP, a hung node, a
        # crash the launcher missed) makes the others fail after `timeout` seconds instead of waiting forever.
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout))
        global _process_group_started
        _process_group_started = True
        self.backend, self.timeout = backend, timeout
        self._dist = dist

    @classmethod
    def from_environment(
        cls, choose_device: Callable[[], torch.device], timeout: float = DEFAULT_TIMEOUT
    ) -> DistributedRun | None:
        """A DistributedRun when torchrun started more than one process, else None (plain python).

        `choose_device()` says which kind of device to use (utils.get_device): cuda or cpu.
        """
        if int(os.environ.get("WORLD_SIZE", "1")) < 2:
            return None
        return cls(
            int(os.environ["RANK"]),
            int(os.environ["LOCAL_RANK"]),
            int(os.environ["WORLD_SIZE"]),
            choose_device(),
            timeout,
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        """Each value summed over all processes (float64: token counts stay exact)."""
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        try:
            self._dist.all_reduce(tensor)
        except RuntimeError as exc:  # gloo/NCCL: "Timed out waiting ...", "Connection closed by peer", ...
            raise DistributedStall(
                f"process {self.rank} of {self.world_size}: another process of this torchrun job "
                f"did not take part within --ddp-timeout {self.timeout:g} s (stopped, crashed or "
                f"far slower?); stopping. ({str(exc).splitlines()[0][:200]})"
            ) from None
        return tensor.tolist()

    @contextlib.contextmanager
    def local_main_first(self):
        """Local rank 0 runs the block first (a download happens once per node), the node's other ranks after.

        If it fails on some node, the other processes stop quietly: the failing one reports why.
        """
        if self.local_rank == 0:
            try:
                yield
            except BaseException:
                self.sum([1.0])  # the others wait in this all-reduce: tell them to stop
                raise
            if self.sum([0.0])[0]:
                raise SystemExit(1)
        else:
            if self.sum([0.0])[0]:
                raise SystemExit(1)
            yield

    def shard(self, loader: DataLoader) -> DataLoader:
        """`loader` (built with the global batch size) cut down to this rank's share of each batch."""
        # The same generator object: train_model re-seeds it each epoch and the shuffle draws from it
        # exactly as it would in one process, so the global batches are the one-process batches.
        return DataLoader(
            loader.dataset,
            batch_sampler=ShardedBatchSampler(loader.batch_sampler, self.rank, self.world_size),
            collate_fn=loader.collate_fn,
            num_workers=loader.num_workers,
            generator=loader.generator,
        )

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        model.to(self.device)
        # The only buffers are constant causal masks: syncing them at every forward pass would waste
        # time and make evaluation a collective operation. torch >= 2.13 renamed the switch.
        no_buffer_sync = (
            {"forward_sync_buffers": False}
            if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
            else {"broadcast_buffers": False}
        )
        wrapped = DistributedDataParallel(
            model, device_ids=[self.local_rank] if self.device.type == "cuda" else None, **no_buffer_sync
        )
        # Each process divides its summed loss by the real targets of ALL processes (the course loop
        # asks sum_over_processes for that count), so the gradient of the whole batch is the SUM of the
        # processes' gradients; DDP's default would average them.
        wrapped.register_comm_hook(state=None, hook=_sum_gradients)
        return wrapped

    def check_resume(self, checkpoint: Path) -> None:
        """Every rank must find the checkpoint (a filesystem shared by all nodes), or none."""
        found = int(self.sum([checkpoint.exists()])[0])
        if 0 < found < self.world_size:
            raise SystemExit(
                f"{checkpoint} exists for {found} of {self.world_size} processes: with more than "
                "one node, --out must be on a filesystem that all nodes share"
            )

    def quiet_unless_main(self) -> None:
        """Only rank 0 prints progress and warnings; errors still reach every rank's stderr."""
        if not self.is_main:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
            warnings.simplefilter("ignore")

    def close(self) -> None:
        if self._dist.is_initialized():
            self._dist.destroy_process_group()


def _sum_gradients(state, bucket):
    """A DDP communication hook: all-reduce a bucket of gradients as a sum (no division by world size)."""
    import torch.distributed as dist

    future = dist.all_reduce(bucket.buffer(), async_op=True).get_future()
    return future.then(lambda done: done.value()[0])
