"""The training hooks of utils.train_model: checkpoints, resume, timed saves, the finite-loss stop, DDP.

utils.train_model is the course loop; TrainingRun plugs this machinery into it (see support/__init__.py
for the hook protocol). It knows the loop's state only by its fields (step, epoch, batches_done,
tokens_seen, last_loss, history): it never imports utils.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch.utils.data import RandomSampler

from support.checkpoints import CheckpointError, resume_from, save_checkpoint


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's random number generators (CPU and every GPU)."""
    import numpy as np

    if not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer from 0 to 2**63 - 1, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class TrainingError(RuntimeError):
    """The run cannot go on (a NaN loss, nothing to learn from); the message says why and what was kept."""


def check_loop_args(train_loader: Iterable, grad_accum_steps: int, eval_freq: int) -> None:
    """A clear error before train_model starts a loop that cannot work."""
    if grad_accum_steps < 1 or eval_freq < 1:
        raise ValueError(f"grad_accum_steps and eval_freq must be >= 1, got {grad_accum_steps}, {eval_freq}")
    if len(train_loader) == 0:
        raise TrainingError(
            "the train loader yields no batches: fewer training examples than the batch size "
            "(its last, partial batch is dropped)? Use a smaller batch size or more data."
        )


def progress_bar(total_steps: int, steps_done: int, show: bool):
    """train_model's tqdm bar over the optimizer steps; a resumed run starts at the steps it has done."""
    from tqdm import tqdm

    initial = min(steps_done, total_steps)
    return tqdm(total=total_steps, initial=initial, desc="training", unit="step", disable=not show, dynamic_ncols=True)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % 2**64  # a different order every epoch, the same every run


def _epoch_batches(loader: Iterable, seed: int, epoch: int) -> Iterator:
    """An iterator over `loader` whose order depends only on (seed, epoch), so a resumed run sees the same batches.

    Works for a DataLoader with a `generator` (create_dataloaders' train loader) and for a batch
    sampler with `set_epoch` (length_grouped_loader); unshuffled loaders are reproducible anyway.
    """
    batch_sampler = getattr(loader, "batch_sampler", None)
    if hasattr(batch_sampler, "set_epoch"):
        batch_sampler.set_epoch(epoch)
    generator = getattr(loader, "generator", None)
    if generator is not None:
        generator.manual_seed(_epoch_seed(seed, epoch))
    elif isinstance(getattr(loader, "sampler", None), RandomSampler) and loader.sampler.generator is None:
        warnings.warn(
            "the train loader shuffles with torch's global RNG: its order cannot be replayed on resume; "
            "give the DataLoader a generator (create_dataloaders does)",
            stacklevel=3,
        )
    # A DataLoader without a generator draws a base seed from the global RNG whenever it starts an
    # iteration; fork_rng keeps that from shifting the dropout masks of the steps that follow.
    with torch.random.fork_rng(devices=[]):
        return iter(loader)


def _stop_message(
    step: int, loss: float, n_real: int, last_saved: int | None, checkpoint_path: str | Path | None, lr: float
) -> str:
    if n_real == 0:
        why = (
            f"step {step}: its batches hold no real target (every target is padding or masked with -100), so "
            "there is no loss to learn from; with mask_prompt, a short allowed_max_length can cut off every "
            "response."
        )
    else:
        why = f"step {step}: the training loss is {loss}; the run diverged (is the learning rate, {lr:g}, too high?)."
    if checkpoint_path is None:
        return why + " Stopped; nothing was saved."
    if last_saved is None:
        return why + f" Stopped before this run wrote a checkpoint to {checkpoint_path}."
    return why + f" Stopped; {checkpoint_path} keeps the last good state, from step {last_saved}."


class TrainingRun:
    """The hooks for one training run (see the protocol in support/__init__.py).

    - seed: seeds every RNG at the start and fixes each epoch's batch order (see _epoch_batches).
    - checkpoint_path: a safetensors checkpoint (weights, optimizer, RNG, counters) is written atomically
      at the end of every epoch, at a stop by max_steps and at the end; also every `save_every` steps
      and/or every `save_every_minutes` minutes when given. Never at every evaluation: for GPT-2 small
      a checkpoint (weights + AdamW state, 3 x 163M floats) is ~2 GB.
    - resume: continue from checkpoint_path when it exists, with the same data order and RNG state: the
      run ends with the same weights as one that was never interrupted.
    - settings: whatever else shapes the run (learning rate, data, ...) as a JSON-able dict; stored in the
      checkpoint, and a resume with other settings is refused.
    - max_steps: stop after that many optimizer steps in total (counting those before a resume).
    - A NaN or infinite loss, or a step without a single real target, stops the run with a TrainingError;
      the checkpoint on disk is the last good one (never one written after that).
    - ddp: None (one process) or a support.ddp.DistributedRun: the model is wrapped in
      DistributedDataParallel, each loader yields this process's share of every batch (DistributedRun.shard),
      counts and losses are summed over the processes, and only the main process saves and shows progress.
    """

    def __init__(
        self,
        checkpoint_path: str | Path | None = None,
        resume: bool = False,
        seed: int = 123,
        save_every: int | None = None,
        save_every_minutes: float | None = None,
        max_steps: int | None = None,
        settings: dict | None = None,
        progress: bool = True,
        ddp=None,
    ):
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps must be at least 1 (or None for every epoch), got {max_steps}")
        self.checkpoint_path, self.resume, self.seed = checkpoint_path, resume, seed
        self.save_every, self.save_every_minutes, self.max_steps = save_every, save_every_minutes, max_steps
        self.settings, self.ddp = dict(settings or {}), ddp
        self.progress = progress and (ddp is None or ddp.is_main)
        self.last_saved: int | None = None
        self.last_saved_at = time.monotonic()
        self.tokens_before = 0

    def on_train_start(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state) -> torch.nn.Module:
        seed_everything(self.seed)
        self.model, self.optimizer = model, optimizer
        state.seed, state.settings = self.seed, self.settings
        path = self.checkpoint_path
        if self.resume and path is not None and os.path.lexists(path):  # a dangling link or a folder: refused
            if not Path(path).is_file():
                raise CheckpointError(
                    f"{path} is not a checkpoint file (a folder, a FIFO, or a symbolic link that "
                    "leads nowhere): remove it, or train without resume"
                )
            saved = resume_from(path, model, optimizer, expected=state)
            for f in dataclasses.fields(state):
                setattr(state, f.name, getattr(saved, f.name))
            print(f"Resuming from {path} at step {state.step} (epoch {state.epoch + 1}).")
            self.last_saved = state.step or None  # a resumed checkpoint is already on disk
        elif self.resume:
            print(f"No checkpoint at {path}: starting from scratch.")
        self.last_saved_at, self.tokens_before = time.monotonic(), state.tokens_seen
        self.trained = model if self.ddp is None else self.ddp.wrap(model)
        return self.trained

    def epoch_batches(self, loader: Iterable, epoch: int) -> Iterator:
        return _epoch_batches(loader, self.seed, epoch)

    def micro_batch(self, last: bool):
        # DDP exchanges gradients after the last micro-batch of a window only
        return contextlib.nullcontext() if self.ddp is None or last else self.trained.no_sync()

    def sum_over_processes(self, values: list[float]) -> list[float]:
        return values if self.ddp is None else self.ddp.sum(values)

    def should_stop(self, state) -> bool:
        return self.max_steps is not None and state.step >= self.max_steps

    def on_step_end(self, state) -> None:
        n_real, self.tokens_before = state.tokens_seen - self.tokens_before, state.tokens_seen
        if n_real == 0 or not math.isfinite(state.last_loss):  # stop before anything of this step is saved
            raise TrainingError(
                _stop_message(
                    state.step,
                    state.last_loss,
                    n_real,
                    self.last_saved,
                    self.checkpoint_path,
                    self.optimizer.param_groups[0]["lr"],
                )
            )
        minutes = (time.monotonic() - self.last_saved_at) / 60
        if (
            state.batches_done == 0
            or self.should_stop(state)  # an epoch ends, or max_steps
            or (self.save_every is not None and state.step % self.save_every == 0)
            or (self.save_every_minutes is not None and minutes >= self.save_every_minutes)
        ):
            self.save(state)

    def on_train_end(self, state) -> None:
        self.save(state)

    def save(self, state) -> None:
        if self.checkpoint_path is not None and self.last_saved != state.step:
            if self.ddp is None or self.ddp.is_main:
                save_checkpoint(self.checkpoint_path, self.model, self.optimizer, state)
            self.last_saved, self.last_saved_at = state.step, time.monotonic()
