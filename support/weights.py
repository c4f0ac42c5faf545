"""Reading OpenAI's GPT-2 weights file safely, and saying exactly what in it does not fit a model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from support.network import WeightsUnavailableError


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a model.safetensors (never pickle); WeightsUnavailableError for a missing or damaged file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise WeightsUnavailableError(f"{path}: no such file (expected a GPT-2 model.safetensors)")
    try:
        return load_file(path)
    except SafetensorError as exc:
        raise WeightsUnavailableError(
            f"{path}: not a readable safetensors file ({exc}). It is probably truncated or corrupt: "
            "delete it and download it again (download_gpt2_weights(..., force_download=True) "
            "replaces a copy in the Hugging Face cache)."
        ) from None


def weight_problem(tensor: torch.Tensor) -> str | None:
    """What makes a pretrained weight unusable (not floating point, NaN or infinite values), or None."""
    if not tensor.is_floating_point():
        return f"dtype {tensor.dtype}, not floating point"
    if not torch.isfinite(tensor).all():
        return "holds NaN or infinite values"
    return None


def check_weights_fit(
    path: Path, cfg: dict, missing: Sequence[str], wrong_shape: Sequence[str], extra: Sequence[str], bad: Sequence[str]
) -> None:
    """A ValueError listing the damaged, wrongly shaped, missing and left-over tensors of `path`, if there are any."""
    if bad:
        raise ValueError(f"{path} is damaged (delete it and download it again): " + "; ".join(bad[:5]))
    if missing or wrong_shape or extra:
        lines = [
            f"{path} does not fit this GPTModel (emb_dim={cfg['emb_dim']}, n_layers={cfg['n_layers']}, "
            f"context_length={cfg['context_length']}, vocab_size={cfg['vocab_size']}); "
            "is it the same GPT-2 size as the config?"
        ]
        for title, items in (("wrong shape", wrong_shape), ("missing", missing), ("unexpected", extra)):
            if items:
                shown = list(items[:8]) + ([f"... and {len(items) - 8} more"] if len(items) > 8 else [])
                lines.append(f"{title} ({len(items)}):\n    " + "\n    ".join(shown))
        raise ValueError("\n".join(lines))
