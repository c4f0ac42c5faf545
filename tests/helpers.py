"""Test helpers: utils.train_model driven with support.trainer.TrainingRun's options as keywords."""

from support.trainer import TrainingRun
from utils import train_model

# A GPT small enough that training tests take seconds on a CPU.
VOCAB = 256
SMALL_CFG = {
    "vocab_size": VOCAB,
    "context_length": 64,
    "emb_dim": 32,
    "n_heads": 2,
    "n_layers": 2,
    "drop_rate": 0.0,
    "qkv_bias": True,
}

HOOK_OPTIONS = {
    "checkpoint_path",
    "resume",
    "seed",
    "save_every",
    "save_every_minutes",
    "max_steps",
    "settings",
    "progress",
}


class RunWithCallback(TrainingRun):
    """TrainingRun that also calls callback(state) after every optimizer step (after any checkpoint of that step)."""

    def __init__(self, callback=None, **options):
        super().__init__(**options)
        self.callback = callback

    def on_step_end(self, state) -> None:
        super().on_step_end(state)
        if self.callback is not None:
            self.callback(state)


def train_with_hooks(model, train_loader, val_loader, optimizer, device, callback=None, **kwargs):
    """train_model(...) where checkpoint_path, resume, seed, save_every, ... and callback go to the hooks."""
    options = {name: kwargs.pop(name) for name in HOOK_OPTIONS & set(kwargs)}
    return train_model(
        model, train_loader, val_loader, optimizer, device, hooks=RunWithCallback(callback, **options), **kwargs
    )
